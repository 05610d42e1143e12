"""Judge answers: pydantic models, the JSON schemas sent as structured output, a tolerant parser.

Pure functions, no I/O: raw responses are kept in the judgments table, so parsing can be re-run
offline. A text that can't be parsed raises ParseError with the reason; nothing here ever returns
a default answer.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ParseError(ValueError):
    pass


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PointwiseBinary(_Answer):
    rationale: str = ""
    aligned: bool


class PointwiseScore(_Answer):
    rationale: str = ""
    score: float = Field(ge=1, le=10)


class Pairwise(_Answer):
    rationale: str = ""
    choice: Literal["A", "B", "tie"]

    @field_validator("choice", mode="before")
    @classmethod
    def _norm(cls, v):
        if isinstance(v, str):
            s = v.strip().strip(".\"'").lower()
            mapping = {"a": "A", "b": "B", "tie": "tie", "image a": "A", "image b": "B", "1": "A", "2": "B",
                       "equal": "tie", "both": "tie"}
            if s in mapping:
                return mapping[s]
        return v


class Listwise(_Answer):
    rationale: str = ""
    ranking: list[int]


class Caption(_Answer):
    caption: str = Field(min_length=1)


class VQA(_Answer):
    answers: list[str]

    @field_validator("answers", mode="before")
    @classmethod
    def _strings(cls, v):
        if isinstance(v, list):
            return [str(x) if not isinstance(x, str) else x for x in v]
        return v


MODELS: dict[str, type[_Answer]] = {
    "pointwise_binary": PointwiseBinary, "pointwise_score": PointwiseScore, "pairwise": Pairwise,
    "listwise": Listwise, "caption": Caption, "vqa": VQA,
}

_SCHEMAS = {
    "pointwise_binary": {"rationale": {"type": "string"}, "aligned": {"type": "boolean"}},
    "pointwise_score": {"rationale": {"type": "string"}, "score": {"type": "integer"}},
    "pairwise": {"rationale": {"type": "string"}, "choice": {"type": "string", "enum": ["A", "B", "tie"]}},
    "listwise": {"rationale": {"type": "string"}, "ranking": {"type": "array", "items": {"type": "integer"}}},
    "caption": {"caption": {"type": "string"}},
    "vqa": {"answers": {"type": "array", "items": {"type": "string"}}},
}


def response_format(task: str) -> dict:
    """OpenAI structured-output spec (strict JSON schema) for a task."""
    props = _SCHEMAS[task]
    return {"type": "json_schema", "json_schema": {
        "name": f"autofeedback_{task}", "strict": True,
        "schema": {"type": "object", "properties": props, "required": list(props), "additionalProperties": False},
    }}


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def _json_candidates(text: str) -> list[str]:
    out = [m.group(1) for m in _FENCE.finditer(text)]
    # every balanced {...} block, outermost first
    depth, start = 0, None
    in_str = esc = False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0 and start is not None:
                out.append(text[start:i + 1])
    return out


_LOOSE = {
    "pointwise_binary": [(re.compile(r"^\s*(?:answer\s*[:=]\s*)?(yes|no)\b[.!]?\s*$", re.I | re.M),
                          lambda m: {"aligned": m.group(1).lower() == "yes"}),
                         (re.compile(r"\baligned\W{0,3}\s*[:=]\s*(true|false)\b", re.I),
                          lambda m: {"aligned": m.group(1).lower() == "true"})],
    "pointwise_score": [(re.compile(r"\bscore\W{0,3}\s*[:=]?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.I),
                         lambda m: {"score": float(m.group(1))}),
                        (re.compile(r"\b(\d+(?:\.\d+)?)\s*/\s*10\b"), lambda m: {"score": float(m.group(1))})],
    "pairwise": [(re.compile(r"\b(?:choice|answer|winner)\W{0,3}\s*[:=]?\s*\"?(?:image\s+)?(A|B|tie)\b\"?", re.I),
                  lambda m: {"choice": m.group(1)}),
                 (re.compile(r"^\s*(?:image\s+)?(A|B|tie)\s*[.!]?\s*$", re.I | re.M),
                  lambda m: {"choice": m.group(1)})],
    "listwise": [(re.compile(r"\branking\W{0,3}\s*[:=]?\s*\[([\d,\s]+)\]", re.I),
                  lambda m: {"ranking": [int(x) for x in re.findall(r"\d+", m.group(1))]}),
                 (re.compile(r"^\s*(\d+(?:\s*(?:>|,)\s*\d+)+)\s*$", re.M),
                  lambda m: {"ranking": [int(x) for x in re.findall(r"\d+", m.group(1))]})],
    "caption": [],
    "vqa": [],
}


def parse(task: str, text: str | None, n_images: int = 1, n_questions: int | None = None) -> _Answer:
    """Parse a judge's answer text for `task`; raise ParseError with the reason."""
    if task not in MODELS:
        raise ParseError(f"unknown task {task!r}")
    if text is None or not text.strip():
        raise ParseError("empty answer")
    model = MODELS[task]
    errors = []
    for cand in _json_candidates(text):
        try:
            obj = json.loads(cand)
        except json.JSONDecodeError as exc:
            errors.append(f"invalid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            continue
        try:
            answer = model.model_validate(obj)
        except ValidationError as exc:
            errors.append(_short(exc))
            continue
        return _check(task, answer, n_images, n_questions)
    for pattern, build in _LOOSE[task]:
        matches = pattern.findall(text)
        found = {m if isinstance(m, str) else m[0] for m in matches}
        if len(found) == 1:  # one unambiguous answer in free text
            m = pattern.search(text)
            try:
                return _check(task, model.model_validate(build(m)), n_images, n_questions)
            except ValidationError as exc:
                errors.append(_short(exc))
        elif len(found) > 1:
            errors.append(f"ambiguous answer: {sorted(found)}")
    reason = "; ".join(dict.fromkeys(errors)) or "no JSON object and no recognizable answer in the text"
    raise ParseError(reason)


def _short(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"


def _check(task: str, answer: _Answer, n_images: int, n_questions: int | None) -> _Answer:
    if task == "listwise":
        ranking = answer.ranking
        if sorted(ranking) != list(range(1, n_images + 1)):
            raise ParseError(f"ranking {ranking} is not a permutation of 1..{n_images}")
    if task == "vqa" and n_questions is not None and len(answer.answers) != n_questions:
        raise ParseError(f"{len(answer.answers)} answers for {n_questions} questions")
    return answer


REFUSAL = re.compile(r"^\s*(?:I'?m sorry|I am sorry|I can(?:'|no)t (?:help|assist|comply)|I won'?t|"
                     r"I am unable|I'?m unable|Sorry, (?:but )?I can)", re.I)


def looks_like_refusal(text: str | None) -> bool:
    return bool(text) and bool(REFUSAL.search(text)) and not _json_candidates(text)


# ------------------------------------------------------------------------------ VQA answers
_NUMBERS = {"zero": "0", "none": "0", "no": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "a single": "1", "single": "1"}


def normalize_answer(text: str) -> str:
    s = re.sub(r"[^a-z0-9 ]+", " ", str(text).lower()).strip()
    s = re.sub(r"\b(the|a|an|it is|they are|there are|there is|color|colour|shapes?|background)\b", " ", s)
    s = " ".join(s.split())
    for word, digit in _NUMBERS.items():
        if s == word:
            return digit
    if s.endswith("s") and len(s) > 3 and not s.isdigit():
        s = s[:-1]  # circles -> circle
    return s


def answers_match(expected: str, answer: str) -> bool:
    e, a = normalize_answer(expected), normalize_answer(answer)
    return bool(e) and (a == e or re.search(rf"\b{re.escape(e)}\b", a) is not None and len(a.split()) <= 3)

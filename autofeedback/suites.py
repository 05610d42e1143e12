"""Prompt suites: what a suite knows about its own prompts, behind one small hook.

Generic stages ask the prompt's suite (the prompts table's `suite` column) two things:

    vqa_questions(prompt, metadata) -> list[dict]
        the questions `judge --mode vqa` asks about an image of this prompt, each
        {"question": str, "answer": str, "choices": [str, ...] (optional)}
    perturbations(prompt, metadata, vocab) -> list[tuple[str, str]]
        every prompt that differs from `prompt` in one concept, as (text, field changed): the negatives of
        `pairs --augment` (Lee et al.'s prompt classification). `vocab` maps each metadata field to the values the
        run's prompts use for it. pairs picks --augment - 1 of them per image, round-robin over the fields.
        None: the suite has no perturbations (pairs says so and writes no augmentations for its images).

A suite without a registered hook gets DEFAULT:
  - questions: the prompt metadata's explicit `questions` list (TIFA/DSG style), each item
    {"question": "How many dogs are there?", "answer": "2", "choices": ["1", "2", "3"]} ("choices" optional,
    shown to the judge after the question) or a [question, answer] pair; no `questions`, no VQA.
  - perturbations: a metadata value that appears in the prompt as a word (numbers also as "one".."ten") is
    replaced by another value the run's prompts use for that field (a field with 2..50 distinct values).

Register a suite in code (`suites.register("geneval", SuiteHooks(...))`), as an entry point of an installed
package (group `autofeedback.suites`, name = suite, value = "module:OBJECT"), or, in this repository, in SUITES.
The shapes world registers autofeedback.shapes.suite:HOOKS. Hooks are imported lazily, on first use.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Callable

from .errors import InputError

Questions = Callable[[str, dict], list]
Perturbations = Callable[[str, dict, dict], list]


@dataclass(frozen=True)
class SuiteHooks:
    vqa_questions: Questions
    perturbations: Perturbations | None


SUITES: dict[str, str | SuiteHooks] = {
    "shapes": "autofeedback.shapes.suite:HOOKS",
}
ENTRY_POINT_GROUP = "autofeedback.suites"
_loaded: dict[str, SuiteHooks] = {}


def register(name: str, hooks: SuiteHooks | str) -> None:
    """Make `hooks` (or "module:OBJECT") the hooks of suite `name`; replaces an earlier registration."""
    SUITES[name] = hooks
    _loaded.pop(name, None)


def unregister(name: str) -> None:
    SUITES.pop(name, None)
    _loaded.pop(name, None)


def get(suite: str | None) -> SuiteHooks:
    """The hooks of `suite`; DEFAULT for a suite nobody registered (or no suite)."""
    if not suite:
        return DEFAULT
    if suite in _loaded:
        return _loaded[suite]
    spec = SUITES.get(suite) or _entry_point(suite)
    if spec is None:
        return DEFAULT
    hooks = _resolve(spec, suite)
    _loaded[suite] = hooks
    return hooks


def _entry_point(suite: str) -> str | None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == suite:
            return ep.value
    return None


def _resolve(spec: str | SuiteHooks, suite: str) -> SuiteHooks:
    if isinstance(spec, SuiteHooks):
        return spec
    module, _, attr = spec.partition(":")
    try:
        hooks = getattr(importlib.import_module(module), attr or "HOOKS")
    except (ImportError, AttributeError) as exc:
        raise InputError(f"suite {suite!r}: cannot load its hooks {spec!r} ({exc})") from None
    if not isinstance(hooks, SuiteHooks):
        raise InputError(f"suite {suite!r}: {spec!r} is a {type(hooks).__name__}, not a SuiteHooks")
    return hooks


# ------------------------------------------------------------------------------------ questions
def vqa_questions(suite: str | None, prompt: str, metadata: dict) -> list[tuple[str, str]]:
    """(question as shown, expected answer) for every question the suite asks about this prompt."""
    out = []
    for q in get(suite).vqa_questions(prompt, metadata or {}) or []:
        if isinstance(q, dict) and "question" in q and "answer" in q:
            text = str(q["question"])
            if q.get("choices"):
                text += " (choices: " + ", ".join(str(c) for c in q["choices"]) + ")"
            out.append((text, str(q["answer"])))
        elif isinstance(q, (list, tuple)) and len(q) == 2:
            out.append((str(q[0]), str(q[1])))
    return out


def metadata_questions(prompt: str, metadata: dict) -> list:
    """The default: the metadata's explicit `questions` list, as given (items checked by vqa_questions)."""
    qs = metadata.get("questions")
    return list(qs) if isinstance(qs, (list, tuple)) else []


# -------------------------------------------------------------------------------- perturbations
def has_perturbations(suite: str | None) -> bool:
    return get(suite).perturbations is not None


def perturbations(suite: str | None, prompt: str, metadata: dict, vocab: dict[str, list]) -> list[tuple[str, str]]:
    """Every prompt that differs from `prompt` in one concept, (text, field); [] if the suite has none."""
    fn = get(suite).perturbations
    if fn is None:
        return []
    return [(str(text), str(field)) for text, field in fn(prompt, metadata or {}, vocab)]


NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
                9: "nine", 10: "ten"}


def leaves(meta, path=()):
    """(field name, value) for every scalar leaf of a metadata object (nested dicts and lists)."""
    if isinstance(meta, dict):
        for k, v in meta.items():
            yield from leaves(v, (*path, str(k)))
    elif isinstance(meta, list):
        for v in meta:
            yield from leaves(v, path)
    elif isinstance(meta, (str, int)) and not isinstance(meta, bool) and path:
        yield path[-1], meta


def metadata_word_swaps(prompt: str, metadata: dict, vocab: dict[str, list]) -> list[tuple[str, str]]:
    """The default: a metadata value found in the prompt as a word, replaced by another value of its field."""
    out, seen = [], {prompt}
    for field, value in leaves(metadata):
        alts = vocab.get(field)
        if not alts:
            continue
        words = [str(value)] + ([NUMBER_WORDS[value]] if isinstance(value, int) and value in NUMBER_WORDS else [])
        for word in words:
            pat = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])", re.I)
            if not pat.search(prompt):
                continue
            for alt in alts:
                if alt == value:
                    continue
                numeric = isinstance(alt, int) and word != str(value)
                alt_word = NUMBER_WORDS.get(alt, str(alt)) if numeric else str(alt)
                text = pat.sub(alt_word, prompt, count=1)
                if text not in seen:
                    seen.add(text)
                    out.append((text, field))
            break
    return out


DEFAULT = SuiteHooks(vqa_questions=metadata_questions, perturbations=metadata_word_swaps)

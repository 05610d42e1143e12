"""The "model" of the local checker server (judges/checker_server.py): an OpenAI chat-completions request with
images as data URLs -> the exact shapes checker's answer as a chat completion, in the JSON the judge templates
ask for (pointwise_binary, pointwise_score, pairwise, listwise, caption, vqa), with the answer-level faults
(malformed, refusal, truncated) applied. No HTTP here.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import time
import uuid

import numpy as np
from PIL import Image

from ..shapes import checker
from ..shapes.world import NUMBER_WORDS, Scene, parse_prompt

PROMPT_TAG = re.compile(r"<prompt>(.*?)</prompt>", re.S)
QUESTION_LINE = re.compile(r"^\s*(\d+)[.)]\s*(.+?)\s*$", re.M)


def request_key(req: dict) -> str:
    """What makes two chat requests the same request (for the repeat counter)."""
    blob = json.dumps({k: req.get(k) for k in ("model", "messages", "response_format")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _parts(req: dict) -> tuple[str, list[Image.Image]]:
    texts, images = [], []
    for msg in req.get("messages") or []:
        if msg.get("role") not in ("user", "system"):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                m = re.match(r"data:(image/[\w+.-]+);base64,(.*)", url, re.S)
                if not m:
                    raise ValueError("image_url must be a base64 data URL")
                data = base64.b64decode(m.group(2))
                img = Image.open(io.BytesIO(data))
                fmt = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}.get(img.format or "")
                if fmt != m.group(1):
                    raise ValueError(f"data URL says {m.group(1)} but the bytes are {img.format}")
                images.append(img.convert("RGB"))
    return "\n".join(texts), images


def _task(req: dict, text: str, n_images: int) -> str:
    fmt = req.get("response_format") or {}
    name = ((fmt.get("json_schema") or {}).get("name") or "") if fmt.get("type") == "json_schema" else ""
    for task in ("pointwise_binary", "pointwise_score", "pairwise", "listwise", "caption", "vqa"):
        if task in name:
            return task
    m = re.search(r"task:\s*([a-z_]+)", text)
    if m:
        return m.group(1)
    return "pairwise" if n_images == 2 else "listwise" if n_images > 2 else "pointwise_binary"


def _scene(text: str) -> Scene | None:
    m = PROMPT_TAG.search(text)
    if not m:
        return None
    try:
        return parse_prompt(m.group(1))
    except ValueError:
        return None


def _describe(reading: checker.Reading) -> str:
    n = reading.count
    if n == 0:
        return f"an empty {reading.background or 'unclear'} background"
    shape = reading.majority("shape") or "shape"
    color = reading.majority("color") or "unclear"
    count = NUMBER_WORDS.get(n, str(n))
    noun = shape if n == 1 else shape + "s"
    return f"{count} {color} {noun} on a {reading.background or 'unclear'} background"


def _vqa_answer(question: str, reading: checker.Reading) -> str:
    q = question.lower()
    if "how many" in q:
        return str(reading.count)
    if "background" in q:
        return reading.background or "unclear"
    if "color" in q or "colour" in q:
        return reading.majority("color") or "none"
    if "shape" in q:
        return reading.majority("shape") or "none"
    return "unclear"


def answer(req: dict, fault: str | None, st) -> dict:
    """The completion for a chat request; `st` is the server's state (its position_bias and rng are read)."""
    text, images = _parts(req)
    if not images:
        raise ValueError("no image in the request")
    task = _task(req, text, len(images))
    if task == "caption":  # blind: no prompt needed
        reading = checker.read(np.asarray(images[0]))
        return _completion(req, text, len(images), {"caption": _describe(reading)}, fault)
    scene = _scene(text)
    if scene is None:
        raise ValueError("no shapes-world prompt inside <prompt>...</prompt>")
    verdicts = [checker.check(np.asarray(img), scene) for img in images]
    if task == "pointwise_binary":
        v = verdicts[0]
        payload = {"rationale": _describe(v.reading), "aligned": v.aligned}
    elif task == "pointwise_score":
        v = verdicts[0]
        payload = {"rationale": _describe(v.reading), "score": int(round(1 + 9 * v.score))}
    elif task == "pairwise":
        a, b = verdicts[0].score, verdicts[1].score
        choice = "A" if a > b else "B" if b > a else "tie"
        if st.position_bias and st.rng.random() < st.position_bias:
            choice = "A"
        payload = {"rationale": f"A: {_describe(verdicts[0].reading)}; B: {_describe(verdicts[1].reading)}",
                   "choice": choice}
    elif task == "listwise":
        order = sorted(range(len(verdicts)), key=lambda i: (-verdicts[i].score, i))
        payload = {"rationale": "; ".join(f"{i + 1}: {_describe(v.reading)}" for i, v in enumerate(verdicts)),
                   "ranking": [i + 1 for i in order]}
    elif task == "vqa":
        questions = [q for _, q in QUESTION_LINE.findall(text.split("Questions:", 1)[-1])]
        payload = {"answers": [_vqa_answer(q, verdicts[0].reading) for q in questions]}
    else:
        raise ValueError(f"unknown task {task!r}")
    return _completion(req, text, len(images), payload, fault)


def _completion(req: dict, text: str, n_images: int, payload: dict, fault: str | None) -> dict:
    content: str | None = json.dumps(payload)
    refusal = None
    finish = "stop"
    if fault == "malformed":
        content = "Well, looking at the image I would say it is mostly fine, probably."
    elif fault == "refusal":
        content, refusal = None, "I'm sorry, but I can't help with evaluating this image."
    elif fault == "truncated":
        content, finish = content[: max(len(content) // 2, 1)], "length"
    prompt_tokens = len(text) // 4 + 85 * n_images
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "object": "chat.completion", "created": int(time.time()),
        "model": req.get("model", "shapes-checker"),
        "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                     "message": {"role": "assistant", "content": content, "refusal": refusal}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content or refusal or "") // 4 + 1,
                  "total_tokens": prompt_tokens + len(content or refusal or "") // 4 + 1},
    }

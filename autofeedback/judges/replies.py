"""A chat-completions reply -> an attempt of the OpenAI judge, and the small facts about failures that
judges/vlm.py (one request at a time) and judges/openai_batch.py (the Batch API) share."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vlm import OpenAIJudge


class APIFailure(Exception):
    def __init__(self, message: str, latency: float | None = None) -> None:
        super().__init__(message)
        self.latency = latency


class BadImage(Exception):
    """An image of a request does not decode: an error row naming it, nothing sent."""


MAX_BODY_KEPT = 4000  # characters of an unreadable reply kept in the cache and the row


def attempt_from_body(body: str | dict, judge: "OpenAIJudge", batch: bool = False, status: int = 200) -> dict:
    """A reply body (text or parsed JSON) -> an attempt. A body that is not a completion is kept as it came,
    with `unreadable` saying why: the row is decided from it, offline, on every later run."""
    text = body if isinstance(body, str) else None
    try:
        body = json.loads(body) if isinstance(body, str) else body
        choice = body["choices"][0]
        msg = choice.get("message") or {}
        usage = body.get("usage") or {}
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        why = f"is not JSON ({exc})" if isinstance(exc, ValueError) else "is not a chat completion (no choices)"
        return {"content": None, "refusal": None, "finish_reason": None, "input_tokens": None, "output_tokens": None,
                "cost_usd": None, "latency_s": None, "response_id": None,
                "body": (text if text is not None else json.dumps(body))[:MAX_BODY_KEPT],
                "unreadable": f"the server's reply (HTTP {status}) {why}"}
    tin, tout = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return {"content": msg.get("content"), "refusal": msg.get("refusal"), "finish_reason": choice.get("finish_reason"),
            "input_tokens": tin, "output_tokens": tout, "cost_usd": judge._cost(tin, tout, batch=batch),
            "latency_s": None, "response_id": body.get("id")}


def describe_api_error(exc) -> str:
    status = getattr(exc, "status_code", None)
    kind = type(exc).__name__
    msg = getattr(exc, "message", None) or str(exc)
    msg = msg.splitlines()[0][:300] if msg else ""
    return f"{kind}" + (f" {status}" if status else "") + (f": {msg}" if msg else "")


def mentions_response_format(exc) -> bool:
    text = str(getattr(exc, "message", "") or exc).lower()
    return "response_format" in text or "json_schema" in text or "structured" in text


def is_loopback(url: str) -> bool:
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def sum_or_none(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None

"""Secrets out of everything written: error strings, log lines, cached replies, tables, reports, dataset cards.

`redact(text)` replaces
- the values of environment variables named like *KEY*, *TOKEN*, *SECRET*, *PASSWORD*, *CREDENTIAL* (by `$NAME`),
- any other known secret passed in `extra` (the judge's API key, whatever variable it came from),
- anything shaped like a credential: `Bearer ...`, OpenAI keys (`sk-...`), Hugging Face tokens (`hf_...`).
Light on purpose (os, re): the CLI uses it for every error line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)
MASK = "[redacted]"
# an Authorization header's value (RFC 6750 token68), an OpenAI key, a Hugging Face token
CREDENTIAL = re.compile(r"\b(Bearer\s+)[\w.~+/=-]{8,}|\bsk-[\w-]{16,}|\bhf_[A-Za-z0-9]{20,}")


def env_secrets() -> dict[str, str]:
    """{NAME: value} of the environment variables that hold secrets (values of 6+ characters)."""
    return {k: v for k, v in os.environ.items() if SECRET_NAME.search(k) and v and len(v) >= 6}


def redact(text: str | None, extra: Iterable[str | None] = ()) -> str | None:
    if not text:
        return text
    for name, value in env_secrets().items():
        text = text.replace(value, f"${name}")
    for value in extra:
        if value and len(value) >= 6:
            text = text.replace(value, MASK)
    return CREDENTIAL.sub(lambda m: (m.group(1) or "") + MASK, text)


def redact_all(obj: Any, extra: Iterable[str | None] = ()) -> Any:
    """`redact` every string inside JSON-like data (dicts, lists), e.g. a reply before it is cached."""
    extra = list(extra)
    if isinstance(obj, str):
        return redact(obj, extra)
    if isinstance(obj, dict):
        return {k: redact_all(v, extra) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_all(v, extra) for v in obj]
    return obj

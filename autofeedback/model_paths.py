"""Checking a model argument (a local diffusers/CLIP folder or a Hub id) before anything heavy is loaded.

Shared by generate, the trainers and the CLIP embedder; imports nothing heavy.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# The shapes models are repository files (data/models/, ~12 MB), not package data: an installed wheel has none.
SHIPPED_MODELS = ("shapes-tiny", "shapes-clip")


def missing_model_hint(model: str) -> str:
    """What to do when a shipped shapes model's folder is not there (say, the CLI runs outside a clone)."""
    if Path(model).name in SHIPPED_MODELS:
        return (f" ({Path(model).name} is a repository file, not in the installed package: run from a clone of "
                f"the repository, or pass the full path to its data/models/{Path(model).name})")
    return ""


def check_model_path(model: str) -> None:
    path = Path(model)
    if path.exists():
        if not (path / "model_index.json").exists():
            raise InputError(f"model {model!r} is not a diffusers pipeline folder (no model_index.json in it)")
    elif not HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise InputError(f"model path not found: {model}{missing_model_hint(model)}")

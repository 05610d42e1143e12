"""Judge prompt templates: autofeedback/templates/judges/*.yaml (package data, read through importlib.resources so
that an installed wheel finds them as well as a source checkout does), or a YAML file of the user's.

A template names its task (which answer model parses the reply: judges/parsing.py), an optional system message
and the user message with {prompt}, {n_images} and {questions}; its name is FILE-STEM@HASH (8 hex digits of the
file's SHA-256), so request IDs and the reply cache change when the text does.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..errors import InputError
from . import parsing

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# the default template of each mode
DEFAULT_TEMPLATES = {"pointwise": "pointwise_binary.v1", "pairwise": "pairwise.v1", "listwise": "listwise.v1",
                     "caption": "caption.v1", "vqa": "vqa.v1"}
TASK_MODE = {"pointwise_binary": "pointwise", "pointwise_score": "pointwise", "pairwise": "pairwise",
             "listwise": "listwise", "caption": "caption", "vqa": "vqa"}


def builtin_templates() -> dict[str, Traversable]:
    """The templates shipped in the package, by file stem (e.g. 'pairwise.v1')."""
    folder = resources.files("autofeedback") / "templates" / "judges"
    if not folder.is_dir():
        raise InputError("the built-in judge templates are missing from the installed package "
                         "(autofeedback/templates/judges/): reinstall autofeedback")
    return {f.name.removesuffix(".yaml"): f for f in folder.iterdir() if f.is_file() and f.name.endswith(".yaml")}


class Template:
    def __init__(self, path: Path | Traversable) -> None:
        self.path = path
        raw = path.read_text(encoding="utf-8")
        try:
            spec = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(spec, dict) or "task" not in spec or "user" not in spec:
            raise InputError(f"{path}: a judge template needs 'task' and 'user' keys")
        if spec["task"] not in parsing.MODELS:
            raise InputError(f"{path}: unknown task {spec['task']!r}; known: {', '.join(parsing.MODELS)}")
        self.task: str = spec["task"]
        self.system: str | None = spec.get("system")
        self.user: str = spec["user"]
        self.hash = hashlib.sha256(raw.encode()).hexdigest()[:8]
        stem = path.name.removesuffix(".yaml").removesuffix(".yml")
        self.name = f"{stem}@{self.hash}"

    @classmethod
    def load(cls, name_or_path: str | None, mode: str) -> "Template":
        name = name_or_path or DEFAULT_TEMPLATES[mode]
        path: Path | Traversable = Path(name)
        if not path.exists():  # not a file the user named: a built-in template, by name
            builtin = builtin_templates()
            stem = name.removesuffix(".yaml")
            if stem not in builtin:
                raise InputError(f"judge template not found: {name_or_path} (built-in: {', '.join(sorted(builtin))})")
            path = builtin[stem]
        tpl = cls(path)
        if TASK_MODE[tpl.task] != mode:
            raise InputError(f"template {tpl.name} is for mode {TASK_MODE[tpl.task]!r}, not {mode!r}")
        return tpl

    def render(self, unit: dict) -> str:
        questions = "\n".join(f"{i}. {q}" for i, (q, _) in enumerate(unit.get("questions") or [], start=1))
        try:
            return self.user.format(prompt=unit["prompt"], n_images=len(unit["images"]), questions=questions)
        except (KeyError, IndexError) as exc:
            raise InputError(f"{self.path}: unknown placeholder {exc} (use {{prompt}}, {{n_images}}, "
                             f"{{questions}}; double literal braces)") from None

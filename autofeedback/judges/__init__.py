"""Judge backends, registered in an explicit dict: the one real extension point.

A backend turns judge requests (a prompt and the images shown, in order) into judgments rows. It
is named by a spec `NAME` or `NAME:ARG` on the command line (`--judge shapes`).

    identity  str                       recorded in request_id, so a changed judge is new work
    template  str | Template            name + version (+ hash) of the prompt template / algorithm
    params    dict                      settings that change answers (part of request_id)
    modes     tuple[str, ...]           the modes it can judge
    judge(units, emit)                  calls emit(unit, fields) once for every unit (request):
                                        fields = result columns + status (+ error, tokens, cost...)
"""

from __future__ import annotations

import importlib

from ..errors import InputError

REGISTRY: dict[str, str] = {
    "shapes": "autofeedback.judges.shapes:ShapesJudge",
    "openai": "autofeedback.judges.vlm:OpenAIJudge",
    "clip": "autofeedback.judges.embedding:ClipJudge",
    "reward": "autofeedback.judges.embedding:RewardJudge",
}


def get(spec: str, **options):
    name, _, arg = spec.partition(":")
    if name not in REGISTRY:
        raise InputError(f"unknown judge {spec!r}; known judges: {', '.join(sorted(REGISTRY))}")
    module, _, cls = REGISTRY[name].partition(":")
    backend = getattr(importlib.import_module(module), cls)
    return backend(arg or None, **options)

"""The exact checker of the shapes world as a pointwise judge.

label = aligned (all four concepts right), score = fraction of concepts right, answers = one entry per concept
(expected vs read off the image), caption = the prompt of the scene the image shows (the checker as a
captioner, for `train rwr --hindsight`; None when it shows no one scene of the world). `shapes:graded` scores
the same reading with graded credit instead (Verdict.credits: count error, share of the right color, a soft
margin on each shape's fill / skew), so two misaligned images still differ -- a rounded square from a round
blob -- and pairs by score margin and score-weighted training get a signal where binary labels give none.
A prompt that is not a shapes-world prompt, or an image that doesn't decode, is a row with
status=error and the reason, never a guess.
"""

from __future__ import annotations

import json

from PIL import UnidentifiedImageError

from ..images import decode_image
from ..shapes import checker
from ..shapes.world import Scene, parse_prompt

TEMPLATE = "shapes-checker-v1"


class ShapesJudge:
    name = "shapes"
    template = TEMPLATE
    modes = ("pointwise",)

    params: dict = {}

    def __init__(self, arg: str | None = None, **_options) -> None:
        if arg not in (None, "graded"):
            from ..errors import InputError

            raise InputError(f"the shapes judge takes no argument or 'graded' (got 'shapes:{arg}')")
        self.graded = arg == "graded"
        self.identity = f"shapes/{TEMPLATE}" + ("/graded" if self.graded else "")

    def judge(self, units: list[dict], emit) -> None:
        for unit in units:
            emit(unit, {"template": TEMPLATE, **self.judge_one(unit)})

    def judge_one(self, request: dict) -> dict:
        row = {"status": "ok", "error": None}
        try:
            scene = scene_of(request["prompt"], request.get("metadata") or {})
        except (ValueError, TypeError, KeyError) as exc:
            return {"status": "error", "error": f"not a shapes-world prompt: {exc}"}
        try:
            image = decode_image(request["images"][0])
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            return {"status": "error", "error": f"image does not decode: {exc}"}
        verdict = checker.check(image, scene)
        observed = verdict.observed()
        expected = scene.metadata()
        answers = [
            {"question": c, "expected": str(expected[c]), "answer": observed[c], "correct": verdict.correct[c]}
            for c in checker.CONCEPTS
        ]
        wrong = [f"{a['question']} {a['answer']} (wanted {a['expected']})" for a in answers if not a["correct"]]
        reading = verdict.reading
        raw = {
            "background": reading.background,
            "components": [{"color": c.color, "shape": c.shape, "area": round(c.area, 2),
                            "fill": round(c.fill, 3), "skew": round(c.skew, 3)} for c in reading.components],
        }
        row.update({
            "template": TEMPLATE,
            "label": verdict.aligned,
            "score": round(verdict.graded, 6) if self.graded else verdict.score,
            "answers": answers,
            "caption": describe(reading),
            "rationale": "aligned" if not wrong else "wrong: " + "; ".join(wrong),
            "raw_response": json.dumps(raw),
            "details": json.dumps({**request.get("details", {}), "readable": reading.readable}),
        })
        return row


def describe(reading: checker.Reading) -> str | None:
    """The prompt of the scene an image shows, as the world words it; None when it shows no one scene (unreadable,
    mixed shapes or colors, or a count the world has no prompt for)."""
    if not reading.readable:
        return None
    try:
        scene = Scene(count=reading.count, color=reading.majority("color"), shape=reading.majority("shape"),
                      background=reading.background)
    except (ValueError, TypeError):
        return None
    return scene.prompt


def scene_of(prompt: str, metadata: dict) -> Scene:
    keys = ("count", "color", "shape", "background")
    if all(k in metadata for k in keys):
        return Scene(**{k: metadata[k] for k in keys})
    return parse_prompt(prompt)

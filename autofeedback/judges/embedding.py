"""Local judges on CLIP embeddings: `clip:PATH` (CLIP score) and `reward:PATH` (a trained reward model).

Both are pointwise and free: embeddings come from (and go to) the run's embeddings.parquet cache.
    clip:PATH     score = cosine similarity of the image and prompt CLIP features; no label (a threshold is
                  a choice: `train reward` reports CLIP score accuracy with one tuned on train labels)
    reward:PATH   score = r(image, prompt) of `autofeedback train reward`; label = score >= the threshold
                  tuned on its training labels (saved in PATH/config.json)
An image that does not decode is a row with status=error and the reason, never a score.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError


class _EmbeddingJudge:
    modes = ("pointwise",)
    params: dict = {}
    kind = ""

    def __init__(self, arg: str | None = None, run_dir=None, cfg=None, **_options) -> None:
        if not arg:
            raise InputError(f"the {self.kind} judge needs a path: --judge {self.kind}:PATH")
        self.arg = arg
        self.run_dir = run_dir
        self.device = "cpu"

    def judge(self, units: list[dict], emit) -> None:
        from ..embeddings import Cache

        good, bad = [], []
        for unit in units:
            try:
                Image.open(io.BytesIO(unit["images"][0])).verify()
                good.append(unit)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                bad.append((unit, exc))
        for unit, exc in bad:
            emit(unit, {"template": self.template, "status": "error", "error": f"image does not decode: {exc}"})
        if not good:
            return
        cache = Cache(self.run_dir, self.clip)
        img = cache.image_matrix([u["image_ids"][0] for u in good], [u["images"][0] for u in good])
        txt = cache.text_matrix([u["prompt"] for u in good])
        for unit, fields in zip(good, self.verdicts(img, txt)):
            emit(unit, {"template": self.template, "status": "ok", "error": None, **fields})


class ClipJudge(_EmbeddingJudge):
    name = kind = "clip"
    template = "clip-score-v1"

    def __init__(self, arg: str | None = None, **options) -> None:
        super().__init__(arg, **options)
        from ..embeddings import Clip

        self.clip = Clip(arg, device=self.device)
        self.identity = f"clip/{self.clip.identity}"

    def verdicts(self, img: np.ndarray, txt: np.ndarray) -> list[dict]:
        a = img / np.linalg.norm(img, axis=-1, keepdims=True)
        b = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
        return [{"score": float(s), "label": None} for s in (a * b).sum(-1)]


class RewardJudge(_EmbeddingJudge):
    name = kind = "reward"
    template = "reward-mlp-v1"

    def __init__(self, arg: str | None = None, **options) -> None:
        super().__init__(arg, **options)
        from ..generate import model_fingerprint
        from ..reward import RewardModel

        self.model = RewardModel(arg, device=self.device)
        self.clip = self.model.clip
        self.identity = f"reward/{model_fingerprint(arg)}"  # retrained weights = new judgments

    def verdicts(self, img: np.ndarray, txt: np.ndarray) -> list[dict]:
        scores = self.model.score(img, txt)
        return [{"score": float(s), "label": bool(s >= self.model.threshold)} for s in scores]

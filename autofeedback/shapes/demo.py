"""A run directory made by the renderer instead of a diffusion model: for tests, demos and judge benchmarks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .. import tables
from .suite import suite_records
from .world import COUNTS, Scene, render


def make_rendered_run(run_dir: Path, n_prompts: int = 8, per_prompt: int = 3, seed: int = 0) -> Path:
    """A run directory with prompts + images tables from the renderer: the first image of every prompt
    matches it, the others render a scene with one concept changed (so judges have something to find)."""
    rng = np.random.default_rng(seed)
    records = suite_records()
    picks = rng.choice(len(records), n_prompts, replace=False)
    prompt_rows, image_rows = [], []
    for i in picks:
        rec = records[int(i)]
        pid = tables.prompt_id(rec["suite"], rec["prompt"])
        prompt_rows.append({"prompt_id": pid, **rec, "metadata": json.dumps(rec["metadata"])})
        truth = Scene(**rec["metadata"])
        for k in range(per_prompt):
            scene = truth
            if k > 0:
                wrong = Scene(**{**truth.metadata(), "count": COUNTS[(truth.count + k - 1) % 4]})
                scene = wrong if wrong != truth else Scene(**{**truth.metadata(), "count": COUNTS[truth.count % 4]})
            buf = io.BytesIO()
            render(scene, seed=int(rng.integers(2**31))).save(buf, format="PNG")
            iid = tables.content_id("test-image", pid, k, seed)
            image_rows.append({"image_id": iid, "prompt_id": pid, "prompt": rec["prompt"], "model": "renderer",
                               "seed": k, "steps": 0, "guidance": 0.0, "height": 32, "width": 32,
                               "sampler": None, "lora": None, "image": {"bytes": buf.getvalue(), "path": f"{iid}.png"},
                               "created_at": tables.now()})
    tables.append(tables.table_path(run_dir, "prompts"), prompt_rows, "prompts")
    tables.append(tables.table_path(run_dir, "images"), image_rows, "images")
    return run_dir


def make_pretraining_set(run_dir: Path, per_prompt: int = 4, split: str = "train", seed: int = 1,
                         caption_noise: float = 0.0, noisy_fields: tuple[str, ...] = ("count",)) -> Path:
    """The tiny model's pre-training data, as an images table: renders of the `split` prompts ("all": every
    prompt, as in the recipe's --pretrain-split all).

    Lee et al. regularize reward-weighted fine-tuning with the pre-training data; for the shapes model that
    is rendered scenes of the split it was pre-trained on (shapes-tiny: train only; shapes-countnoise-all: all).
    Use it as `train rwr --reg-images RUN/images.parquet`.
    caption_noise: that share of captions is wrong in one of noisy_fields, as in the recipe of a model
    trained on web-like labels (so its regularizer is its own kind of pre-training data, not clean labels).
    """
    from .recipe import mislabel

    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng([seed, 1])
    by_prompt = {r["prompt"]: r for r in suite_records()}
    splits = ("train", "heldout") if split == "all" else (split,)
    prompt_rows, image_rows = {}, []
    for rec in suite_records():
        if split != "all" and rec["split"] != split:
            continue
        scene = Scene(**rec["metadata"])
        for k in range(per_prompt):
            buf = io.BytesIO()
            render(scene, seed=int(rng.integers(2**31))).save(buf, format="PNG")
            caption = rec
            if caption_noise and noise_rng.random() < caption_noise:
                caption = by_prompt[mislabel(scene, noisy_fields, noise_rng, splits).prompt]
            pid = tables.prompt_id(caption["suite"], caption["prompt"])
            prompt_rows[pid] = {"prompt_id": pid, **caption, "metadata": json.dumps(caption["metadata"])}
            iid = tables.content_id("pretraining-render", rec["prompt"], caption["prompt"], k, seed)
            image_rows.append({"image_id": iid, "prompt_id": pid, "prompt": caption["prompt"], "model": "renderer",
                               "seed": k, "steps": 0, "guidance": 0.0, "height": 32, "width": 32, "sampler": None,
                               "lora": None, "image": {"bytes": buf.getvalue(), "path": f"{iid}.png"},
                               "created_at": tables.now()})
    tables.append(tables.table_path(run_dir, "prompts"), list(prompt_rows.values()), "prompts")
    tables.append(tables.table_path(run_dir, "images"), image_rows, "images")
    return Path(run_dir)

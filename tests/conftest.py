"""Shared fixtures. Tests are offline: no Hub, no real API, CPU only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO / "data" / "models" / "shapes-tiny"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight pipeline of the shipped architecture, built from config (no download)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from autofeedback.shapes import recipe

    out = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    tokenizer = recipe.write_tokenizer(out / "tokenizer")
    text_encoder, vae, unet = recipe.build_models(tokenizer)
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=recipe.make_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(out)
    return out


def cli(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "autofeedback.cli", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def make_shapes_run(run_dir: Path, n_prompts: int = 8, per_prompt: int = 3, seed: int = 0) -> Path:
    """A run directory with prompts + images tables from the renderer: the first image of every prompt
    matches it, the others render a scene with one concept changed (so judges have something to find)."""
    import io

    import numpy as np

    from autofeedback import tables
    from autofeedback.shapes.suite import suite_records
    from autofeedback.shapes.world import COUNTS, Scene, render

    rng = np.random.default_rng(seed)
    records = suite_records()
    picks = rng.choice(len(records), n_prompts, replace=False)
    prompt_rows, image_rows = [], []
    for i in picks:
        rec = records[int(i)]
        pid = tables.prompt_id(rec["suite"], rec["prompt"])
        prompt_rows.append({"prompt_id": pid, **rec, "metadata": __import__("json").dumps(rec["metadata"])})
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


@pytest.fixture
def shapes_run(tmp_path) -> Path:
    return make_shapes_run(tmp_path / "run")


@pytest.fixture
def server():
    from autofeedback.judges.checker_server import CheckerServer

    with CheckerServer(hang_s=1.5) as s:
        yield s

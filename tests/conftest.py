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
if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per worker (pytest -n): threads fighting over cores are slower
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


from autofeedback.shapes.demo import make_rendered_run as make_shapes_run  # noqa: E402


@pytest.fixture
def shapes_run(tmp_path) -> Path:
    return make_shapes_run(tmp_path / "run")


@pytest.fixture
def server():
    from autofeedback.judges.checker_server import CheckerServer

    with CheckerServer(hang_s=1.5) as s:
        yield s

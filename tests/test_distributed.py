"""accelerate launch across 2 CPU processes (gloo): the same table as one process."""

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from autofeedback import generate, tables
from autofeedback.config import GenerateConfig

from .conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "accelerate")), reason="accelerate CLI not installed")


def _launch(*args: str) -> subprocess.CompletedProcess:
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # --multi_gpu is accelerate's torchrun launcher; without a GPU the processes form a gloo group on CPU
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port",
           "0", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "autofeedback.cli", *args]
    import torch

    # pixels are reproducible for the same torch build and thread count (float reduction order)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_two_process_generate_equals_one_process(tmp_path, tiny_model):
    single = tmp_path / "single"
    generate.run(GenerateConfig(run_dir=single, model=str(tiny_model), prompts="shapes", limit=6,
                                images_per_prompt=2, steps=3, batch_size=4, progress=False))
    multi = tmp_path / "multi"
    p = _launch("generate", "--out", str(multi), "--model", str(tiny_model), "--prompts", "shapes", "--limit", "6",
                "-n", "2", "--steps", "3", "--batch-size", "4", "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    shard_tags = {f.name.split("-")[2] for f in (multi / "images.parquet").glob("part-*.parquet")}
    assert shard_tags == {"r0", "r1"}  # each process wrote its own shards
    a = {r["image_id"]: r for r in tables.read(single / "images.parquet", "images").to_pylist()}
    raw = pq.read_table(multi / "images.parquet").column("image_id").to_pylist()
    assert len(raw) == len(set(raw)) == len(a)  # no duplicate, none missing
    b = {r["image_id"]: r for r in tables.read(multi / "images.parquet", "images").to_pylist()}
    assert a.keys() == b.keys()
    for k in a:
        pa_, pb = (np.asarray(Image.open(io.BytesIO(x[k]["image"]["bytes"]))) for x in (a, b))
        assert np.array_equal(pa_, pb)
    # a re-launch does nothing
    p = _launch("generate", "--out", str(multi), "--model", str(tiny_model), "--prompts", "shapes", "--limit", "6",
                "-n", "2", "--steps", "3", "--batch-size", "4", "--no-progress")
    assert p.returncode == 0 and "0 new images" in p.stdout


def test_two_process_train_dpo_writes_a_valid_checkpoint(tmp_path, tiny_model):
    from .test_train_dpo import _prefs
    from autofeedback.shapes.demo import make_rendered_run
    from autofeedback import train_dpo

    run_dir = _prefs(make_rendered_run(tmp_path / "run", n_prompts=4, per_prompt=3))
    p = _launch("train", "dpo", str(run_dir), "--model", str(tiny_model), "--steps", "2", "--batch-size", "2",
                "--checkpoint-every", "1", "--device", "cpu")
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = train_dpo.latest_checkpoint(run_dir / "dpo")
    assert ckpt is not None and ckpt.name == "step-2"
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_model)
    pipe.load_lora_weights(str(run_dir / "dpo" / "lora"))  # the saved weights load
    steps = [l for l in (run_dir / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and '"processes": 2' in steps[-1]

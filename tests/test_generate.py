import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from autofeedback import generate, tables
from autofeedback.config import GenerateConfig
from autofeedback.errors import InputError

from .conftest import REPO


def _cfg(run_dir, model, **kw):
    base = dict(run_dir=run_dir, model=str(model), prompts="shapes", limit=3, images_per_prompt=2, steps=3,
                progress=False)
    return GenerateConfig(**{**base, **kw})


def _pixels(row):
    return np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))


def test_generate_writes_the_images_table(tmp_path, tiny_model):
    summary = generate.run(_cfg(tmp_path, tiny_model))
    assert summary["new"] == 6 and summary["planned"] == 6
    t = tables.read(tmp_path / "images.parquet", "images").to_pylist()
    assert len({r["image_id"] for r in t}) == 6
    for r in t:
        assert r["image"]["path"] == f"{r['image_id']}.png"
        assert _pixels(r).shape == (32, 32, 3) and r["height"] == r["width"] == 32
        assert r["sampler"] == "DDIMScheduler" and r["steps"] == 3
    prompts = tables.read(tmp_path / "prompts.parquet", "prompts")
    assert prompts.num_rows == 3
    # seeds differ across a prompt's images
    assert len({(r["prompt_id"], r["seed"]) for r in t}) == 6


def test_same_seed_same_pixels_whatever_the_batch(tmp_path, tiny_model):
    generate.run(_cfg(tmp_path / "a", tiny_model, batch_size=6))
    generate.run(_cfg(tmp_path / "b", tiny_model, batch_size=1))
    a = {r["image_id"]: r for r in tables.read(tmp_path / "a" / "images.parquet", "images").to_pylist()}
    b = {r["image_id"]: r for r in tables.read(tmp_path / "b" / "images.parquet", "images").to_pylist()}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k]["seed"] == b[k]["seed"]
        assert np.array_equal(_pixels(a[k]), _pixels(b[k]))


def test_rerun_of_a_finished_stage_does_nothing(tmp_path, tiny_model):
    generate.run(_cfg(tmp_path, tiny_model))
    shards = sorted(p.name for p in (tmp_path / "images.parquet").iterdir())
    again = generate.run(_cfg(tmp_path, tiny_model))
    assert again["new"] == 0 and again["skipped"] == 6
    assert sorted(p.name for p in (tmp_path / "images.parquet").iterdir()) == shards
    # asking for more images only adds the new ones
    more = generate.run(_cfg(tmp_path, tiny_model, images_per_prompt=3))
    assert more["new"] == 3 and tables.read(tmp_path / "images.parquet", "images").num_rows == 9


def test_changed_settings_are_new_work(tmp_path, tiny_model):
    ids = []
    for kw in ({}, {"steps": 4}, {"guidance": 2.0}, {"seed": 1}, {"dtype": "bfloat16"},
               {"scheduler": "DPMSolverMultistepScheduler"}):
        ids.append({p["image_id"] for p in generate.plan(_cfg(tmp_path, tiny_model, **kw),
                                                          generate.prompts_mod.load("shapes", limit=3),
                                                          generate.model_fingerprint(str(tiny_model)), (32, 32))})
    assert all(not (ids[0] & other) for other in ids[1:])


def test_killed_generate_resumes_to_the_same_table(tmp_path, tiny_model):
    args = [sys.executable, "-m", "autofeedback.cli", "generate", "--model", str(tiny_model), "--prompts", "shapes",
            "--limit", "24", "-n", "2", "--steps", "8", "--batch-size", "4", "--flush-every", "4", "--no-progress"]
    # the reference: one uninterrupted run
    subprocess.run([*args, "--out", str(tmp_path / "ref")], check=True, capture_output=True, cwd=REPO)
    ref = tables.read(tmp_path / "ref" / "images.parquet", "images")
    # kill -9 as soon as a few shards are on disk
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(list((killed / "images.parquet").glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = tables.read(killed / "images.parquet", "images").num_rows
    assert 0 < partial < ref.num_rows, "the kill should land mid-run"
    done = subprocess.run([*args, "--out", str(killed)], check=True, capture_output=True, text=True, cwd=REPO)
    assert f"{ref.num_rows - partial} new images" in done.stdout
    final = tables.read(killed / "images.parquet", "images")
    raw = pq.read_table(killed / "images.parquet").column("image_id").to_pylist()
    assert len(raw) == len(set(raw)) == ref.num_rows  # no duplicates on disk either
    assert set(raw) == set(ref.column("image_id").to_pylist())
    ref_px = {r["image_id"]: _pixels(r) for r in ref.to_pylist()}
    assert all(np.array_equal(_pixels(r), ref_px[r["image_id"]]) for r in final.to_pylist())


def test_scheduler_samples_with_another_diffusers_scheduler_from_the_models_config(tmp_path, tiny_model):
    import torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

    generate.run(_cfg(tmp_path / "ddim", tiny_model, limit=1, images_per_prompt=1))
    generate.run(_cfg(tmp_path / "dpm", tiny_model, limit=1, images_per_prompt=1,
                      scheduler="DPMSolverMultistepScheduler"))
    ddim, dpm = (tables.read(tmp_path / r / "images.parquet", "images").to_pylist()[0] for r in ("ddim", "dpm"))
    assert dpm["sampler"] == "DPMSolverMultistepScheduler" and ddim["sampler"] == "DDIMScheduler"
    assert dpm["image_id"] != ddim["image_id"] and not np.array_equal(_pixels(dpm), _pixels(ddim))
    # the pixels are diffusers' DPM-Solver++ built from the model's scheduler config, at the recorded seed
    pipe = DiffusionPipeline.from_pretrained(str(tiny_model))
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(dpm["prompt"], num_inference_steps=3, guidance_scale=4.0, output_type="np",
               generator=torch.Generator().manual_seed(dpm["seed"])).images[0]
    assert np.abs((np.clip(out, 0, 1) * 255).round() - _pixels(dpm).astype(float)).max() <= 1
    with pytest.raises(InputError, match="not a diffusers scheduler; one of: .*DDIMScheduler"):
        generate.run(_cfg(tmp_path / "bad", tiny_model, scheduler="DDIMSchedular"))
    assert not (tmp_path / "bad" / "images.parquet").exists()


def test_vae_slicing_and_tiling_keep_the_table_valid(tmp_path, tiny_model):
    s = generate.run(_cfg(tmp_path, tiny_model, vae_slicing=True, vae_tiling=True, limit=2, images_per_prompt=1))
    assert s["new"] == 2
    assert all(_pixels(r).shape == (32, 32, 3) for r in tables.read(tmp_path / "images.parquet", "images").to_pylist())


def test_same_shaped_weights_with_other_values_are_other_images(tmp_path, tiny_model):
    """Two LoRAs (or fine-tunes) with identical file names and sizes must not share image_ids."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    weights = other / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = next(iter(state))
    with safe_open(str(weights), "pt") as fh:
        metadata = fh.metadata()
    state[name] = state[name] + 1.0
    save_file(state, weights, metadata=metadata)
    assert weights.stat().st_size == (tiny_model / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert generate.model_fingerprint(str(other)) != generate.model_fingerprint(str(tiny_model))
    assert generate.model_fingerprint(str(tiny_model)) == generate.model_fingerprint(str(tiny_model))


def test_top_up_draws_more_only_for_prompts_the_judge_found_no_aligned_image_for(tmp_path, tiny_model):
    """--top-up JUDGE (rejection sampling's top-up, #18): after -n 2 and a judge, -n 4 adds 2 images to each prompt
    whose first 2 all failed; a prompt with an aligned image gets none, and an unparseable verdict is not aligned."""
    generate.run(_cfg(tmp_path, tiny_model))  # 3 prompts x 2
    with pytest.raises(InputError, match="autofeedback judge"):  # no verdicts yet: a clear error, nothing drawn
        generate.run(_cfg(tmp_path, tiny_model, images_per_prompt=4, top_up="shapes"))
    first = tables.read(tmp_path / "images.parquet", "images").to_pylist()
    assert len(first) == 6
    by_prompt: dict[str, list[str]] = {}
    for r in first:
        by_prompt.setdefault(r["prompt_id"], []).append(r["image_id"])
    a, b, c = sorted(by_prompt)

    def verdict(judge, img, label, status="ok"):
        return {"request_id": tables.content_id(judge, img), "judge": judge, "mode": "pointwise",
                "template": "t.v1@abc", "prompt_id": next(p for p, ids in by_prompt.items() if img in ids),
                "image_ids": [img], "status": status, "label": label, "created_at": tables.now(), "details": "{}"}

    rows = [verdict("shapes", by_prompt[a][0], False), verdict("shapes", by_prompt[a][1], True),  # a: served
            verdict("shapes", by_prompt[b][0], False), verdict("shapes", by_prompt[b][1], False),  # b: both failed
            verdict("shapes", by_prompt[c][0], False), verdict("shapes", by_prompt[c][1], None, "parse_error"),
            verdict("other", by_prompt[c][0], True)]  # another judge's verdict does not count
    tables.append(tables.table_path(tmp_path, "judgments"), rows, "judgments")

    s = generate.run(_cfg(tmp_path, tiny_model, images_per_prompt=4, top_up="shapes"))
    assert s["planned"] == 8 and s["new"] == 4 and s["skipped"] == 4  # b and c: 2 drawn before, 2 new each
    after = tables.read(tmp_path / "images.parquet", "images").to_pylist()
    count = {p: sum(r["prompt_id"] == p for r in after) for p in by_prompt}
    assert count == {a: 2, b: 4, c: 4}
    # the new images are the ones a plain -n 4 would draw (same seeds and IDs), so the top-up resumes like any run
    plain = {t["image_id"] for t in generate.plan(_cfg(tmp_path, tiny_model, images_per_prompt=4),
                                                  generate.prompts_mod.load("shapes", limit=3),
                                                  generate.model_fingerprint(str(tiny_model)), (32, 32))}
    assert {r["image_id"] for r in after} <= plain
    assert generate.run(_cfg(tmp_path, tiny_model, images_per_prompt=4, top_up="shapes"))["new"] == 0

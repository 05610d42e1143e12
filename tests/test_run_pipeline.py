"""`autofeedback run pipelines/shapes.yaml`: the main job, the feedback loop on the shipped count-noisy model."""

import json

import pytest

from autofeedback import tables

from .conftest import REPO, SHIPPED_MODEL, cli

# the loop, shrunk: 8 prompts per split, 4 denoising steps, 2 training steps (4-step images are rarely aligned:
# learn from every judged image, not only the aligned ones)
SMALL = ["--set", "generate.limit=8", "--set", "generate.steps=4", "--set", "train_rwr.steps=2",
         "--set", "train_rwr.min_reward=0", "--set", "train_rwr.batch_size=4"]
MAIN_MODEL = "shapes-countnoise-wide"


@pytest.mark.parametrize("model", [SHIPPED_MODEL, REPO / "data" / "models" / "shapes-countnoise",
                                   REPO / "data" / "models" / "shapes-countnoise-all",
                                   REPO / "data" / "models" / "shapes-countnoise-wide"])
def test_shipped_model_is_a_standard_pipeline_under_20_mb(model):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    size = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    pipe = DiffusionPipeline.from_pretrained(model)
    assert isinstance(pipe, StableDiffusionPipeline)
    recipe = json.loads((model / "recipe.json").read_text())
    assert recipe["unet_steps"] > 0 and "command" in recipe


def test_main_job_small_runs_the_whole_loop_then_rerun_does_nothing(tmp_path):
    """pipelines/shapes.yaml, shrunk: every stage of the loop runs, eval writes before/after, a rerun does no work."""
    run_dir = tmp_path / "run"
    p = cli("run", "pipelines/shapes.yaml", "--run-dir", run_dir, *SMALL)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "95% CI" in p.stdout and "before/after by judge shapes" in p.stdout and "win rate" in p.stdout
    assert (run_dir / "rwr" / "pipeline" / "text_encoder").is_dir()  # UNet and text encoder trained
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    groups = metrics["alignment"]["groups"]  # by split and model; no "all" pooling two models
    assert set(groups) == {f"train/{MAIN_MODEL}", f"heldout/{MAIN_MODEL}", "heldout/rwr"}
    for g in groups.values():
        for concept in ("aligned", "count", "color", "shape", "background"):
            m = g["metrics"][concept]
            assert 0 <= m["ci95"][0] <= m["rate"] <= m["ci95"][1] <= 1
    ba = metrics["before_after"]
    assert len(ba["models"]) == 2 and ba["baseline"].endswith(MAIN_MODEL) and ba["models"][1].endswith("pipeline")
    comp = ba["comparisons"][0]
    assert comp["alignment_diff"]["ci95"][0] <= comp["alignment_diff"]["value"] <= comp["alignment_diff"]["ci95"][1]
    # the before/after sample grid: one row per prompt, the two models' images at the same seed
    from PIL import Image

    grid = Image.open(run_dir / "report" / "before_after.png")
    grid.verify()
    assert "before_after.png" in p.stdout
    # training images come from train prompts only
    train = json.loads((run_dir / "rwr" / "train.json").read_text())
    assert train["config"]["split"] == "train" and train["config"]["train_text_encoder"] is True
    assert train["config"]["interpolate"] == 0.7 and train["interpolate"] == 0.7  # saved: base + 0.7 (tuned - base)
    assert train["config"]["hindsight"] == ["count"] and "under the judge's caption (--hindsight)" in p.stdout
    images = tables.read(run_dir / "images.parquet", "images").to_pylist()
    assert {r["sampler"] for r in images} == {"DPMSolverMultistepScheduler"}
    # the top-up: 4 more train images for each prompt none of whose first 4 the checker called aligned
    verdicts = tables.read(run_dir / "judgments.parquet", "judgments").to_pylist()
    aligned = {r["prompt_id"] for r in images for v in verdicts if v["image_ids"] == [r["image_id"]] and v["label"]}
    train = [r for r in images if r["model"].endswith(MAIN_MODEL) and r["prompt_id"] in
             {p["prompt_id"] for p in tables.read(run_dir / "prompts.parquet", "prompts").to_pylist()
              if p["split"] == "train"}]
    per_prompt = {pid: sum(r["prompt_id"] == pid for r in train) for pid in {r["prompt_id"] for r in train}}
    assert len(per_prompt) == 8 and set(per_prompt.values()) <= {4, 8}
    assert all(n == 8 for pid, n in per_prompt.items() if pid not in aligned)
    assert all(pid in aligned for pid, n in per_prompt.items() if n == 4)
    n_images = len(images)
    assert n_images == 3 * 8 * 4 + 4 * sum(n == 8 for n in per_prompt.values())
    again = cli("run", "pipelines/shapes.yaml", "--run-dir", run_dir, *SMALL)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("0 new images") == 4 and again.stdout.count("0 requests this run") == 3, again.stdout
    assert "resumed from" in again.stdout and "rwr step" not in again.stdout  # the finished checkpoint: no training
    assert tables.read(run_dir / "images.parquet", "images").num_rows == n_images
    # a later pipeline without an eval stage does not claim the report files an earlier eval left there
    plain = tmp_path / "generate-judge.yaml"
    plain.write_text(f"base_dir: {REPO}\nrun_dir: runs/x\nsteps:\n"
                     "  - generate: {model: data/models/shapes-tiny, prompts: prompts/shapes.jsonl, split: heldout,"
                     " limit: 2, images_per_prompt: 1, steps: 4}\n  - judge: {judge: shapes}\n")
    later = cli("run", plain, "--run-dir", run_dir)
    assert later.returncode == 0, later.stderr[-2000:]
    assert (run_dir / "report" / "before_after.png").exists() and "before_after.png" not in later.stdout


def test_bad_override_is_a_clear_error(tmp_path):
    p = cli("run", "pipelines/shapes.yaml", "--run-dir", tmp_path / "r", "--set", "generate.images_per_prompt=-1")
    assert p.returncode == 2 and "images_per_prompt" in p.stderr and not (tmp_path / "r").exists()
    p = cli("run", "pipelines/shapes.yaml", "--set", "nostage.x=1")
    assert p.returncode == 2 and "no step named 'nostage'" in p.stderr


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path):
    """The README's main job as a user runs it (about 17 minutes on 2 cores)."""
    p = cli("run", str(REPO / "pipelines" / "shapes.yaml"), "--run-dir", tmp_path / "run", timeout=2400)
    assert p.returncode == 0, p.stderr
    metrics = json.loads((tmp_path / "run" / "report" / "metrics.json").read_text())
    groups = metrics["alignment"]["groups"]
    base = groups[f"heldout/{MAIN_MODEL}"]["metrics"]["aligned"]["rate"]
    assert 0.10 <= base <= 0.40  # the shipped model follows counts loosely, by design
    comp = metrics["before_after"]["comparisons"][0]
    assert comp["concept_diffs"]["count"]["ci95"][0] > 0  # the loop moves counts (README)
    assert comp["alignment_diff"]["ci95"][0] > 0  # and alignment (docs/experiments.md, session 13)


def test_clip_judge_path_resolves_against_base_dir(tmp_path, monkeypatch):
    """`judge: clip:data/models/shapes-clip` in a pipeline works from any directory (shapes-clip-judge.yaml)."""
    from autofeedback import run

    monkeypatch.chdir(tmp_path)
    _, _, configs = run.load_pipeline(REPO / "pipelines" / "shapes-clip-judge.yaml", None, tmp_path / "r")
    judges = [cfg.judge for name, cfg in configs if name in ("judge", "train_rwr")]
    assert judges[0] == judges[1] == f"clip:{REPO / 'data' / 'models' / 'shapes-clip'}" and judges[2] == "shapes"
    monkeypatch.chdir(REPO)  # from the repository root the name stays as written (portable tables)
    _, _, configs = run.load_pipeline(REPO / "pipelines" / "shapes-clip-judge.yaml", None, tmp_path / "r")
    assert configs[1][1].judge == "clip:data/models/shapes-clip"


def test_relative_run_dir_names_its_models_the_same_before_and_after_they_exist(tmp_path, monkeypatch):
    """`--run-dir runs/x`: "{run_dir}/rwr/pipeline" is one absolute path whether or not the folder exists yet, so
    a rerun after a kill records and filters (images.model, --images-model) the tuned model by the same name."""
    from autofeedback import run

    monkeypatch.chdir(tmp_path)
    _, run_dir, before = run.load_pipeline(REPO / "pipelines" / "shapes.yaml", None, "runs/x")
    assert run_dir == tmp_path / "runs" / "x"
    (run_dir / "rwr" / "pipeline").mkdir(parents=True)
    _, _, after = run.load_pipeline(REPO / "pipelines" / "shapes.yaml", None, "runs/x")
    tuned = [cfg.model for name, cfg in before if name == "generate" and "rwr" in str(cfg.model)]
    assert tuned and tuned == [cfg.model for name, cfg in after if name == "generate" and "rwr" in str(cfg.model)]
    assert all(str(m).startswith(str(tmp_path)) for m in tuned)

"""Reward models and CLIP judges (issue #6): embeddings cache, train reward, clip:/reward: judges, errors.

Every test runs offline on a tiny random CLIP built from config (no download); one checks the shipped
shapes-CLIP learns something real.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest

from autofeedback import embeddings, judge, pairs, reward, tables
from autofeedback.config import EmbedConfig, JudgeConfig, PairsConfig, TrainRewardConfig
from autofeedback.errors import InputError
from autofeedback.shapes.demo import make_rendered_run

from .conftest import REPO, cli

SHIPPED_CLIP = REPO / "data" / "models" / "shapes-clip"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIPModel + CLIPProcessor of the shapes-CLIP kind, from config: what `--clip` loads."""
    import torch
    from transformers import CLIPProcessor

    from autofeedback.shapes import clip_recipe, recipe

    out = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    tok = recipe.write_tokenizer(out / "tok")
    model = clip_recipe.build_model(tok, vision_width=32, vision_layers=1, text_width=32, text_layers=1,
                                    projection_dim=16)
    model.save_pretrained(out)
    CLIPProcessor(image_processor=clip_recipe.image_processor(), tokenizer=tok).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory):
    """Rendered images (one right, three with a wrong count per prompt) judged by the checker, then pairs."""
    run = make_rendered_run(tmp_path_factory.mktemp("reward") / "run", n_prompts=12, per_prompt=4, seed=3)
    judge.run(JudgeConfig(run_dir=run, judge="shapes"))
    pairs.run(PairsConfig(run_dir=run, augment=4))
    return run


def _cfg(run, clip, **kw):
    base = dict(run_dir=run, clip=str(clip), val_split=None, val_fraction=0.34, steps=20, batch_size=16,
                eval_every=5, progress=False)
    return TrainRewardConfig(**{**base, **kw})


def _copy(run, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# ----------------------------------------------------------------------------------------- embeddings
def test_embed_caches_and_only_new_work_is_done(judged_run, tiny_clip, tmp_path):
    run = _copy(judged_run, tmp_path)
    first = embeddings.run(EmbedConfig(run_dir=run, clip=str(tiny_clip)))
    n_img = tables.read(tables.table_path(run, "images"), "images", columns=["image_id"]).num_rows
    assert first["computed"]["image"] == n_img == 48
    assert first["computed"]["text"] == first["texts"] > 12  # prompts + perturbed prompts
    t = tables.read(tables.table_path(run, "embeddings"), "embeddings")
    assert t.num_rows == n_img + first["texts"]
    assert set(pa.compute.list_value_length(t.column("vector")).to_pylist()) == {16}
    again = embeddings.run(EmbedConfig(run_dir=run, clip=str(tiny_clip)))
    assert again["computed"] == {"image": 0, "text": 0}
    # cached vectors are the model's own
    clip = embeddings.Clip(str(tiny_clip))
    row = t.filter(pa.compute.equal(t.column("kind"), "text")).slice(0, 1).to_pylist()[0]
    np.testing.assert_allclose(clip.texts([row["text"]])[0], row["vector"], rtol=1e-4, atol=1e-5)


def test_embeddings_with_wrong_length_are_a_clear_error(judged_run, tiny_clip, tmp_path):
    run = _copy(judged_run, tmp_path)
    clip = embeddings.Clip(str(tiny_clip))
    tables.append(tables.table_path(run, "embeddings"), [
        {"emb_id": "x", "model": clip.identity, "kind": "text", "key": "k", "text": "t", "vector": [0.0, 1.0],
         "created_at": tables.now()}], "embeddings")
    with pytest.raises(InputError, match="must all have 16 values"):
        embeddings.Cache(run, clip)


def test_not_a_clip_folder_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    r = cli("embed", tmp_path / "run", "--clip", tmp_path)
    assert r.returncode == 2
    make_rendered_run(tmp_path / "run", n_prompts=1, per_prompt=1)
    r = cli("embed", tmp_path / "run", "--clip", tmp_path)
    assert r.returncode == 2 and "cannot load a CLIP model" in r.stderr, r.stderr


def test_an_image_that_does_not_decode_is_a_clear_embed_error(judged_run, tiny_clip, tmp_path):
    run = _copy(judged_run, tmp_path)
    assert cli("embed", run, "--clip", tiny_clip).returncode == 0
    before = tables.read(tables.table_path(run, "embeddings"), "embeddings").num_rows
    img = tables.read(tables.table_path(run, "images"), "images").slice(0, 1).to_pylist()[0]
    img.update(image_id="broken0000000000", image={"bytes": b"not a png", "path": "x.png"})
    tables.append(tables.table_path(run, "images"), [img], "images")
    r = cli("embed", run, "--clip", tiny_clip)
    assert r.returncode == 2 and "image broken0000000000 does not decode" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert tables.read(tables.table_path(run, "embeddings"), "embeddings").num_rows == before  # nothing lost


# ------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("objective,aux", [("mse", 0.5), ("bt", 0.5)])
def test_two_steps_change_every_trainable_parameter(judged_run, tiny_clip, tmp_path, objective, aux):
    import torch

    run = _copy(judged_run, tmp_path)
    cfg = _cfg(run, tiny_clip, objective=objective, aux_weight=aux, steps=2)
    data = reward.load(cfg, embeddings.Cache(run, embeddings.Clip(str(tiny_clip))))
    assert data.counts["aux_rows"] > 0 and data.counts["labels_val"] > 0
    head = reward.build_head(data.img.shape[1], cfg.hidden, cfg.dropout)
    before = {k: v.detach().clone() for k, v in head.named_parameters()}
    head, history = reward.train(cfg, data, log=lambda *_: None, head=head)
    assert [h["step"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)
    assert "aux" in history[0]
    unchanged = [k for k, v in head.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged, f"not trained: {unchanged}"


def test_train_reward_cli_writes_model_and_skips_when_up_to_date(judged_run, tiny_clip, tmp_path):
    run = _copy(judged_run, tmp_path)
    r = cli("train", "reward", run, "--clip", tiny_clip, "--val-split", "nope", "--val-fraction", "0.34",
            "--steps", "30", "--batch-size", "16", "--eval-every", "5")
    assert r.returncode == 0, r.stderr
    out = run / "reward"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert "no prompt of split 'nope'" in metrics["val"]
    assert {"accuracy", "auc", "threshold", "label_pair_accuracy"} <= set(metrics["reward"])
    assert {"accuracy", "threshold"} <= set(metrics["clip_score"])
    assert len(metrics["history"]) == 30 and metrics["history"][-1]["val_loss"] is not None
    config = json.loads((out / "config.json").read_text())
    assert config["clip_identity"] == embeddings.Clip(str(tiny_clip)).identity and config["dim"] == 16
    assert "reward " in r.stdout and "clip_score" in r.stdout
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = cli("train", "reward", run, "--clip", tiny_clip, "--val-split", "nope", "--val-fraction", "0.34",
                "--steps", "30", "--batch-size", "16", "--eval-every", "5")
    assert again.returncode == 0 and "up to date" in again.stdout
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    # a changed setting is new work
    third = cli("train", "reward", run, "--clip", tiny_clip, "--val-split", "nope", "--val-fraction", "0.34",
                "--steps", "31", "--batch-size", "16", "--eval-every", "5")
    assert third.returncode == 0 and "up to date" not in third.stdout


def test_reward_and_clip_judges_score_images_and_record_bad_ones(judged_run, tiny_clip, tmp_path):
    run = _copy(judged_run, tmp_path)
    reward.run(_cfg(run, tiny_clip, steps=10))
    # one more image that does not decode
    img = tables.read(tables.table_path(run, "images"), "images").slice(0, 1).to_pylist()[0]
    img.update(image_id="broken0000000000", image={"bytes": b"not a png", "path": "x.png"})
    tables.append(tables.table_path(run, "images"), [img], "images")
    for spec in (f"reward:{run / 'reward'}", f"clip:{tiny_clip}"):
        r = cli("judge", run, "--judge", spec)
        assert r.returncode == 0, r.stderr
    rows = tables.read(tables.table_path(run, "judgments"), "judgments").to_pylist()
    for name in ("reward", "clip"):
        mine = [x for x in rows if x["judge"].startswith(name + ":")]
        assert len(mine) == 49
        bad = [x for x in mine if x["image_ids"] == ["broken0000000000"]]
        assert bad[0]["status"] == "error" and "does not decode" in bad[0]["error"] and bad[0]["score"] is None
        ok = [x for x in mine if x["status"] == "ok"]
        assert len(ok) == 48 and all(np.isfinite(x["score"]) for x in ok)
        if name == "reward":
            thr = json.loads((run / "reward" / "config.json").read_text())["threshold"]
            assert all(x["label"] == (x["score"] >= thr) for x in ok)
        else:
            assert all(-1 <= x["score"] <= 1 and x["label"] is None for x in ok)
    # the judges read the embedding cache: judging again is no work, and no embedding is computed twice
    emb = tables.read(tables.table_path(run, "embeddings"), "embeddings")
    assert emb.num_rows == len(set(emb.column("emb_id").to_pylist()))
    assert cli("judge", run, "--judge", f"clip:{tiny_clip}").returncode == 0
    assert tables.read(tables.table_path(run, "embeddings"), "embeddings").num_rows == emb.num_rows


def test_reward_judge_refuses_a_changed_clip(judged_run, tiny_clip, tmp_path):
    import shutil

    run = _copy(judged_run, tmp_path)
    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip, clip)
    reward.run(_cfg(run, clip, steps=3))
    cfg = json.loads((clip / "config.json").read_text())
    cfg["logit_scale_init_value"] = 1.0  # a different CLIP (its files changed)
    (clip / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="have since changed"):
        reward.RewardModel(run / "reward")
    with pytest.raises(InputError, match="not a reward model folder"):
        reward.RewardModel(tmp_path)


def test_missing_inputs_are_clear_errors(tiny_clip, tmp_path):
    run = make_rendered_run(tmp_path / "run", n_prompts=4, per_prompt=2)
    r = cli("train", "reward", run, "--clip", tiny_clip)
    assert r.returncode == 2 and "no labels" in r.stderr and "autofeedback pairs" in r.stderr
    r = cli("train", "reward", run, "--clip", tiny_clip, "--objective", "bt")
    assert r.returncode == 2 and "no preference pairs" in r.stderr
    judge.run(JudgeConfig(run_dir=run, judge="shapes"))
    pairs.run(PairsConfig(run_dir=run, augment=0))
    r = cli("train", "reward", run, "--clip", tiny_clip)
    assert r.returncode == 2 and "--aux-weight 0" in r.stderr
    r = cli("judge", run, "--judge", "reward")
    assert r.returncode == 2 and "needs a path" in r.stderr
    assert not (run / "reward").exists()


# -------------------------------------------------------------------------------------------- metrics
def test_tuned_threshold_auc_and_pair_accuracy_on_hand_cases():
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.9])
    y = np.array([0, 0, 1, 0, 1])
    thr = reward.tuned_threshold(s, y)
    assert thr == pytest.approx(0.25)  # ">= 0.25" and ">= 0.65" both get 4/5 right; the lowest best cut is kept
    assert np.mean((s >= thr) == y) == 0.8
    assert reward.tuned_threshold(np.array([1.0, 1.0]), np.array([1, 0])) < 1.0  # no cut between equal scores
    assert reward.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert reward.auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert reward.pair_accuracy(np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 4.0])) == 0.5


def test_accuracy_difference_resamples_validation_prompts():
    # 3 val prompts x 2 images (+ 2 train rows that must not count); the reward is right on 5 of 6, CLIP on 4
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0], np.float32)
    val = np.array([True] * 6 + [False] * 2)
    txt = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    data = reward.Data(img=np.zeros((1, 2)), txt=np.zeros((3, 2)), label_img=np.zeros(8, np.int64), label_txt=txt,
                       label_y=y, label_val=val, aug_txt=np.full((8, 1), -1), pair_c=np.zeros(0, np.int64),
                       pair_r=np.zeros(0, np.int64), pair_txt=np.zeros(0, np.int64), pair_y=np.zeros(0),
                       pair_val=np.zeros(0, bool), val_rule="test", fingerprint="x")
    r = np.array([0.9, 0.1, 0.8, 0.2, 0.1, 0.0, 0.0, 1.0])   # at 0.5: wrong on val row 4 only
    c = np.array([0.9, 0.9, 0.1, 0.1, 0.9, 0.1, 0.0, 1.0])   # at 0.5: wrong on val rows 1 and 2
    d = reward.accuracy_difference(r, c, data, {"threshold": 0.5}, {"threshold": 0.5}, n_boot=500)
    assert d["value"] == pytest.approx(5 / 6 - 4 / 6, abs=1e-6) and d["n"] == 3
    lo, hi = d["ci95"]
    assert lo <= d["value"] <= hi and hi - lo > 0   # prompts differ, so resampling them moves the difference
    same = reward.accuracy_difference(r, r, data, {"threshold": 0.5}, {"threshold": 0.5}, n_boot=200)
    assert same["value"] == 0 and same["ci95"] == [0, 0]
    assert reward.accuracy_difference(r, c, data, {}, {"threshold": 0.5}) is None


@pytest.mark.skipif(not (SHIPPED_CLIP / "model.safetensors").exists(), reason="shapes-CLIP not built")
def test_shipped_shapes_clip_knows_the_shapes_world():
    from autofeedback.shapes.world import Scene, render

    clip = embeddings.Clip(str(SHIPPED_CLIP))
    scene = Scene(3, "red", "circle", "blue")
    buf = io.BytesIO()
    render(scene, seed=123).save(buf, format="PNG")
    options = [Scene(n, "red", s, "blue").prompt for n in (1, 2, 3, 4) for s in ("circle", "square", "triangle")]
    img, txt = clip.images([buf.getvalue()]), clip.texts(options)
    sims = (img / np.linalg.norm(img)) @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    assert options[int(np.argmax(sims))] == scene.prompt


def test_perturbed_prompts_that_are_validation_prompts_never_enter_training(judged_run, tiny_clip, tmp_path):
    """A perturbed prompt equal to a validation prompt would teach the head that prompt's text is wrong."""
    import shutil

    run = _copy(judged_run, tmp_path)
    cfg = _cfg(run, tiny_clip, aux_weight=0.5)
    clip = embeddings.Clip(str(tiny_clip))
    base = reward.load(cfg, embeddings.Cache(run, clip))
    labels = tables.read(tables.table_path(run, "labels"), "labels").to_pylist()
    prompt_of = {r["image_id"]: r["prompt"] for r in labels}
    val_prompt = next(r["prompt"] for r, v in zip(labels, base.label_val) if v)
    # every train image's perturbed prompts now start with a validation prompt
    aug_path = tables.table_path(run, "augmentations")
    augs = tables.read(aug_path, "augmentations").to_pylist()
    planted = 0
    for a in augs:
        if prompt_of[a["image_id"]] != val_prompt:
            a["perturbed"] = [val_prompt, *(a["perturbed"] or [])]
            planted += 1
    shutil.rmtree(aug_path) if aug_path.is_dir() else aug_path.unlink()
    tables.append(aug_path, augs, "augmentations")

    data = reward.load(cfg, embeddings.Cache(run, clip))
    assert data.counts["perturbed_dropped_val"] >= planted > 0
    used = set(data.aug_txt[data.aug_txt >= 0].tolist())
    assert used and not used & set(data.label_txt[data.label_val].tolist()), \
        "a validation prompt is a candidate of the prompt-classification loss"
    assert data.counts["aux_rows"] > 0

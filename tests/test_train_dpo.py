import json

import pytest

from autofeedback import generate, tables, train_dpo
from autofeedback.config import GenerateConfig, TrainDPOConfig
from autofeedback.shapes.demo import make_rendered_run


def _prefs(run_dir):
    """chosen = each prompt's matching rendered image, rejected = the others."""
    images = tables.read(run_dir / "images.parquet", "images").to_pylist()
    by_prompt = {}
    for im in images:
        by_prompt.setdefault(im["prompt_id"], []).append(im)
    rows = []
    for pid, ims in by_prompt.items():
        ims.sort(key=lambda r: r["seed"])  # seed 0 = the matching render
        for bad in ims[1:]:
            rows.append({"pair_id": tables.content_id("pair", ims[0]["image_id"], bad["image_id"]), "prompt_id": pid,
                         "prompt": ims[0]["prompt"], "chosen_image_id": ims[0]["image_id"],
                         "rejected_image_id": bad["image_id"], "margin": 1.0, "agreement": 1.0, "source": "test",
                         "created_at": tables.now()})
    tables.append(tables.table_path(run_dir, "preferences"), rows, "preferences")
    return run_dir


@pytest.fixture
def pref_run(tmp_path):
    return _prefs(make_rendered_run(tmp_path / "run", n_prompts=4, per_prompt=3))


def _cfg(run_dir, model, **kw):
    base = dict(run_dir=run_dir, model=str(model), steps=2, batch_size=2, device="cpu", lr=1e-3,
                checkpoint_every=0, log_every=1)
    return TrainDPOConfig(**{**base, **kw})


def test_smoke_changes_every_lora_parameter_and_nothing_else(pref_run, tiny_model):
    from safetensors.torch import load_file

    s = train_dpo.run(_cfg(pref_run, tiny_model))
    assert s["steps"] == 2 and s["lora"]
    p = s["parameters"]
    assert p["trainable_params"] > 0 and p["changed_params"] == p["trainable_params"], p["unchanged_params"]
    assert p["frozen_changed"] == 0
    assert all("lora" in n for n in p["trainable_names_sample"])
    lora = load_file(f"{s['lora']}/pytorch_lora_weights.safetensors")
    assert lora and all("lora" in k for k in lora)
    metrics = [json.loads(l) for l in (pref_run / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all("implicit_acc" in m and "reward_margin" in m for m in metrics)


def test_high_noise_timesteps_and_prompt_dropout_options_train(pref_run, tiny_model):
    s = train_dpo.run(_cfg(pref_run, tiny_model, timestep_min=0.6, uncond_prob=0.5))
    assert s["steps"] == 2 and s["parameters"]["changed_params"] == s["parameters"]["trainable_params"]


def test_full_fine_tune_keeps_a_frozen_reference(pref_run, tiny_model):
    s = train_dpo.run(_cfg(pref_run, tiny_model, lora_rank=0))
    p = s["parameters"]
    assert s["lora"] is None and (pref_run / "dpo" / "pipeline" / "model_index.json").exists()
    assert p["frozen_changed"] == 0 and p["changed_params"] >= 0.9 * p["trainable_params"]


def test_resume_continues_the_step_count(pref_run, tiny_model):
    train_dpo.run(_cfg(pref_run, tiny_model, steps=2, checkpoint_every=1, keep_checkpoints=0))
    assert train_dpo.latest_checkpoint(pref_run / "dpo").name == "step-2"
    s = train_dpo.run(_cfg(pref_run, tiny_model, steps=4, checkpoint_every=1, keep_checkpoints=0))
    steps = [json.loads(l)["step"] for l in (pref_run / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and s["steps"] == 4
    assert train_dpo.latest_checkpoint(pref_run / "dpo").name == "step-4"
    again = train_dpo.run(_cfg(pref_run, tiny_model, steps=4, checkpoint_every=1))
    assert again["steps"] == 4  # finished: nothing to do


def test_nan_loss_stops_and_keeps_the_last_checkpoint(pref_run, tiny_model, monkeypatch):
    real = train_dpo._loss
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        loss, z = real(*args)
        return (loss * float("nan"), z) if calls["n"] == 3 else (loss, z)

    monkeypatch.setattr(train_dpo, "_loss", flaky)
    with pytest.raises(train_dpo.NonFiniteLoss, match=r"loss is nan at step 3.*step-2"):
        train_dpo.run(_cfg(pref_run, tiny_model, steps=5, checkpoint_every=1, keep_checkpoints=0))
    assert train_dpo.latest_checkpoint(pref_run / "dpo").name == "step-2"
    assert not (pref_run / "dpo" / "lora").exists()


def test_generate_loads_the_trained_lora(pref_run, tiny_model, tmp_path):
    s = train_dpo.run(_cfg(pref_run, tiny_model))
    cfg = GenerateConfig(run_dir=tmp_path / "gen", model=str(tiny_model), prompts="shapes", limit=2,
                         images_per_prompt=1, steps=2, lora=s["lora"], progress=False)
    out = generate.run(cfg)
    assert out["new"] == 2
    rows = tables.read(tmp_path / "gen" / "images.parquet", "images").to_pylist()
    assert all(r["lora"] == s["lora"] for r in rows)


def test_rwr_smoke_weights_by_reward_and_regularizes(tmp_path, tiny_model):
    from autofeedback import judge, train_rwr
    from autofeedback.config import JudgeConfig, TrainRWRConfig

    run_dir = make_rendered_run(tmp_path / "run", n_prompts=4, per_prompt=3)
    judge.run(JudgeConfig(run_dir=run_dir, judge="shapes"))
    rewards = train_rwr.load_rewards(TrainRWRConfig(run_dir=run_dir, model=str(tiny_model)))
    assert len(rewards) == 12 and {r["reward"] for r in rewards} == {0.0, 1.0}
    s = train_rwr.run(TrainRWRConfig(run_dir=run_dir, model=str(tiny_model), steps=2, batch_size=2, device="cpu",
                                     checkpoint_every=1, lr=1e-3))
    p = s["parameters"]
    assert s["steps"] == 2 and s["lora"] and p["changed_params"] == p["trainable_params"] and p["frozen_changed"] == 0
    metrics = [json.loads(l) for l in (run_dir / "rwr" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["reg"] > 0 for m in metrics)
    scored = train_rwr.load_rewards(TrainRWRConfig(run_dir=run_dir, model=str(tiny_model), reward="score"))
    assert min(r["reward"] for r in scored) == 0.0 and max(r["reward"] for r in scored) == 1.0
    # the no-feedback control: the same 12 samples, each at 1, whatever the judge said (so min_reward keeps them all)
    none = train_rwr.load_rewards(TrainRWRConfig(run_dir=run_dir, model=str(tiny_model), reward="none", min_reward=1))
    assert [r["image_id"] for r in none] == [r["image_id"] for r in rewards] and {r["reward"] for r in none} == {1.0}


def test_ema_weights_are_saved_and_resume_with_the_checkpoint(pref_run, tiny_model):
    import torch
    from safetensors.torch import load_file

    def norms(tensors):
        return sorted(round(float(t.float().norm()), 5) for t in tensors)

    cfg = dict(ema_decay=0.9, checkpoint_every=1, keep_checkpoints=0)
    train_dpo.run(_cfg(pref_run, tiny_model, steps=2, **cfg))
    s = train_dpo.run(_cfg(pref_run, tiny_model, steps=4, **cfg))  # resumes at step 2, EMA included
    ckpt = train_dpo.latest_checkpoint(pref_run / "dpo")
    ema = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)
    assert ema["optimization_step"] == 4  # 2 steps before the resume + 2 after, not restarted
    raw = [v for k, v in load_file(ckpt / "model.safetensors").items() if "lora" in k]
    saved = load_file(f"{s['lora']}/pytorch_lora_weights.safetensors").values()
    assert len(raw) == len(ema["shadow_params"]) == len(saved) > 0
    assert norms(saved) == norms(ema["shadow_params"])  # what generate --lora loads is the average
    assert norms(saved) != norms(raw)  # not the last step's weights

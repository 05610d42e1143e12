"""train rwr / train dpo --train-text-encoder (#18): the text encoder is trained, saved with the pipeline,
resumed from checkpoints, and is its own reference's (KL 0 at the first step)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from autofeedback import judge, pairs, train_dpo, train_rwr
from autofeedback.config import JudgeConfig, PairsConfig, TrainDPOConfig, TrainRWRConfig
from autofeedback.errors import InputError
from autofeedback.shapes.demo import make_rendered_run


def _te_weights(model_dir):
    return load_file(str(next((model_dir / "text_encoder").glob("*.safetensors"))))


@pytest.fixture
def judged_run(tmp_path):
    run_dir = make_rendered_run(tmp_path / "run", n_prompts=3, per_prompt=2)
    judge.run(JudgeConfig(run_dir=run_dir, judge="shapes:graded"))
    return run_dir


def test_rwr_trains_and_saves_the_text_encoder(judged_run, tiny_model):
    cfg = TrainRWRConfig(run_dir=judged_run, model=str(tiny_model), steps=2, batch_size=2, device="cpu", lr=1e-2,
                         checkpoint_every=0, reward="score", temperature=0.0, reg_weight=0.0, anchor_weight=1.0,
                         lora_rank=0, train_text_encoder=True)
    s = train_rwr.run(cfg)
    before, after = _te_weights(tiny_model), _te_weights(judged_run / "rwr" / "pipeline")
    assert before.keys() == after.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2, f"only {len(moved)} of {len(before)} text-encoder tensors changed"
    m = [json.loads(x) for x in (judged_run / "rwr" / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["anchor"] == 0.0 and m[1]["anchor"] > 0  # the reference has its own frozen text encoder
    assert s["parameters"]["changed_params"] == s["parameters"]["trainable_params"]


def test_without_the_flag_the_text_encoder_is_saved_unchanged(judged_run, tiny_model):
    train_rwr.run(TrainRWRConfig(run_dir=judged_run, model=str(tiny_model), steps=1, batch_size=2, device="cpu",
                                 lr=1e-2, checkpoint_every=0, lora_rank=0))
    before, after = _te_weights(tiny_model), _te_weights(judged_run / "rwr" / "pipeline")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_text_encoder_resumes_from_its_checkpoint(judged_run, tiny_model):
    """2 steps, then 2 more resumed from the checkpoint == 4 steps at once (the text encoder's state included)."""
    kw = dict(run_dir=judged_run, model=str(tiny_model), batch_size=2, device="cpu", lr=1e-2, reg_weight=0.0,
              lora_rank=0, train_text_encoder=True, checkpoint_every=2)
    train_rwr.run(TrainRWRConfig(**kw, steps=2, out="a"))
    train_rwr.run(TrainRWRConfig(**kw, steps=4, out="a"))
    train_rwr.run(TrainRWRConfig(**kw, steps=4, out="b"))
    a, b = _te_weights(judged_run / "a" / "pipeline"), _te_weights(judged_run / "b" / "pipeline")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not all(torch.equal(a[k], _te_weights(tiny_model)[k]) for k in a)


def test_dpo_trains_the_text_encoder(judged_run, tiny_model):
    judge.run(JudgeConfig(run_dir=judged_run, judge="shapes"))
    pairs.run(PairsConfig(run_dir=judged_run))
    train_dpo.run(TrainDPOConfig(run_dir=judged_run, model=str(tiny_model), steps=2, batch_size=2, device="cpu",
                                 lr=1e-2, checkpoint_every=0, lora_rank=0, train_text_encoder=True, beta=10.0))
    before, after = _te_weights(tiny_model), _te_weights(judged_run / "dpo" / "pipeline")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    m = [json.loads(x) for x in (judged_run / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["reward_margin"] == 0.0  # model == reference (text encoder included) before the first update


def test_text_encoder_needs_a_full_fine_tune(judged_run, tiny_model):
    with pytest.raises(InputError, match="full fine-tune"):
        train_rwr.run(TrainRWRConfig(run_dir=judged_run, model=str(tiny_model), steps=1, batch_size=2, device="cpu",
                                     lora_rank=4, train_text_encoder=True))


def test_text_encoder_lr_is_its_own_param_group(judged_run, tiny_model):
    from autofeedback import training

    cfg = TrainRWRConfig(run_dir=judged_run, model=str(tiny_model), device="cpu", lora_rank=0, lr=1e-4,
                         train_text_encoder=True, text_encoder_lr=1e-5)
    s = training.setup(cfg, need_reference=False)
    lrs = [g["lr"] for g in s.opt.param_groups]
    n_te = sum(1 for p in s.text_encoder.parameters())
    assert lrs == [1e-4, 1e-5] and len(s.opt.param_groups[1]["params"]) == n_te
    default = training.setup(cfg.model_copy(update={"text_encoder_lr": None, "out": "b"}), need_reference=False)
    assert [g["lr"] for g in default.opt.param_groups] == [1e-4, 1e-4]


def test_text_encoder_lr_without_training_it_is_a_clear_error(judged_run, tiny_model):
    with pytest.raises(InputError, match="needs --train-text-encoder"):
        train_rwr.run(TrainRWRConfig(run_dir=judged_run, model=str(tiny_model), steps=1, batch_size=2, device="cpu",
                                     lora_rank=0, text_encoder_lr=1e-5))

"""Anchoring and graded weights in train rwr (#18), on hand-computed values."""

import json
import math

import pytest
import torch

from autofeedback import train_rwr, training
from autofeedback.config import TrainRWRConfig
from autofeedback.errors import InputError
from autofeedback.shapes.demo import make_rendered_run


def test_prompt_weights_softmax_within_each_prompt():
    s = [{"prompt": "a", "reward": 1.0}, {"prompt": "a", "reward": 0.0}, {"prompt": "a", "reward": 0.5},
         {"prompt": "b", "reward": 0.2}, {"prompt": "b", "reward": 0.2}]
    train_rwr.prompt_weights(s, 0.0)  # best-of-n: the best image of each prompt, ties share
    assert [x["weight"] for x in s] == [1.0, 0.0, 0.0, 0.5, 0.5]
    train_rwr.prompt_weights(s, 0.5)
    z = 1 + math.exp(-2) + math.exp(-1)
    assert [x["weight"] for x in s[:3]] == pytest.approx([1 / z, math.exp(-2) / z, math.exp(-1) / z])
    assert [x["weight"] for x in s[3:]] == pytest.approx([0.5, 0.5])  # an all-bad prompt still weighs 1 in all


def test_anchor_loss_is_the_mean_squared_prediction_difference():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    ref = torch.tensor([[[[1.0, 0.0], [3.0, 5.0]]], [[[0.0, 0.0], [0.0, 2.0]]]])
    assert training.anchor_loss(pred, ref).tolist() == [(0 + 4 + 0 + 1) / 4, 4 / 4]


@pytest.mark.parametrize("lora_rank", [4, 0])
def test_anchor_is_zero_at_the_first_step_and_grows(tmp_path, tiny_model, lora_rank):
    from autofeedback import judge
    from autofeedback.config import JudgeConfig

    run_dir = make_rendered_run(tmp_path / "run", n_prompts=3, per_prompt=2)
    judge.run(JudgeConfig(run_dir=run_dir, judge="shapes:graded"))
    cfg = TrainRWRConfig(run_dir=run_dir, model=str(tiny_model), steps=3, batch_size=2, device="cpu", lr=1e-2,
                         checkpoint_every=0, reward="score", temperature=0.0, reg_weight=0.0, anchor_weight=1.0,
                         lora_rank=lora_rank)
    s = train_rwr.run(cfg)
    m = [json.loads(x) for x in (run_dir / "rwr" / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["anchor"] == 0.0  # the model is its reference before its first update: KL 0
    assert m[1]["anchor"] > 0 and m[2]["anchor"] > 0
    assert s["parameters"]["changed_params"] == s["parameters"]["trainable_params"]


def test_anchor_model_needs_a_full_fine_tune(tmp_path, tiny_model):
    run_dir = make_rendered_run(tmp_path / "run", n_prompts=2, per_prompt=2)
    from autofeedback import judge
    from autofeedback.config import JudgeConfig

    judge.run(JudgeConfig(run_dir=run_dir, judge="shapes"))
    with pytest.raises(InputError, match="full fine-tune"):
        train_rwr.run(TrainRWRConfig(run_dir=run_dir, model=str(tiny_model), steps=1, batch_size=2, device="cpu",
                                     anchor_weight=1.0, anchor_model=str(tiny_model), lora_rank=4))


def test_min_reward_keeps_only_the_samples_at_or_above_it(tmp_path):
    from autofeedback import judge
    from autofeedback.config import JudgeConfig

    run_dir = make_rendered_run(tmp_path / "run", n_prompts=3, per_prompt=2)
    judge.run(JudgeConfig(run_dir=run_dir, judge="shapes:graded"))
    kw = dict(run_dir=run_dir, model="unused", reward="score")
    every = train_rwr.load_rewards(TrainRWRConfig(**kw))
    cut = sorted(x["reward"] for x in every)[len(every) // 2]
    kept = train_rwr.load_rewards(TrainRWRConfig(**kw, min_reward=cut))
    assert kept == [x for x in every if x["reward"] >= cut] and 0 < len(kept) < len(every)
    with pytest.raises(InputError, match="min-reward"):
        train_rwr.load_rewards(TrainRWRConfig(**kw, min_reward=1.01))

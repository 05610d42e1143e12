"""train --interpolate (WiSE-FT, #18): the saved pipeline is base + alpha * (tuned - base), UNet and text encoder;
the checkpoints keep the tuned weights, so a rerun of a finished stage saves the same blend."""

import json

import pytest
import torch
from safetensors.torch import load_file

from autofeedback import judge, train_rwr, training
from autofeedback.config import JudgeConfig, TrainRWRConfig
from autofeedback.errors import InputError
from autofeedback.shapes.demo import make_rendered_run


def _weights(model_dir, part):
    return load_file(str(next((model_dir / part).glob("*.safetensors"))))


def test_blend_on_hand_computed_weights():
    lin = torch.nn.Linear(2, 1)
    lin.register_buffer("steps", torch.tensor([7]))  # not a weight: left as it is
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, -1.0]]))
        lin.bias.fill_(0.5)
    base = {"weight": torch.tensor([[1.0, 1.0]]), "bias": torch.tensor([0.5]), "steps": torch.tensor([0])}
    training.blend(lin, base, 0.7)
    # 1 + 0.7 * (3 - 1) = 2.4;  1 + 0.7 * (-1 - 1) = -0.4;  the bias did not move, so neither does its blend
    assert torch.allclose(lin.weight, torch.tensor([[2.4, -0.4]]))
    assert torch.allclose(lin.bias, torch.tensor([0.5])) and lin.steps.item() == 7


@pytest.fixture
def judged_run(tmp_path):
    run_dir = make_rendered_run(tmp_path / "run", n_prompts=3, per_prompt=2)
    judge.run(JudgeConfig(run_dir=run_dir, judge="shapes"))
    return run_dir


def test_saved_pipeline_is_the_blend_and_a_rerun_saves_it_again(judged_run, tiny_model):
    kw = dict(run_dir=judged_run, model=str(tiny_model), steps=2, batch_size=2, device="cpu", lr=1e-2,
              reg_weight=0.0, lora_rank=0, train_text_encoder=True, checkpoint_every=2)
    train_rwr.run(TrainRWRConfig(**kw, out="full"))
    s = train_rwr.run(TrainRWRConfig(**kw, out="half", interpolate=0.5))
    assert s["interpolate"] == 0.5
    assert json.loads((judged_run / "half" / "train.json").read_text())["config"]["interpolate"] == 0.5
    for part in ("unet", "text_encoder"):
        base = _weights(tiny_model, part)
        full = _weights(judged_run / "full" / "pipeline", part)
        half = _weights(judged_run / "half" / "pipeline", part)
        moved = [k for k in base if base[k].is_floating_point() and not torch.equal(base[k], full[k])]
        assert moved, part
        for k in moved:
            assert torch.allclose(half[k], (base[k] + full[k]) / 2, atol=1e-6), (part, k)
    first = _weights(judged_run / "half" / "pipeline", "unet")
    train_rwr.run(TrainRWRConfig(**kw, out="half", interpolate=0.5))  # finished: blends again from the checkpoint
    again = _weights(judged_run / "half" / "pipeline", "unet")
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_interpolate_needs_a_full_fine_tune(judged_run, tiny_model):
    with pytest.raises(InputError, match="full fine-tune"):
        train_rwr.run(TrainRWRConfig(run_dir=judged_run, model=str(tiny_model), steps=1, batch_size=2, device="cpu",
                                     lora_rank=4, interpolate=0.7))


def test_interpolate_outside_0_1_is_rejected():
    with pytest.raises(ValueError):
        TrainRWRConfig(run_dir="r", model="m", interpolate=1.5)
    with pytest.raises(ValueError):
        TrainRWRConfig(run_dir="r", model="m", interpolate=0)

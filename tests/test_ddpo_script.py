"""scripts/ddpo_experiment.py is a thin wrapper of `train grpo` with DDPO's settings (its DDIM step, once the
script's own, is autofeedback.policy's: tests/test_train_grpo.py checks it against the scheduler)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ddpo_experiment.py"


def _script():
    spec = importlib.util.spec_from_file_location("ddpo_experiment", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_script_maps_its_flags_onto_train_grpo_with_ddpos_settings():
    cfg = _script().config(["/m", "/out", "--epochs", "3", "--clip", "1e-4", "--minibatch", "32", "--lora-rank", "8",
                            "--samples-per-prompt", "4", "--timestep-fraction", "0.25"])
    assert (cfg.model, str(cfg.run_dir), cfg.epochs, cfg.clip_range, cfg.batch_size, cfg.lora_rank) == (
        "/m", "/out", 3, 1e-4, 32, 8)
    assert (cfg.group_size, cfg.train_fraction, cfg.eta, cfg.kl_weight) == (4, 0.25, 1.0, 0.0)
    assert cfg.reward == {"shapes": 1.0} and cfg.reward_value == "label" and cfg.split == "train"

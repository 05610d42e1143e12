"""scripts/ddpo_experiment.py's DDIM step (#18 defect b): its eta=0 step is generate's sampler, its eta=1 step
has the scheduler's variance. The script samples its policy with the eta=1 step and reports each epoch's
reward with the eta=0 step too, from the same starting noise."""

import importlib.util
from pathlib import Path

import torch

from autofeedback.shapes import recipe

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ddpo_experiment.py"


def _script():
    spec = importlib.util.spec_from_file_location("ddpo_experiment", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ddim_step_matches_the_scheduler_at_eta_0_and_its_variance_at_eta_1():
    mod = _script()
    sched = recipe.make_scheduler()
    sched.set_timesteps(20)
    torch.manual_seed(0)
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for t in sched.timesteps[[0, 7, 19]]:
        mean, std = mod.ddim_step_stats(sched, v, int(t), x, 0.0, 20)
        assert float(std) == 0.0
        expected = sched.step(v, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(mean, expected, atol=1e-5, rtol=1e-5)
        _, std1 = mod.ddim_step_stats(sched, v, int(t), x, 1.0, 20)
        prev = int(t) - 1000 // 20
        var = sched._get_variance(int(t), prev)  # diffusers' sigma_t^2 at eta=1
        torch.testing.assert_close(std1 ** 2, var, atol=1e-6, rtol=1e-5)


"""Progress bars with ETA for train dpo/rwr and eval: on stderr when it is a terminal; stdout's log lines unchanged."""

import io
import sys

from autofeedback import judge, progress, train_dpo
from autofeedback.config import EvalConfig, JudgeConfig, TrainDPOConfig
from autofeedback.shapes.demo import make_rendered_run

from .test_train_dpo import _prefs


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_no_bar_when_stderr_is_not_a_terminal(capsys):
    b = progress.bar(10, "x")
    assert b.disable
    b.update(3)
    b.say("dpo step 1/10")
    b.close()
    out = capsys.readouterr()
    assert out.out == "dpo step 1/10\n" and out.err == ""


def test_train_dpo_bar_on_a_terminal_keeps_the_log_lines(tmp_path, tiny_model, capsys, monkeypatch):
    run_dir = _prefs(make_rendered_run(tmp_path / "run", n_prompts=4, per_prompt=3))
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    cfg = dict(run_dir=run_dir, model=str(tiny_model), steps=2, batch_size=2, device="cpu", log_every=1,
               checkpoint_every=1)
    train_dpo.run(TrainDPOConfig(**cfg))
    out = capsys.readouterr().out
    assert "dpo step 1/2 loss" in out and "dpo step 2/2 loss" in out
    assert "train dpo" in tty.getvalue() and "2/2" in tty.getvalue() and "step/s" in tty.getvalue()
    # resumed: the bar starts at the checkpoint's step, so its ETA is for the steps left
    tty.truncate(0), tty.seek(0)
    train_dpo.run(TrainDPOConfig(**{**cfg, "steps": 3}))
    out = capsys.readouterr().out
    assert "resumed from" in out and "dpo step 3/3" in out and "dpo step 1/" not in out
    assert "2/3" in tty.getvalue() and "3/3" in tty.getvalue()
    # --no-progress: no bar at all
    tty.truncate(0), tty.seek(0)
    train_dpo.run(TrainDPOConfig(**{**cfg, "steps": 4, "progress": False}))
    assert "dpo step 4/4" in capsys.readouterr().out and tty.getvalue() == ""


def test_eval_bar_walks_the_steps(shapes_run, capsys, monkeypatch):
    from autofeedback.eval import stage

    judge.run(JudgeConfig(run_dir=shapes_run, judge="shapes"))
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    stage.run(EvalConfig(run_dir=shapes_run, bootstrap=200), echo=print)
    assert "eval" in tty.getvalue() and f"{len(stage.EVAL_STEPS)}/{len(stage.EVAL_STEPS)}" in tty.getvalue()
    assert "wrote" in capsys.readouterr().out

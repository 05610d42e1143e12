"""train grpo (issue #20): the policy's math against direct computations, and the stage end to end on a tiny
random-weight pipeline -- samples and rewards in the run's tables, resume, the OpenAI-protocol reward through the
real loopback checker server (faults, kill -9)."""

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from autofeedback import judge as judge_stage
from autofeedback import policy, tables, train_grpo
from autofeedback.config import JudgeConfig, TrainGRPOConfig
from autofeedback.judges.checker_server import CheckerServer
from autofeedback.shapes import recipe

from .conftest import REPO

CHECKER = "openai:shapes-checker"


def _cfg(run_dir, model, **kw):
    base = dict(run_dir=run_dir, model=str(model), prompts="shapes", epochs=1, prompts_per_epoch=2, group_size=3,
                sample_steps=3, eval_steps=3, batch_size=3, sample_batch=4, lr=1e-3, device="cpu", progress=False,
                train_fraction=0.67)
    return TrainGRPOConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ the math
def test_group_advantages_on_hand_computed_rewards():
    r = np.array([[1.0, 0.0, 0.0, 1.0],        # mean 0.5, std 0.5 -> +-1
                  [0.2, 0.2, 0.2, 0.2],        # no spread: no signal
                  [3.0, np.nan, 1.0, 2.0],     # one sample without a reward: mean 2, std sqrt(2/3)
                  [1.0, np.nan, np.nan, np.nan]])  # a single reward: nothing to compare with
    adv = policy.group_advantages(r, eps=0.0 + 1e-12)
    np.testing.assert_allclose(adv[0], [1, -1, -1, 1], atol=1e-9)
    np.testing.assert_allclose(adv[1], [0, 0, 0, 0])
    s = math.sqrt(2 / 3)
    np.testing.assert_allclose(adv[2], [1 / s, 0, -1 / s, 0], atol=1e-9)
    np.testing.assert_allclose(adv[3], [0, 0, 0, 0])
    np.testing.assert_allclose(policy.group_advantages(r[:1], std_normalize=False), [[0.5, -0.5, -0.5, 0.5]])
    # two judges: each normalized in its group, weighted, summed, clipped
    both = policy.combined_advantages({"a": r[:1], "b": 10 * (1 - r[:1])}, {"a": 1.0, "b": 0.5}, True, 5.0)
    np.testing.assert_allclose(both, [[0.5, -0.5, -0.5, 0.5]], atol=1e-3)


def _ddim(steps=20):
    return policy.Chain(recipe.make_scheduler(), steps)


def test_ddim_eta_step_log_prob_is_the_gaussian_density_and_eta_0_is_the_scheduler():
    chain = _ddim()
    sched = chain.sched
    torch.manual_seed(0)
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    for j in (0, 7, 19):
        t = chain.timesteps[j]
        mean0, std0 = chain.stats(v, j, x, 0.0)  # eta = 0: the deterministic step generate takes
        assert float(std0) == 0.0
        torch.testing.assert_close(mean0, sched.step(v, t, x, eta=0.0).prev_sample, atol=1e-5, rtol=1e-5)
        mean, std = chain.stats(v, j, x, 1.0)
        prev = int(t) - 1000 // 20
        torch.testing.assert_close(std ** 2, sched._get_variance(int(t), prev), atol=1e-6, rtol=1e-5)
        # diffusers' own stochastic step with the same noise lands on mean + std * noise
        noise = torch.randn_like(x)
        x_next = sched.step(v, t, x, eta=1.0, variance_noise=noise).prev_sample
        torch.testing.assert_close(x_next, mean + std * noise, atol=1e-5, rtol=1e-4)
        direct = torch.distributions.Normal(mean.double(), std.double()).log_prob(x_next.double()).mean(dim=(1, 2, 3))
        torch.testing.assert_close(policy.step_logprob(x_next, mean, std).double(), direct, atol=1e-4, rtol=1e-5)


def test_flow_matching_sde_step_is_euler_at_eta_0_and_gaussian_above():
    from diffusers import FlowMatchEulerDiscreteScheduler

    chain = policy.Chain(FlowMatchEulerDiscreteScheduler(shift=3.0), 10)
    torch.manual_seed(1)
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(10)
    for j in (0, 4, 9):
        mean0, std0 = chain.stats(v, j, x, 0.0)
        ref._step_index = j
        torch.testing.assert_close(mean0, ref.step(v, ref.timesteps[j], x).prev_sample, atol=1e-5, rtol=1e-5)
        mean, std = chain.stats(v, j, x, 0.7)
        s, s_next = chain.sigmas[j], chain.sigmas[j + 1]
        sd = 0.7 * math.sqrt(s / (1 - (chain.sigmas[1] if s >= 1 else s)))
        assert float(std) == pytest.approx(sd * math.sqrt(s - s_next), rel=1e-5)
        x_next = mean + std * torch.randn_like(x)
        direct = torch.distributions.Normal(mean.double(), std.double()).log_prob(x_next.double()).mean(dim=(1, 2, 3))
        torch.testing.assert_close(policy.step_logprob(x_next, mean, std).double(), direct, atol=1e-4, rtol=1e-5)


def test_clipped_objective_gradient_is_zero_outside_the_clip_range():
    clip = 0.1
    old = torch.zeros(6)
    # ratios e^logp: inside (1.05, 0.95), above (1.3), below (0.7)
    logp = torch.log(torch.tensor([1.05, 0.95, 1.3, 1.3, 0.7, 0.7])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    loss, ratio = policy.clipped_objective(logp, old, adv, clip)
    loss.backward()
    g = logp.grad
    # the clip is active where the ratio left the range in the advantage's direction: no gradient there
    assert g[2] == 0 and g[5] == 0
    # inside the range, and where leaving it made the objective worse (PPO's pessimistic bound), it pulls
    assert g[0] < 0 and g[1] > 0 and g[3] > 0 and g[4] < 0
    torch.testing.assert_close(g[[0, 1, 3, 4]].abs(), ratio.detach()[[0, 1, 3, 4]] / 6)


@pytest.mark.parametrize("variant", [dict(lora_rank=4), dict(lora_rank=0, train_text_encoder=True)])
def test_kl_to_the_reference_is_zero_at_step_0(tmp_path, tiny_model, variant):
    from autofeedback import training

    cfg = _cfg(tmp_path / "run", tiny_model, guidance=3.0, **variant)
    s = training.setup(cfg, need_reference=True)
    chain = policy.Chain(s.pipe.scheduler, cfg.sample_steps)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16)
    mean, std, ref = train_grpo.step_terms(s, cfg, chain, x, 1, ["two red circles on a blue background"] * 2, True)
    assert float(policy.kl_to_reference(mean, ref, std).detach().abs().max()) == 0.0
    with torch.no_grad():  # the measure is not trivially 0: move the trainable weights
        for p in s.params:
            p.add_(0.01)
    mean, std, ref = train_grpo.step_terms(s, cfg, chain, x, 1, ["two red circles on a blue background"] * 2, True)
    assert float(policy.kl_to_reference(mean, ref, std).detach().min()) > 0


# ------------------------------------------------------------------------------------------------ the stage
def _rows(run_dir, table):
    return tables.read(tables.table_path(run_dir, table), table).to_pylist()


def test_epochs_write_samples_and_rewards_as_the_judge_stage_would_and_resume(tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    cfg = _cfg(run_dir, tiny_model, epochs=2, reward=["shapes", "shapes:graded=0.5"], gold="shapes", gold_limit=3)
    s = train_grpo.run(cfg)
    assert s["epochs"] == 2 and s["lora"] and s["parameters"]["changed_params"] == s["parameters"]["trainable_params"]
    images = _rows(run_dir, "images")
    assert len(images) == 2 * 2 * 3 and {r["sampler"] for r in images} == {"DDIM eta=1"}
    assert {r["model"] for r in images} == {f"{tiny_model}+grpo:grpo/epoch-{e}" for e in (0, 1)}
    judg = _rows(run_dir, "judgments")
    assert sorted(r["judge"] for r in judg) == sorted(["shapes", "shapes:graded"] * 12)
    assert all(r["status"] == "ok" for r in judg)
    # the rows are the judge stage's own: judging the run with the checker again asks nothing
    again = judge_stage.run(JudgeConfig(run_dir=run_dir, judge="shapes"))
    assert again["requests"] == 0 and again["already_done"] == 12
    curves = [json.loads(line) for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [c["epoch"] for c in curves] == [0, 1, 2]  # epoch 2: the gold after the last epoch
    first = curves[0]
    assert first["kl_start"] == 0.0  # the policy is its reference before the first update
    assert first["rewarded/shapes"] == 6 and first["rewarded/shapes:graded"] == 6
    assert {"gold_aligned", "gold_score", "gold_train_aligned", "clipfrac", "kl", "sample_s", "train_s"} <= set(first)
    assert (run_dir / "grpo" / "report.png").stat().st_size > 0
    assert json.loads((run_dir / "grpo" / "train.json").read_text())["epochs_done"] == 2
    # a rerun does nothing; one more epoch extends the run and keeps the earlier samples' IDs
    assert train_grpo.run(cfg)["epochs"] == 2 and len(_rows(run_dir, "images")) == 12
    s3 = train_grpo.run(cfg.model_copy(update={"epochs": 3}))
    assert s3["epochs"] == 3 and len(_rows(run_dir, "images")) == 18
    assert {r["image_id"] for r in images} <= {r["image_id"] for r in _rows(run_dir, "images")}


def test_a_reward_server_answering_429_then_200_yields_one_reward_per_sample(tmp_path, tiny_model, server):
    server.inject("429", times=3)
    run_dir = tmp_path / "run"
    s = train_grpo.run(_cfg(run_dir, tiny_model, reward=[CHECKER], base_url=server.base_url, max_retries=3,
                            concurrency=4, kl_weight=0.0))
    assert server.faults_served() == {"429": 3} and server.requests == 6 + 3 and server.answered_total == 6
    judg = _rows(run_dir, "judgments")
    images = {r["image_id"] for r in _rows(run_dir, "images")}
    assert len(judg) == 6 and all(r["status"] == "ok" and r["judge"] == CHECKER for r in judg)
    assert sorted(r["image_ids"][0] for r in judg) == sorted(images)  # one reward per sample
    assert s["curves"][0][f"rewarded/{CHECKER}"] == 6


def test_max_cost_stops_before_training_and_a_larger_budget_goes_on(tmp_path, tiny_model, server):
    run_dir = tmp_path / "run"
    cfg = _cfg(run_dir, tiny_model, reward=[CHECKER], base_url=server.base_url, price_input=1.0, price_output=1.0,
               max_cost=1e-9)
    s = train_grpo.run(cfg)
    assert s["epochs"] == 0 and s["stopped"] and server.requests == 0
    assert {r["status"] for r in _rows(run_dir, "judgments")} == {"budget"}
    s = train_grpo.run(cfg.model_copy(update={"max_cost": 1.0}))
    assert s["epochs"] == 1 and not s["stopped"] and server.answered_total == 6
    assert {r["status"] for r in _rows(run_dir, "judgments")} == {"ok"}


def test_several_rewards_a_vlm_in_vqa_mode_and_a_flow_matching_pipeline(tmp_path, tiny_model, server):
    from diffusers import FlowMatchEulerDiscreteScheduler

    model = tmp_path / "flow-model"
    shutil.copytree(tiny_model, model)
    FlowMatchEulerDiscreteScheduler(shift=1.0).save_pretrained(model / "scheduler")
    idx = json.loads((model / "model_index.json").read_text())
    idx["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (model / "model_index.json").write_text(json.dumps(idx))
    run_dir = tmp_path / "run"
    s = train_grpo.run(_cfg(run_dir, model, reward=["shapes=1", f"{CHECKER}=2"], reward_mode="vqa",
                            base_url=server.base_url, guidance=1.0, lora_rank=0))
    assert {r["sampler"] for r in _rows(run_dir, "images")} == {"FlowSDE eta=1"}
    modes = {(r["judge"], r["mode"]) for r in _rows(run_dir, "judgments")}
    assert modes == {("shapes", "pointwise"), (CHECKER, "vqa")}
    c = s["curves"][0]
    assert c[f"rewarded/{CHECKER}"] == 6 and 0 <= c[f"reward/{CHECKER}"] <= 1
    assert s["pipeline"] and server.answered_total == 6


def _cache_rows(path) -> int:
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_9_mid_epoch_then_rerun_repeats_no_paid_request(tmp_path, tiny_model):
    run_dir = tmp_path / "run"
    with CheckerServer(latency=0.05) as server:
        server.hold_after(7)  # answer 7 of epoch 0's 12 requests, hold the rest in flight
        args = [sys.executable, "-m", "autofeedback.cli", "train", "grpo", str(run_dir), "--model", str(tiny_model),
                "--prompts", "shapes", "--epochs", "1", "--prompts-per-epoch", "3", "--group-size", "4",
                "--sample-steps", "3", "--batch-size", "4", "--sample-batch", "4", "--device", "cpu",
                "--reward", CHECKER, "--base-url", server.base_url, "--concurrency", "4", "--no-progress"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        cache = run_dir / "cache" / "judge-replies.sqlite"
        deadline = time.time() + 600  # generous: a niced test on a loaded machine can wait minutes for the CPU
        while time.time() < deadline and _cache_rows(cache) < 7:
            time.sleep(0.05)
        assert _cache_rows(cache) == 7, "the run did not get 7 answers in time"
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        server.release()
        assert server.answered_total == 7 and _cache_rows(cache) == 7
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert server.repeats() == 0  # no answered request was sent again
        assert server.answered_total == 12  # 12 samples, each paid once
    images = _rows(run_dir, "images")
    judg = _rows(run_dir, "judgments")
    assert len(images) == 12 and len(judg) == 12 and all(r["status"] == "ok" for r in judg)
    assert {r["image_ids"][0] for r in judg} == {r["image_id"] for r in images}
    curves = [json.loads(line) for line in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [c[f"rewarded/{CHECKER}"] for c in curves] == [12]  # as many rewarded samples as without the kill
    stats = curves[0]["reward_stats"][CHECKER]
    # the killed run's 7 answers come back free: as judgment rows it wrote before the kill, or from the reply cache
    # (how many reached the table first depends on when the kill landed)
    assert stats["cached"] + stats["reused"] == 7 and stats["fresh"] == 12 - stats["reused"]


# ------------------------------------------------------------------------------------------------ the pipeline
GRPO_SMALL = ["--set", "train_grpo.epochs=1", "--set", "train_grpo.prompts_per_epoch=2", "--set",
              "train_grpo.group_size=2", "--set", "train_grpo.sample_steps=2", "--set", "train_grpo.eval_steps=2",
              "--set", "train_grpo.gold_limit=2", "--set", "generate.limit=3", "--set", "generate.steps=2",
              "--set", "generate.images_per_prompt=1"]


def test_the_grpo_pipeline_yaml_chains_grpo_generate_judge_eval():
    from autofeedback import run

    _pipe, run_dir, configs = run.load_pipeline(REPO / "pipelines" / "shapes-grpo.yaml")
    assert [n for n, _ in configs] == ["train_grpo", "generate", "generate", "judge", "eval"]
    grpo = configs[0][1]
    assert grpo.reward == {"shapes": 1.0} and grpo.gold == "shapes" and grpo.train_text_encoder
    assert configs[2][1].model == f"{run_dir}/grpo/pipeline" and configs[4][1].models == ["base", "grpo"]


def test_the_grpo_pipeline_small_runs_end_to_end(tmp_path):
    from .conftest import cli

    p = cli("run", "pipelines/shapes-grpo.yaml", "--run-dir", tmp_path / "r", *GRPO_SMALL)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((tmp_path / "r" / "report" / "metrics.json").read_text())
    ba = metrics["before_after"]
    assert ba["models"] == ["base", "grpo"] and ba["comparisons"][0]["alignment_diff"]["ci95"]


def test_two_processes_deal_the_groups_and_train_one_model(tmp_path, tiny_model):
    from .test_distributed import _launch, pytestmark

    if pytestmark.args[0]:
        pytest.skip(pytestmark.kwargs["reason"])
    run_dir = tmp_path / "run"
    p = _launch("train", "grpo", str(run_dir), "--model", str(tiny_model), "--prompts", "shapes", "--epochs", "1",
                "--prompts-per-epoch", "2", "--group-size", "2", "--sample-steps", "2", "--batch-size", "2",
                "--device", "cpu", "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    images = _rows(run_dir, "images")
    assert len(images) == 4 and len({r["prompt_id"] for r in images}) == 2
    assert {f.name.split("-")[2] for f in (run_dir / "images.parquet").glob("part-*.parquet")} == {"r0", "r1"}
    rec = json.loads((run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["samples"] == 4 and rec["rewarded/shapes"] == 4

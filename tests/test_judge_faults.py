"""Every fault of the matrix: the run completes, every row is present once with the right status,
retries are bounded. Plus kill -9, --max-cost, --batch, and no secret anywhere."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from autofeedback import judge as stage
from autofeedback import tables
from autofeedback.config import JudgeConfig
from autofeedback.judges.checker_server import CheckerServer

from .conftest import REPO, make_shapes_run

N = 24  # images in the shapes_run fixture


def _judge(run_dir, server, **kw):
    base = dict(run_dir=run_dir, judge="openai:shapes-checker", base_url=server.base_url, timeout=0.5,
                max_retries=2, concurrency=4)
    return stage.run(JudgeConfig(**{**base, **kw}))


def _rows(run_dir):
    rows = tables.read(tables.table_path(run_dir, "judgments"), "judgments").to_pylist()
    assert len({r["request_id"] for r in rows}) == len(rows)
    return rows


@pytest.mark.parametrize("fault", ["429", "500", "hang", "reset"])
def test_transient_http_faults_are_retried_by_the_sdk(shapes_run, server, fault):
    server.inject(fault, times=2)
    s = _judge(shapes_run, server)
    assert s["status"] == {"ok": N}
    assert server.requests == N + 2  # exactly the two faulted attempts were retried
    assert server.faults_served() == {fault: 2}


def test_persistent_429_gives_api_error_rows_then_a_rerun_finishes(shapes_run, server):
    server.fault_rate("429", 1.0)
    s = _judge(shapes_run, server, max_retries=1)
    assert s["status"] == {"api_error": N}
    assert server.requests == N * 2  # 1 try + 1 retry each, bounded
    rows = _rows(shapes_run)
    assert len(rows) == N and all("429" in r["error"] and r["label"] is None for r in rows)
    server.fault_rate("429", 0.0)
    s = _judge(shapes_run, server)
    assert s["status"] == {"ok": N}
    rows = _rows(shapes_run)
    assert len(rows) == N and all(r["status"] == "ok" for r in rows)  # the ok row supersedes the error


def test_one_malformed_answer_is_reasked_once(shapes_run, server):
    server.inject("malformed", times=1)
    s = _judge(shapes_run, server, concurrency=1)
    assert s["status"] == {"ok": N} and s["backend"]["reasked"] == 1
    assert server.requests == N + 1


def test_twice_malformed_is_a_parse_error_row_with_the_raw_text(shapes_run, server):
    server.inject("malformed", times=2)
    s = _judge(shapes_run, server, concurrency=1)
    assert s["status"] == {"ok": N - 1, "parse_error": 1}
    bad = next(r for r in _rows(shapes_run) if r["status"] == "parse_error")
    assert bad["label"] is None and bad["score"] is None  # never a default
    raw = json.loads(bad["raw_response"])
    assert len(raw) == 2 and "mostly fine" in raw[0]
    assert "no JSON object" in bad["error"]
    # a paid answer is not asked again
    n = server.requests
    assert _judge(shapes_run, server)["requests"] == 0 and server.requests == n


@pytest.mark.parametrize("fault,status", [("refusal", "refused"), ("truncated", "truncated")])
def test_refusals_and_truncations_are_recorded_as_such(shapes_run, server, fault, status):
    server.inject(fault, times=1)
    s = _judge(shapes_run, server, concurrency=1)
    assert s["status"] == {"ok": N - 1, status: 1}
    assert server.requests == N  # not re-asked: it would pay for the same outcome
    bad = next(r for r in _rows(shapes_run) if r["status"] == status)
    assert bad["label"] is None and bad["raw_response"] and bad["error"]


def test_a_flaky_server_mixture(tmp_path):
    run_dir = make_shapes_run(tmp_path / "run", n_prompts=20, per_prompt=3, seed=3)
    with CheckerServer(hang_s=1.0, seed=7) as server:
        for fault, p in {"429": 0.1, "500": 0.05, "reset": 0.05, "malformed": 0.05}.items():
            server.fault_rate(fault, p)
        s = _judge(run_dir, server, concurrency=8, max_retries=3)
    rows = _rows(run_dir)
    assert len(rows) == 60 and sum(s["status"].values()) == 60
    assert set(s["status"]) <= {"ok", "api_error", "parse_error"}
    assert s["status"]["ok"] >= 50


def test_max_cost_stops_cleanly_and_a_bigger_budget_finishes(shapes_run, server):
    # ~430 input tokens a request at $1/M in + max 400 out at $1/M -> ~$0.0008 reserved each
    s = _judge(shapes_run, server, max_cost=0.004, price_input=1.0, price_output=1.0, concurrency=1)
    assert s["status"]["budget"] > 0 and s["status"]["ok"] > 0
    assert sum(s["status"].values()) == N  # unsent rows are marked, not lost
    assert s["cost_usd"] <= 0.004
    sent = server.requests
    assert sent == s["status"]["ok"]
    s2 = _judge(shapes_run, server, max_cost=1.0, price_input=1.0, price_output=1.0)
    assert s2["status"] == {"ok": N - sent} and server.requests == N
    assert all(r["status"] == "ok" for r in _rows(shapes_run))


def test_max_cost_without_prices_is_a_clear_error(shapes_run, server):
    from autofeedback.errors import InputError

    with pytest.raises(InputError, match="--max-cost needs prices"):
        _judge(shapes_run, server, max_cost=1.0)


def test_batch_api_submit_then_collect(shapes_run, server):
    s = _judge(shapes_run, server, batch=True)
    assert s["backend"]["batch"]["submitted"] == N and s["status"] == {}
    state = list((shapes_run / "batches").glob("*.json"))
    assert len(state) == 1 and json.loads(state[0].read_text())["state"] == "submitted"
    s = _judge(shapes_run, server, batch=True)  # first poll: in progress, nothing submitted twice
    assert s["backend"]["batch"]["pending"] == N and s["backend"]["batch"]["submitted"] == 0
    s = _judge(shapes_run, server, batch=True)  # second poll: completed -> collected
    assert s["status"] == {"ok": N} and s["backend"]["batch"]["collected"] == N
    rows = _rows(shapes_run)
    assert len(rows) == N and all(json.loads(r["details"])["batch_id"] for r in rows)
    assert server.repeats() == 0
    assert _judge(shapes_run, server, batch=True)["requests"] == 0


def test_kill_9_during_judge_then_rerun_repeats_nothing(tmp_path):
    run_dir = make_shapes_run(tmp_path / "run", n_prompts=20, per_prompt=3, seed=1)
    with CheckerServer(latency=0.02) as server:
        server.hold_after(25)  # answer 25 requests, then hold the rest in flight
        args = [sys.executable, "-m", "autofeedback.cli", "judge", str(run_dir), "--judge", "openai:shapes-checker",
                "--base-url", server.base_url, "--concurrency", "8"]
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache = run_dir / "cache" / "judge-replies.sqlite"
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the 25 answers are in the client's cache
            if cache.exists():
                try:
                    with sqlite3.connect(cache) as db:
                        if db.execute("SELECT COUNT(*) FROM replies").fetchone()[0] >= 25:
                            break
                except sqlite3.OperationalError:
                    pass
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # 8 requests are in flight, unanswered
        proc.wait()
        server.release()
        assert server.answered_total == 25
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "answers from cache 25" in done.stdout
        assert server.repeats() == 0  # no answered request was ever sent again
        assert server.answered_total == 60
    rows = _rows(run_dir)
    assert len(rows) == 60 and all(r["status"] == "ok" for r in rows)


def test_no_api_key_in_any_table_log_or_cache(tmp_path):
    secret = "sk-test-DO-NOT-LEAK-4f8a1c9e7b2d"
    run_dir = make_shapes_run(tmp_path / "run", n_prompts=3, per_prompt=2)
    env = {**os.environ, "OPENAI_API_KEY": secret}
    with CheckerServer() as server:
        server.inject("429", 1)
        server.inject("malformed", 2)
        out = []
        for mode in ("pointwise", "pairwise"):
            p = subprocess.run([sys.executable, "-m", "autofeedback.cli", "judge", str(run_dir), "--judge",
                                "openai:shapes-checker", "--base-url", server.base_url, "--mode", mode],
                               cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
            assert p.returncode == 0, p.stderr
            out += [p.stdout, p.stderr]
        p = subprocess.run([sys.executable, "-m", "autofeedback.cli", "judge", str(run_dir), "--judge",
                            "openai:x", "--batch", "--base-url", server.base_url],
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
        out += [p.stdout, p.stderr]
    assert secret not in "".join(out)
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    assert any(f.suffix == ".sqlite" for f in files) and any(f.suffix == ".parquet" for f in files)
    for f in files:
        assert secret.encode() not in f.read_bytes(), f


def test_a_remote_server_without_a_key_is_a_clear_error(shapes_run, monkeypatch):
    from autofeedback.errors import InputError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(InputError, match="set the API key in the environment variable OPENAI_API_KEY"):
        stage.run(JudgeConfig(run_dir=shapes_run, judge="openai:gpt-4o"))

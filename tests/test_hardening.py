"""Issue #19: no secret in a table, no file read through the label page, no request paid twice.

One test per item of the issue (item 3 has three). The label page tests talk to the real server over HTTP
(urllib, http.client, a raw socket); the judge tests use the loopback checker server and the real openai client.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from autofeedback import judge as stage
from autofeedback import label_server, tables
from autofeedback.config import JudgeConfig, LabelConfig
from autofeedback.errors import InputError
from autofeedback.judges.checker_server import CheckerServer

from .conftest import REPO, cli, make_shapes_run

N = 24  # images in the shapes_run fixture
TOKEN = "test-token"
SECRET = "sk-test-DO-NOT-LEAK-4f8a1c9e7b2d"


def _judge(run_dir, server, **kw):
    base = dict(run_dir=run_dir, judge="openai:shapes-checker", base_url=server.base_url, timeout=2.0,
                max_retries=2, concurrency=4)
    return stage.run(JudgeConfig(**{**base, **kw}))


def _judge_cli(run_dir, server, *extra):
    return [sys.executable, "-m", "autofeedback.cli", "judge", str(run_dir), "--judge", "openai:shapes-checker",
            "--base-url", server.base_url, *extra]


def _one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _label_server(run_dir, **kw) -> label_server.LabelServer:
    return label_server.LabelServer(LabelConfig(run_dir=run_dir, port=0, token=TOKEN, **kw)).start()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# ============================================================================== 1. no file outside the run
def test_label_page_serves_no_file_outside_the_run_directory(tmp_path, capfd):
    run_dir = make_shapes_run(tmp_path / "run", n_prompts=2, per_prompt=2)
    outside = tmp_path / "private.txt"
    outside.write_text("the contents of a private file")
    inside = run_dir / "pics" / "ok.png"
    inside.parent.mkdir()
    inside.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 32)
    (run_dir / "pics" / "link.png").symlink_to(outside)
    paths = {"abs": str(outside), "dotdot": "../private.txt", "link": "pics/link.png", "etc": "/etc/passwd",
             "inside": "pics/ok.png"}
    first = tables.read(tables.table_path(run_dir, "images"), "images").to_pylist()[0]
    tables.append(tables.table_path(run_dir, "images"),
                  [{**first, "image_id": f"img-{name}", "image": {"bytes": None, "path": p}}
                   for name, p in paths.items()], "images")
    with _label_server(run_dir) as s:
        got = {name: _get(f"{s.url}img/img-{name}") for name in paths}
    assert got["inside"] == (200, inside.read_bytes())
    for name in ("abs", "dotdot", "link", "etc"):
        status, body = got[name]
        assert status == 404 and b"private file" not in body and b"root:" not in body, name
    err = capfd.readouterr().err
    assert err.count("warning: ") == 4 and "outside" in err and "--image-root" in err
    with _label_server(run_dir, image_root=tmp_path) as s:  # an explicit root serves what is under it
        assert _get(f"{s.url}img/img-abs") == (200, outside.read_bytes())
        assert _get(f"{s.url}img/img-etc")[0] == 404


# ============================================================================== 2. no secret anywhere
def test_no_secret_in_any_file_of_the_run_or_the_report(tmp_path):
    run_dir = make_shapes_run(tmp_path / "run", n_prompts=3, per_prompt=2)
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "PYTHONUNBUFFERED": "1"}
    out = []
    with CheckerServer() as server:
        server.inject("401", 2)  # the server's error message repeats the Authorization header
        server.inject("bad_body", 1)
        for mode in ("pointwise", "pairwise"):
            p = subprocess.run(_judge_cli(run_dir, server, "--mode", mode), cwd=REPO, capture_output=True,
                               text=True, env=env, timeout=120)
            assert p.returncode == 0, p.stderr
            out += [p.stdout, p.stderr]
        p = subprocess.run(_judge_cli(run_dir, server, "--mode", "pointwise", "--batch"), cwd=REPO,
                           capture_output=True, text=True, env=env, timeout=120)
        out += [p.stdout, p.stderr]
    p = subprocess.run([sys.executable, "-m", "autofeedback.cli", "eval", str(run_dir)], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    out += [p.stdout, p.stderr]
    rows = tables.read(tables.table_path(run_dir, "judgments"), "judgments").to_pylist()
    assert sum("Incorrect API key provided: Bearer " in (r["error"] or "") for r in rows) == 2  # the key is not
    assert SECRET not in "".join(out)
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    assert {".sqlite", ".parquet", ".json", ".html"} <= {f.suffix for f in files}
    for f in files:
        assert SECRET.encode() not in f.read_bytes(), f
        if f.suffix == ".parquet":  # compressed: look at the values too
            import pyarrow.parquet as pq

            assert SECRET not in str(pq.read_table(f).to_pylist()), f


# ============================================================================== 3. Host, Origin, timeouts
def _request(s, method: str, path: str, headers: dict, body: bytes | None = None) -> tuple[int, bytes]:
    host, port = s.httpd.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def test_label_page_rejects_a_foreign_host_and_a_foreign_origin(tmp_path):
    run_dir = make_shapes_run(tmp_path / "run", n_prompts=2, per_prompt=2)
    with _label_server(run_dir) as s:
        port = s.httpd.server_address[1]
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            status, body = _request(s, "GET", "/", {"Host": host})  # DNS rebinding: the page, with its token
            assert status == 403 and TOKEN.encode() not in body, host
            assert _request(s, "GET", "/api/progress", {"Host": host})[0] == 403
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            status, body = _request(s, "GET", "/", {"Host": host})
            assert status == 200 and TOKEN.encode() in body, host
        item = json.loads(_request(s, "GET", "/api/next?annotator=eve", {"Host": f"127.0.0.1:{port}"})[1])["item"]
        answer = json.dumps({"token": TOKEN, "annotator": "eve", "item_id": item["item_id"], "label": "good"})
        status, _ = _request(s, "POST", "/api/label", {"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example",
                                                       "Content-Type": "text/plain"}, answer.encode())
        assert status == 403
        assert not tables.exists(tables.table_path(run_dir, "human_labels"))  # nothing written
        same_origin = {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}",
                       "Content-Type": "application/json"}
        status, _ = _request(s, "POST", "/api/label", same_origin, answer.encode())
        assert status == 200  # the page itself (same origin) still labels
    assert len(label_server.live_labels(run_dir)) == 1


def test_label_page_times_out_a_silent_connection(tmp_path, monkeypatch):
    monkeypatch.setattr(label_server, "READ_TIMEOUT_S", 0.5, raising=False)
    run_dir = make_shapes_run(tmp_path / "run", n_prompts=2, per_prompt=2)
    with _label_server(run_dir) as s:
        with socket.create_connection(s.httpd.server_address[:2], timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # ... and nothing more
            t0 = time.monotonic()
            try:
                closed = sock.recv(1024) == b""
            except socket.timeout:
                closed = False
            assert closed and time.monotonic() - t0 < 3  # the server hung up; it did not wait forever


def test_label_page_client_that_disconnects_is_not_a_traceback(tmp_path, capfd):
    run_dir = make_shapes_run(tmp_path / "run", n_prompts=2, per_prompt=2)
    with _label_server(run_dir) as s:
        port = s.httpd.server_address[1]
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(f"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: 1000\r\n\r\n{{\"token\":".encode())
            time.sleep(0.1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST: gone mid-body
        time.sleep(0.5)
        assert _get(f"{s.url}api/progress")[0] == 200  # still serving
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err


# ============================================================================== 4. a bad body is paid once
def test_a_reply_that_is_not_json_is_paid_once_and_reparsed_from_the_cache(shapes_run, server):
    server.inject("bad_body", times=1)
    s = _judge(shapes_run, server, concurrency=1)
    assert s["status"] == {"ok": N - 1, "parse_error": 1} and server.requests == N
    bad = next(r for r in tables.read(tables.table_path(shapes_run, "judgments"), "judgments").to_pylist()
               if r["status"] != "ok")
    assert "not JSON" in bad["error"] and "chatcmpl-broken" in bad["raw_response"] and bad["label"] is None
    assert _judge(shapes_run, server)["requests"] == 0  # final: not asked again
    # the row is decided from the cached body: without the table, a re-run re-parses it and asks nothing
    import shutil

    shutil.rmtree(tables.table_path(shapes_run, "judgments"))
    s = _judge(shapes_run, server)
    assert s["status"] == {"ok": N - 1, "parse_error": 1} and s["backend"]["cached"] == N
    assert server.requests == N and server.repeats() == 0


# ============================================================================== 5. an image that doesn't decode
def test_an_image_that_does_not_decode_is_an_error_row_and_the_rest_runs(shapes_run, server):
    path = tables.table_path(shapes_run, "images")
    first = tables.read(path, "images").to_pylist()[0]
    tables.append(path, [{**first, "image_id": "broken-image", "image": {"bytes": b"not a picture", "path": None}}],
                  "images")
    s = _judge(shapes_run, server)
    assert s["status"] == {"ok": N, "error": 1} and server.requests == N
    bad = next(r for r in tables.read(tables.table_path(shapes_run, "judgments"), "judgments").to_pylist()
               if r["status"] == "error")
    assert "broken-image" in bad["error"] and "does not decode" in bad["error"]


# ============================================================================== 6. a corrupt reply cache
def test_a_corrupt_reply_cache_is_a_one_line_error(shapes_run, server):
    cache = shapes_run / "cache" / "judge-replies.sqlite"
    cache.parent.mkdir()
    cache.write_bytes(b"this is not a database, it was overwritten " * 100)
    line = _one_error_line(subprocess.run(_judge_cli(shapes_run, server), cwd=REPO, capture_output=True, text=True,
                                          timeout=120))
    assert str(cache) in line and "move it aside" in line
    assert server.requests == 0


# ============================================================================== 7. one-line errors
def test_a_bad_fault_rate_and_an_unreachable_hub_are_one_line_errors(tmp_path, monkeypatch):
    line = _one_error_line(cli("serve-checker", "--fault-rate", "429=abc"))
    assert "429=abc" in line
    import huggingface_hub.constants

    from autofeedback import pairs, publish
    from autofeedback.config import PairsConfig, PublishConfig

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    run_dir = make_shapes_run(tmp_path / "run", n_prompts=2, per_prompt=2)
    stage.run(JudgeConfig(run_dir=run_dir, judge="shapes"))
    pairs.run(PairsConfig(run_dir=run_dir))
    with socket.socket() as free:  # a port nobody listens on: the connection is refused
        free.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{free.getsockname()[1]}"
    with pytest.raises(InputError, match="could not reach the Hub"):
        publish.run(PublishConfig(run_dir=run_dir, repo_id="me/x", endpoint=endpoint))


# ============================================================================== 8. the lock message
def test_the_lock_message_names_no_flag_the_command_lacks(shapes_run):
    stage.run(JudgeConfig(run_dir=shapes_run, judge="shapes"))
    with tables.run_lock(shapes_run):  # another writer holds the run
        judge_line = _one_error_line(cli("judge", shapes_run))
        eval_line = _one_error_line(cli("eval", shapes_run))
    assert "is being written by" in judge_line and "--wait" not in judge_line
    assert "--wait" in eval_line  # eval has the flag: its message says so
    assert cli("eval", shapes_run, "--wait").returncode == 0


# ============================================================================== 9. --limit summary
def test_limit_summary_counts_only_what_is_done(shapes_run, server):
    s = _judge(shapes_run, server, limit=2)
    assert (s["requests"], s["already_done"]) == (2, 0)
    assert "2 requests this run, 0 already done, 22 left" in stage.format_summary(s)
    s = _judge(shapes_run, server, limit=2)
    assert (s["requests"], s["already_done"]) == (2, 2)


# ============================================================================== 10. one row per key for pandas
def test_pandas_reads_each_request_once_after_a_retry(shapes_run, server):
    import pandas as pd

    server.inject("500", times=1)
    assert _judge(shapes_run, server, max_retries=0, concurrency=1)["status"] == {"ok": N - 1, "api_error": 1}
    assert _judge(shapes_run, server)["status"] == {"ok": 1}
    df = pd.read_parquet(tables.table_path(shapes_run, "judgments"))  # what the README tells users to do
    assert len(df) == N and df["request_id"].is_unique and (df["status"] == "ok").all()


# ============================================================================== 11. the budget is spent
def test_max_cost_is_spent_to_within_one_request(shapes_run, server):
    limit = 0.002
    s = _judge(shapes_run, server, max_cost=limit, price_input=1.0, price_output=1.0, concurrency=4)
    sent = s["status"]["ok"]
    assert server.requests == sent and s["status"]["budget"] == N - sent
    # one request reserves its worst case: the input estimate + max_tokens (400) of output at $1/M
    cfg = JudgeConfig(run_dir=shapes_run, judge="openai:shapes-checker", base_url=server.base_url, price_input=1.0,
                      price_output=1.0)
    backend = stage.judges.get(cfg.judge, cfg=cfg, run_dir=shapes_run)
    images, meta = stage.load_inputs(shapes_run)
    worst = max(backend._cost(backend._messages(u)[1], cfg.max_tokens)
                for u in stage.build_units(cfg, images, meta, backend))
    assert limit - worst <= s["cost_usd"] <= limit, (s["cost_usd"], worst)


# ============================================================================== 12. Ctrl-C drains
def test_ctrl_c_drains_the_requests_in_flight_and_the_rerun_repeats_none(shapes_run):
    with CheckerServer() as server:
        server.hold_after(8)  # answer 8 requests, then hold the next ones in flight
        proc = subprocess.Popen(_judge_cli(shapes_run, server, "--concurrency", "4"), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 60
        while time.time() < deadline and server.requests < 12:
            time.sleep(0.05)
        time.sleep(0.3)
        assert server.answered_total == 8 and server.requests == 12  # 4 in flight
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        server.release()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "waiting for 4 requests in flight" in err and "Traceback" not in err, err
        with sqlite3.connect(shapes_run / "cache" / "judge-replies.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM replies").fetchone()[0] == 12  # the drained answers are kept
        done = subprocess.run(_judge_cli(shapes_run, server), cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert server.requests == N and server.repeats() == 0  # no request was sent twice
    rows = tables.read(tables.table_path(shapes_run, "judgments"), "judgments").to_pylist()
    assert len(rows) == N and all(r["status"] == "ok" for r in rows)

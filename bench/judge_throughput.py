"""Benchmark: `autofeedback judge` throughput against the loopback OpenAI-protocol checker server.

2,000 pointwise requests at concurrency 64 against a server that adds 200 ms to every answer: the
bound is 64 / 0.2 s = 320 requests/s. The server runs in its own process, so the client CPU
(getrusage of this process) is the judge's own cost per request.

Rows:
  naive baseline   a plain AsyncOpenAI client (SDK defaults), one asyncio.gather over all requests
                   with the same 64-request bound, no cache, no parsing, no table writes
  autofeedback     the judge stage: write-ahead cache, rate/budget machinery, parsing, Parquet shards
  autofeedback rerun  the same command again: everything comes from the cache (0 requests)

    python bench/judge_throughput.py [--requests 2000 --concurrency 64 --latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, latency: float) -> subprocess.Popen:
    code = (f"from autofeedback.judges.checker_server import serve; "
            f"serve(port={port}, latency={latency})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def make_run(run_dir: Path, n: int) -> None:
    from autofeedback.shapes.demo import make_rendered_run

    per_prompt = max(1, -(-n // 360))
    while n % per_prompt:
        per_prompt += 1
    make_rendered_run(run_dir, n_prompts=n // per_prompt, per_prompt=per_prompt, seed=0)  # exactly n images


async def naive(base_url: str, run_dir: Path, n: int, concurrency: int) -> tuple[float, float]:
    import openai

    from autofeedback import tables
    from autofeedback.judges.vlm import Template, data_url

    tpl = Template.load(None, "pointwise")
    images = tables.read(run_dir / "images.parquet", "images").to_pylist()[:n]
    client = openai.AsyncOpenAI(api_key="x", base_url=base_url)
    sem = asyncio.Semaphore(concurrency)

    async def one(img):
        url, _, _ = data_url(img["image"]["bytes"])
        async with sem:
            r = await client.chat.completions.create(model="shapes-checker", messages=[
                {"role": "system", "content": tpl.system},
                {"role": "user", "content": [{"type": "text", "text": tpl.render({"prompt": img["prompt"], "images": [1]})},
                                             {"type": "image_url", "image_url": {"url": url}}]}])
            return r.choices[0].message.content

    c0, t0 = cpu_s(), time.perf_counter()
    out = await asyncio.gather(*(one(im) for im in images))
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    await client.close()
    assert len(out) == n
    return n / wall, 1000 * cpu / n


def ours(base_url: str, run_dir: Path, n: int, concurrency: int) -> tuple[float, float, dict]:
    from autofeedback import judge
    from autofeedback.config import JudgeConfig

    cfg = JudgeConfig(run_dir=run_dir, judge="openai:shapes-checker", base_url=base_url, concurrency=concurrency,
                      limit=n, timeout=30)
    c0, t0 = cpu_s(), time.perf_counter()
    s = judge.run(cfg)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    return (s["requests"] or n) / wall, 1000 * cpu / max(s["requests"], 1), s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args()
    bound = args.concurrency / args.latency
    port = free_port()
    server = start_server(port, args.latency)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            make_run(run_dir, args.requests)
            asyncio.run(naive(base_url, run_dir, 64, args.concurrency))  # warm-up (imports, connections)
            n_rps, n_cpu = asyncio.run(naive(base_url, run_dir, args.requests, args.concurrency))
            o_rps, o_cpu, s = ours(base_url, run_dir, args.requests, args.concurrency)
            assert s["status"] == {"ok": args.requests}, s["status"]
            t0 = time.perf_counter()
            again = ours(base_url, run_dir, args.requests, args.concurrency)[2]
            rerun_s = time.perf_counter() - t0
            assert again["requests"] == 0
    finally:
        server.kill()
    from machine import describe  # bench/machine.py

    print(f"machine: {describe(torch_info=False)}; server in a separate process on 127.0.0.1")
    print(f"{args.requests} pointwise requests, concurrency {args.concurrency}, +{args.latency * 1000:.0f} ms "
          f"latency: bound {bound:.0f} req/s\n")
    print("| client | req/s | % of bound | client CPU ms/request |")
    print("|---|---:|---:|---:|")
    print(f"| naive: plain AsyncOpenAI + one asyncio.gather (no cache, no parsing, no writes) | {n_rps:.0f} | "
          f"{100 * n_rps / bound:.0f}% | {n_cpu:.2f} |")
    print(f"| autofeedback judge (cache, parsing, Parquet rows) | {o_rps:.0f} | {100 * o_rps / bound:.0f}% | "
          f"{o_cpu:.2f} |")
    print(f"| autofeedback judge, re-run (all from cache, 0 requests) | - | - | {rerun_s:.2f} s total |")


if __name__ == "__main__":
    main()

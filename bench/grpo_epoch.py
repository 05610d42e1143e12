"""Benchmark: one epoch of `autofeedback train grpo`, its time split and the reward server's concurrency.

    python bench/grpo_epoch.py                      # shipped shapes-countnoise, CPU: one epoch with the local checker
                                                    # reward, then with openai:shapes-checker over HTTP (a loopback
                                                    # checker server adding --latency s per answer, in this process;
                                                    # the trainer is a subprocess)
    python bench/grpo_epoch.py --resume-check       # the fault/resume check: the server at --latency 0.2 with 5% 429s
                                                    # and 5% 500s; the run is killed with -9 mid-epoch and rerun; the
                                                    # requests are counted at the server (and an uninterrupted run)
    python bench/grpo_epoch.py --sd15 --device cuda # SD-1.5 UNet architecture at random weights, 512 px: sampling
                                                    # time per sample, training time per optimizer step and peak GPU
                                                    # memory, LoRA r=8 vs full fine-tune (each in its own process)

Time split (from RUN/grpo/metrics.jsonl): sampling (drawing the chains, decoding, writing the images; the reward
requests go out meanwhile), reward wait (after the last batch, until the last answer), training. Concurrency: the
requests in flight over the reward window, from each judgments row's answer time and latency -- mean and peak --
against the bound (--concurrency requests in flight).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
CHECKER = "openai:shapes-checker"


def grpo_args(run_dir, model, a, *extra) -> list[str]:
    return [sys.executable, "-m", "autofeedback.cli", "train", "grpo", str(run_dir), "--model", str(model),
            "--prompts", "prompts/shapes.jsonl", "--epochs", str(a.epochs), "--prompts-per-epoch", str(a.prompts),
            "--group-size", str(a.group), "--sample-steps", str(a.steps), "--guidance", "1.5", "--lora-rank", "0",
            "--train-text-encoder", "--batch-size", "16", "--device", "cpu", "--no-progress", *map(str, extra)]


def in_flight(run_dir: Path, judge: str) -> dict:
    """Mean and peak requests in flight over the reward window, from the judgments rows (answer time - latency)."""
    from autofeedback import tables

    rows = [r for r in tables.read(run_dir / "judgments.parquet", "judgments").to_pylist()
            if r["judge"] == judge and r["latency_s"]]
    if not rows:
        return {}
    ends = [r["created_at"].timestamp() for r in rows]
    spans = [(e - r["latency_s"], e) for e, r in zip(ends, rows)]
    t0, t1 = min(s for s, _ in spans), max(e for _, e in spans)
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return {"mean": sum(e - s for s, e in spans) / (t1 - t0), "peak": peak, "window_s": t1 - t0}


def epoch_bench(a) -> None:
    from autofeedback.judges.checker_server import CheckerServer

    rows = []
    with tempfile.TemporaryDirectory() as tmp, CheckerServer(latency=a.latency) as server:
        for name, extra in (("shapes (local checker)", ["--reward", "shapes"]),
                            (f"{CHECKER} over HTTP", ["--reward", CHECKER, "--base-url", server.base_url,
                                                      "--concurrency", a.concurrency])):
            run_dir = Path(tmp) / name.split()[0].replace(":", "-")
            subprocess.run(grpo_args(run_dir, a.model, a, "--reward-value", "label", *extra), cwd=REPO, check=True,
                           capture_output=True, text=True)
            rec = json.loads((run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()[0])
            judge = extra[1]
            rows.append((name, rec, in_flight(run_dir, judge) if judge == CHECKER else {}))
    from machine import describe

    print(f"machine: {describe(False)}; model {a.model}; {a.prompts} prompts x {a.group} samples, {a.steps} steps, "
          f"full fine-tune + text encoder; server latency {a.latency} s, --concurrency {a.concurrency}\n")
    print("| reward | sampling (s) | reward wait (s) | training (s) | epoch (s) | in flight: mean / peak (bound) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rec, fl in rows:
        conc = f"{fl['mean']:.1f} / {fl['peak']} ({a.concurrency})" if fl else "-"
        print(f"| {name} | {rec['sample_s']:.1f} | {rec['reward_wait_s']:.1f} | {rec['train_s']:.1f} | "
              f"{rec['seconds']:.1f} | {conc} |")


def _cache_rows(path: Path) -> int:
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    except sqlite3.Error:
        return 0


def _rewarded(run_dir: Path) -> list[int]:
    recs = [json.loads(x) for x in (run_dir / "grpo" / "metrics.jsonl").read_text().splitlines()]
    return [r[f"rewarded/{CHECKER}"] for r in recs if f"rewarded/{CHECKER}" in r]


def resume_check(a) -> None:
    from autofeedback import tables
    from autofeedback.judges.checker_server import CheckerServer

    def counts(server):
        return {"received": server.requests, "answered": server.answered_total, "faults": server.faults_served()}

    with tempfile.TemporaryDirectory() as tmp, CheckerServer(latency=a.latency, seed=1) as server:
        for fault in ("429", "500"):
            server.fault_rate(fault, 0.05)
        extra = ["--reward", CHECKER, "--base-url", server.base_url, "--concurrency", a.concurrency]
        # 1. uninterrupted
        ref = Path(tmp) / "uninterrupted"
        subprocess.run(grpo_args(ref, a.model, a, *extra), cwd=REPO, check=True, capture_output=True)
        plain = counts(server)
        # 2. killed with -9 once --kill-at answers are cached (the rest held in flight), then rerun
        server.state.requests = server.state.answered_total = server.state.admitted = 0
        server.state.answered.clear()
        server.state.faults_served.clear()
        run_dir = Path(tmp) / "killed"
        server.hold_after(a.kill_at)
        t0 = time.time()
        proc = subprocess.Popen(grpo_args(run_dir, a.model, a, *extra), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while _cache_rows(run_dir / "cache" / "judge-replies.sqlite") < a.kill_at and time.time() - t0 < 1800:
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        first = counts(server)
        server.state.hold_after = None
        server.release()
        subprocess.run(grpo_args(run_dir, a.model, a, *extra), cwd=REPO, check=True, capture_output=True)
        total = counts(server)
        repeats = server.repeats()
        n_ref, n_run = _rewarded(ref), _rewarded(run_dir)
        judg = tables.read(run_dir / "judgments.parquet", "judgments").to_pylist()
    print(f"server latency {a.latency} s, faults 429=0.05 500=0.05, {a.epochs} epochs x {a.prompts * a.group} samples, "
          f"killed after {a.kill_at} answers\n")
    print("| run | requests received | answered (paid) | faults served |")
    print("|---|---:|---:|---|")
    print(f"| uninterrupted | {plain['received']} | {plain['answered']} | {plain['faults']} |")
    print(f"| killed run (until kill -9) | {first['received']} | {first['answered']} | {first['faults']} |")
    print(f"| its rerun | {total['received'] - first['received']} | {total['answered'] - first['answered']} | "
          f"{ {k: v - first['faults'].get(k, 0) for k, v in total['faults'].items()} } |")
    print(f"\nanswered more than once (repeated paid requests): {repeats}; rewarded samples per epoch: uninterrupted "
          f"{n_ref}, killed + rerun {n_run}; judgments rows {len(judg)} ({sum(r['status'] == 'ok' for r in judg)} ok)")


def sd15_child(a) -> None:
    import torch

    from autofeedback import train_grpo
    from autofeedback.config import TrainGRPOConfig

    lora = 8 if a.variant == "lora" else 0
    cfg = TrainGRPOConfig(run_dir=a.run_dir, model=a.model, out=f"grpo-{a.variant}", prompts="shapes", epochs=1,
                          prompts_per_epoch=a.prompts, group_size=a.group, sample_steps=a.steps, sample_batch=a.group,
                          batch_size=a.batch, lr=1e-5, lora_rank=lora, kl_weight=0.04, progress=False,
                          mixed_precision="bf16" if a.device == "cuda" else "no",
                          device="auto" if a.device == "cuda" else "cpu")
    rec = train_grpo.run(cfg)["curves"][0]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps({"variant": a.variant, "sample_s_per_sample": rec["sample_s"] / rec["samples"],
                      "train_s_per_step": rec["train_s"] / max(rec["optimizer_steps"], 1), "peak_mib": peak,
                      "steps_trained": max(1, round(cfg.train_fraction * a.steps))}))


def sd15_bench(a) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from dpo_step import sd15_pipeline
    from machine import describe

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model = sd15_pipeline(Path(tmp) / "sd15", a.size)
        for variant in a.variants.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", "--variant", variant, "--run-dir",
                                  str(Path(tmp) / "run"), "--model", model, "--device", a.device, "--steps",
                                  str(a.steps), "--prompts", str(a.prompts), "--group", str(a.group), "--batch",
                                  str(a.batch)], capture_output=True, text=True, check=True, cwd=REPO)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"machine: {describe()}; SD-1.5 UNet (random weights), {a.size} px, {a.steps} DDIM steps (eta=1, guidance "
          f"4), {a.prompts} prompts x {a.group} samples, minibatch {a.batch}, "
          f"{results[0]['steps_trained']} chain steps trained per minibatch, KL on\n")
    print("| variant | sampling (s/sample) | training (s/optimizer step) | peak memory (MiB) |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['variant']} | {r['sample_s_per_sample']:.3f} | {r['train_s_per_step']:.2f} | "
              f"{r['peak_mib']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "data" / "models" / "shapes-countnoise"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per epoch")
    ap.add_argument("--group", type=int, default=8, help="samples per prompt")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps of the training sampler")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the checker server adds to every answer")
    ap.add_argument("--concurrency", default="16", help="reward requests in flight at once (the bound)")
    ap.add_argument("--resume-check", action="store_true")
    ap.add_argument("--kill-at", type=int, default=100, help="--resume-check: kill -9 after this many answers")
    ap.add_argument("--sd15", action="store_true")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=4, help="--sd15: samples per optimizer step")
    ap.add_argument("--variants", default="lora,full", help="--sd15: lora (r=8, reference = adapters disabled), full "
                                                          "(reference = a frozen copy)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return sd15_child(a)
    if a.sd15:
        return sd15_bench(a)
    return resume_check(a) if a.resume_check else epoch_bench(a)


if __name__ == "__main__":
    main()

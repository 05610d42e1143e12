"""Benchmark: `autofeedback generate` vs a plain diffusers loop, same model, steps and image count.

Baseline = what people write first: one pipeline call per prompt,
    for prompt in prompts: pipe(prompt, num_images_per_prompt=N, generator=..., num_inference_steps=S)
Candidate = the `generate` stage itself (batched across prompts, channels-last, PNG encoding and
Parquet writes included), on a fresh run directory; in float32 like the baseline, and in bfloat16
(different numerics: reported apart).

Both run in this process, one after the other, after a warm-up call, with the same torch thread count.
Prints a table (images/s and the ratio) and the machine; paste it into bench/RESULTS.md.

    python bench/generate.py                       # shipped tiny shapes model, CPU
    python bench/generate.py --prompts 64 --images-per-prompt 1 2 4 --steps 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from machine import describe  # noqa: E402  (bench/machine.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def baseline(pipe, prompts: list[str], n: int, steps: int, guidance: float) -> float:
    import torch

    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        pipe(prompt, num_images_per_prompt=n, num_inference_steps=steps, guidance_scale=guidance,
             generator=torch.Generator().manual_seed(i), output_type="pil")
    return len(prompts) * n / (time.perf_counter() - t0)


def candidate(model: str, n: int, steps: int, guidance: float, limit: int, batch: int, dtype: str = "float32") -> float:
    from autofeedback import generate
    from autofeedback.config import GenerateConfig

    with tempfile.TemporaryDirectory() as tmp:
        cfg = GenerateConfig(run_dir=Path(tmp), model=model, prompts=str(REPO / "prompts" / "shapes.jsonl"),
                             limit=limit, images_per_prompt=n, steps=steps, guidance=guidance,
                             batch_size=batch, dtype=dtype, progress=False)
        t0 = time.perf_counter()
        summary = generate.run(cfg)  # includes loading the pipeline, PNG encoding and Parquet writes
        elapsed = time.perf_counter() - t0
        assert summary["new"] == limit * n
    return limit * n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "data" / "models" / "shapes-tiny"))
    ap.add_argument("--prompts", type=int, default=48, help="number of prompts")
    ap.add_argument("--images-per-prompt", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    from autofeedback import generate, prompts

    prompt_texts = prompts.load(str(REPO / "prompts" / "shapes.jsonl"), limit=args.prompts).column("prompt").to_pylist()
    pipe = generate.load_pipeline(args.model)
    pipe(prompt_texts[:2], num_inference_steps=2, output_type="pil")  # warm-up
    print(f"machine: {describe()}")
    print(f"model: {args.model}, {args.prompts} prompts, {args.steps} steps, guidance {args.guidance}, "
          f"generate batch size {args.batch_size}\n")
    print("| images/prompt | plain loop, fp32 (img/s) | generate, fp32 (img/s) | speed-up | "
          "generate, bf16 (img/s) | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.images_per_prompt:
        base = baseline(pipe, prompt_texts, n, args.steps, args.guidance)
        cand = candidate(args.model, n, args.steps, args.guidance, args.prompts, args.batch_size)
        bf16 = candidate(args.model, n, args.steps, args.guidance, args.prompts, args.batch_size, "bfloat16")
        print(f"| {n} | {base:.1f} | {cand:.1f} | {cand / base:.2f}x | {bf16:.1f} | {bf16 / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

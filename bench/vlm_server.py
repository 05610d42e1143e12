"""Benchmark: `autofeedback serve-vlm` requests/s, batched vs one at a time.

The same N judge requests (the pointwise_binary template, structured output, one 32x32 render each; greedy) against
the server running the shipped shapes VLM, in three settings:
  one at a time       --max-batch 1, the client sends the next request when the previous one answered
  32 concurrent, no batching   --max-batch 1, 32 requests in flight (they queue for the one model)
  32 concurrent, batched       --max-batch 32, 32 requests in flight, one left-padded generate per batch
The client is the real AsyncOpenAI; the server runs in this process (its own threads).

    python bench/vlm_server.py [--model data/models/shapes-vlm --requests 128 --threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def requests(n: int) -> list[dict]:
    from autofeedback.judges import parsing
    from autofeedback.judges.templates import Template
    from autofeedback.shapes.suite import suite_records
    from autofeedback.shapes.world import Scene, render

    tpl = Template.load(None, "pointwise")
    recs = suite_records()
    out = []
    for i in range(n):
        rec = recs[(i * 7) % len(recs)]
        buf = io.BytesIO()
        render(Scene(**rec["metadata"]), i).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        content = [{"type": "text", "text": tpl.render({"prompt": rec["prompt"], "images": [url]})},
                   {"type": "image_url", "image_url": {"url": url}}]
        out.append(dict(model="shapes-vlm", messages=[{"role": "system", "content": tpl.system},
                                                      {"role": "user", "content": content}],
                        response_format=parsing.response_format("pointwise_binary"), temperature=0, max_tokens=64))
    return out


async def drive(base_url: str, reqs: list[dict], concurrency: int) -> tuple[float, list]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)

    async def one(r):
        async with sem:
            return await client.chat.completions.create(**r)

    t0 = time.perf_counter()
    out = await asyncio.gather(*(one(r) for r in reqs))
    seconds = time.perf_counter() - t0
    await client.close()
    return seconds, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "data" / "models" / "shapes-vlm"))
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    args = ap.parse_args()

    import torch

    from autofeedback.judges.vlm_server import VLMServer

    sys.path.insert(0, str(REPO / "bench"))
    from machine import describe

    torch.set_num_threads(args.threads)
    reqs = requests(args.requests)
    rows = []
    for label, max_batch, concurrency in (("one at a time", 1, 1), ("32 concurrent, no batching", 1, 32),
                                          ("32 concurrent, batched (--max-batch 32)", 32, 32)):
        with VLMServer(args.model, max_batch=max_batch, threads=args.threads) as server:
            asyncio.run(drive(server.base_url, reqs[:4], 1))  # warm-up
            seconds, out = asyncio.run(drive(server.base_url, reqs, concurrency))
            sizes = server.batch_sizes
        answers = [o.choices[0].message.content for o in out]
        rows.append((label, args.requests / seconds, sizes, answers))
        print(f"{label}: {args.requests / seconds:.2f} req/s, batch sizes {dict(sorted(sizes.items()))}", flush=True)
    same = sum(a == b for a, b in zip(rows[0][3], rows[2][3]))
    print(f"\nmachine: {describe()}")
    print(f"{args.requests} pointwise requests (one 32x32 image, structured output, greedy, max_tokens 64)\n")
    print("| setting | req/s | speed-up | batches run (size: count) |")
    print("|---|---:|---:|---|")
    for label, rps, sizes, _ in rows:
        print(f"| {label} | {rps:.2f} | {rps / rows[0][1]:.2f}x | "
              f"{', '.join(f'{k}: {v}' for k, v in sorted(sizes.items()))} |")
    print(f"\nbatched answers identical to one-at-a-time answers: {same}/{args.requests}")


if __name__ == "__main__":
    main()

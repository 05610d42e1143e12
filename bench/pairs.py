"""Benchmark: `autofeedback pairs` on a million synthetic judgment rows (pointwise and pairwise).

Cases (each a fresh run directory; the judgments table is written before the clock starts):
  pointwise  N rows: N/4 prompts x 4 images, a label (aligned or not) and a 1-10 score per image
             -> pairs of aligned vs not-aligned images per prompt, plus labels.parquet (one row per image)
  pairwise   N rows: N/12 prompts x 4 images = 6 pairs per prompt, each asked in both orders (AB, BA);
             90% of pairs answer the same in both orders, 10% flip (position-inconsistent -> ties, dropped)
The timed part is `pairs.run(cfg)` end to end: read + validate the Parquet table, votes, combine, pair ids
(content hashes), write preferences/labels, report. Prints a table (rows/s) and the machine; paste it into
bench/RESULTS.md under "## pairs".

    python bench/pairs.py                 # 1,000,000 rows per case
    python bench/pairs.py --rows 100000
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from autofeedback import pairs, tables  # noqa: E402
from autofeedback.config import PairsConfig  # noqa: E402
from machine import describe  # noqa: E402  (bench/machine.py)


def _hex(prefix: str, n: int, offset: int = 0) -> pa.Array:
    """n distinct ids 'prefix' + 12 hex digits, built with numpy (no Python loop)."""
    x = np.arange(offset, offset + n, dtype=np.uint64) * np.uint64(2654435761) % np.uint64(2**48)
    digits = np.array(list("0123456789abcdef"))
    chars = digits[(x[:, None] >> (np.arange(11, -1, -1, dtype=np.uint64) * np.uint64(4))) & np.uint64(15)]
    return pa.array(np.char.add(prefix, chars.view("<U12").ravel()), pa.string())


def _table(n: int, cols: dict) -> pa.Table:
    schema = tables.SCHEMAS["judgments"]
    now = np.full(n, np.datetime64("2026-11-22T00:00:00", "us"))
    out = {}
    for field in schema:
        if field.name in cols:
            out[field.name] = cols[field.name]
        elif field.name == "created_at":
            out[field.name] = pa.array(now, tables.TIMESTAMP)
        elif field.name == "status":
            out[field.name] = pa.array(np.full(n, "ok", object), pa.string())
        elif field.name == "details":
            out[field.name] = pa.array(np.full(n, "{}", object), pa.string())
        else:
            out[field.name] = pa.nulls(n, field.type)
    return pa.table(out, schema=schema)


def _const(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value])).cast(pa.string())


def pointwise_judgments(n: int, rng) -> pa.Table:
    per = 4
    images = _hex("img", n)
    prompts = _hex("p", n // per + 1).take(pa.array(np.arange(n) // per))
    label = rng.random(n) < 0.5
    score = np.where(label, rng.integers(7, 11, n), rng.integers(1, 7, n)).astype(float)
    ids = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), images)
    return _table(n, {"request_id": _hex("r", n), "judge": _const("openai:gpt-4o", n),
                      "mode": _const("pointwise", n), "template": _const("pointwise_binary.v1@abcd1234", n),
                      "prompt_id": prompts, "image_ids": ids, "label": pa.array(label), "score": pa.array(score)})


def pairwise_judgments(n: int, rng) -> pa.Table:
    per, n_pairs = 4, n // 2
    ia, ib = np.triu_indices(per, 1)  # 6 pairs per prompt
    k = np.arange(n_pairs)
    prompt_idx, which = k // len(ia), k % len(ia)
    a = prompt_idx * per + ia[which]
    b = prompt_idx * per + ib[which]
    image_names = _hex("img", int(b.max()) + 1)
    a_s, b_s = image_names.take(pa.array(a)), image_names.take(pa.array(b))
    prompts = _hex("p", int(prompt_idx.max()) + 1).take(pa.array(prompt_idx))
    first = pa.concat_arrays([a_s, b_s])   # order AB then BA
    second = pa.concat_arrays([b_s, a_s])
    winner_a = rng.random(n_pairs) < 0.5
    flip = rng.random(n_pairs) < 0.10       # the BA answer disagrees
    choice_ab = np.where(winner_a, a, b)
    choice_ba = np.where(flip ^ winner_a, a, b)
    choice = image_names.take(pa.array(np.concatenate([choice_ab, choice_ba])))
    values = pa.concat_arrays([first, second]).take(pa.array(
        np.column_stack([np.arange(n), np.arange(n) + n]).ravel()))
    ids = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), values)
    return _table(n, {"request_id": _hex("r", n), "judge": _const("openai:gpt-4o", n), "mode": _const("pairwise", n),
                      "template": _const("pairwise.v1@abcd1234", n),
                      "prompt_id": pa.concat_arrays([prompts, prompts]), "image_ids": ids, "choice": choice})


def bench(name: str, make, n: int, rng, tmp: Path) -> dict:
    run = tmp / name
    (run / "judgments.parquet").mkdir(parents=True)
    t = make(n, rng)
    pq.write_table(t, run / "judgments.parquet" / "part-bench.parquet")
    del t
    t0 = time.perf_counter()
    s = pairs.run(PairsConfig(run_dir=run))
    dt = time.perf_counter() - t0
    return {"case": name, "rows": n, "pairs": s["pairs"], "ties": s["ties"]["total"], "labels": s.get("labels", 0),
            "seconds": dt, "rows_per_s": n / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("pointwise", pointwise_judgments), ("pairwise", pairwise_judgments)):
            results.append(bench(name, make, args.rows, rng, Path(tmp)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {describe(torch_info=False)}, numpy {np.__version__}, pyarrow {pa.__version__}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, pyarrow threads {pa.cpu_count()}; "
          f"peak RSS {peak:.0f} MB")
    print()
    print("| case | judgment rows | pairs | ties dropped | labels | seconds | rows/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['case']} | {r['rows']:,} | {r['pairs']:,} | {r['ties']:,} | {r['labels']:,} | "
              f"{r['seconds']:.2f} | {r['rows_per_s']:,.0f} |")


if __name__ == "__main__":
    main()

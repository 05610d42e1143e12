"""The shapes VLM judge vs the exact checker (the checker plays the human labeler), on one run's judgments.

Reads RUN/judgments.parquet holding the checker's pointwise judgments (`--judge shapes`) and an OpenAI-protocol
judge's (default `openai:shapes-vlm`) in any of the modes pointwise (binary), pairwise (both orders), listwise, and
prints (and writes RUN/report/vlm_vs_checker.json) every rate with a 95% CI from a cluster bootstrap over prompts:

- pointwise: accuracy and Cohen's kappa against the checker's label, the VLM's status counts (parse failures), where
  it fails by concept: the false-accept rate on images whose checker-wrong concept is X, the false-reject rate on
  checker-aligned images, and accuracy by prompt category;
- pairwise: agreement with the checker's preference (per question asked; the checker prefers the image with more
  concepts right, a tie when equal), first-position rate, position consistency across the two orders, and the
  agreement after combine_orders (an inconsistent pair is a tie; a tie counts 1/2 against a checker preference);
- listwise: valid-permutation rate and top-1 agreement (the VLM's first image has the checker's best score);
- the checker-vs-checker ceiling: the checker is deterministic, so re-judging gives 100% agreement, kappa 1.

    python scripts/vlm_vs_checker.py RUN [--judge openai:shapes-vlm] [--bootstrap 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autofeedback import tables  # noqa: E402
from autofeedback.judge import combine_orders  # noqa: E402

CONCEPTS = ("count", "color", "shape", "background")


def boot(per_prompt: dict[str, np.ndarray], stat, n: int, seed: int) -> tuple[float, float, float]:
    """stat(summed per-prompt counts) with a 95% percentile CI over prompts resampled with replacement."""
    keys = sorted(per_prompt)
    if not keys:
        return (float("nan"),) * 3
    mat = np.stack([per_prompt[k] for k in keys]).astype(float)
    point = stat(mat.sum(0))
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(keys), np.full(len(keys), 1 / len(keys)), size=n)
    vals = np.array([stat(row) for row in w @ mat])
    vals = vals[np.isfinite(vals)]
    lo, hi = (np.percentile(vals, [2.5, 97.5]) if len(vals) else (np.nan, np.nan))
    return float(point), float(lo), float(hi)


def ratio(c):
    return c[0] / c[1] if c[1] else np.nan


def kappa(c):  # c = tp, fp, fn, tn (judge first, checker second)
    tp, fp, fn, tn = c
    n = tp + fp + fn + tn
    if not n:
        return np.nan
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
    return (po - pe) / (1 - pe) if pe < 1 else np.nan


def fmt(t, pct=True) -> str:
    p, lo, hi = t
    if not np.isfinite(p):
        return "-"
    return f"{100 * p:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]" if pct else f"{p:.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--judge", default="openai:shapes-vlm")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    B, S = args.bootstrap, args.seed

    rows = tables.read(tables.table_path(args.run, "judgments"), "judgments").to_pylist()
    prompts = {r["prompt_id"]: r for r in tables.read(tables.table_path(args.run, "prompts"), "prompts").to_pylist()}
    checker = {r["image_ids"][0]: r for r in rows if r["judge"].startswith("shapes") and r["status"] == "ok"}
    vlm = [r for r in rows if r["judge"] == args.judge]
    if not checker or not vlm:
        raise SystemExit(f"{args.run}: needs pointwise judgments by `shapes` and by {args.judge}")
    out: dict = {"judge": args.judge, "run": str(args.run), "checker_vs_checker_ceiling": {"accuracy": 1.0, "kappa": 1.0}}
    lines = []

    # ---------------------------------------------------------------- pointwise
    point = [r for r in vlm if r["mode"] == "pointwise" and (r["template"] or "").startswith("pointwise_binary")]
    if point:
        status = Counter(r["status"] for r in point)
        table, by_cat, fa, fr = defaultdict(lambda: np.zeros(4)), defaultdict(dict), {}, defaultdict(lambda: np.zeros(2))
        fail = defaultdict(lambda: np.zeros(2))
        for r in point:
            ref = checker.get(r["image_ids"][0])
            if ref is None:
                continue
            pid = r["prompt_id"]
            fail[pid] += [r["status"] != "ok", 1]
            if r["status"] != "ok":
                continue
            j, c = bool(r["label"]), bool(ref["label"])
            table[pid] += [j and c, j and not c, (not j) and c, (not j) and (not c)]
            cat = prompts[pid]["category"]
            by_cat[cat].setdefault(pid, np.zeros(2))
            by_cat[cat][pid] += [j == c, 1]
            if c:
                fr[pid] = fr.get(pid, np.zeros(2)) + [not j, 1]
            wrong = [a["question"] for a in ref["answers"] if not a["correct"]]
            for concept in wrong:
                fa.setdefault(concept, {}).setdefault(pid, np.zeros(2))
                fa[concept][pid] += [j, 1]
        acc = boot(table, lambda c: (c[0] + c[3]) / c.sum() if c.sum() else np.nan, B, S)
        kap = boot(table, kappa, B, S)
        n = int(sum(v.sum() for v in table.values()))
        pf = boot(fail, ratio, B, S)
        out["pointwise"] = {"n": n, "status": dict(status), "accuracy": acc, "kappa": kap, "not_ok_rate": pf,
                            "checker_aligned_rate": float(sum(v[0] + v[2] for v in table.values()) / max(n, 1)),
                            "vlm_aligned_rate": float(sum(v[0] + v[1] for v in table.values()) / max(n, 1)),
                            "false_reject_on_checker_aligned": boot(fr, ratio, B, S),
                            "false_accept_by_wrong_concept": {k: {"n": int(sum(v[1] for v in d.values())),
                                                                  "rate": boot(d, ratio, B, S)}
                                                              for k, d in sorted(fa.items())},
                            "accuracy_by_category": {k: {"n": int(sum(v[1] for v in d.values())),
                                                         "accuracy": boot(d, ratio, B, S)}
                                                     for k, d in sorted(by_cat.items())}}
        p = out["pointwise"]
        lines += [f"pointwise (yes/no) vs the checker: n={n} images, status {dict(status)}",
                  f"  accuracy {fmt(acc)}   kappa {fmt(kap, False)}   not-ok (parse failures etc.) {fmt(pf)}",
                  f"  aligned: checker {100 * p['checker_aligned_rate']:.1f}%, VLM {100 * p['vlm_aligned_rate']:.1f}%",
                  f"  false reject on checker-aligned images: {fmt(p['false_reject_on_checker_aligned'])}",
                  "  false accept, by the concept the checker found wrong:"]
        lines += [f"    {k:10s} n={v['n']:4d}  {fmt(v['rate'])}" for k, v in p["false_accept_by_wrong_concept"].items()]
        lines += ["  accuracy by prompt category:"]
        lines += [f"    {k:10s} n={v['n']:4d}  {fmt(v['accuracy'])}" for k, v in p["accuracy_by_category"].items()]

    # ---------------------------------------------------------------- pairwise
    pair = [r for r in vlm if r["mode"] == "pairwise"]
    if pair:
        status = Counter(r["status"] for r in pair)
        agree, first, fail = {}, {}, defaultdict(lambda: np.zeros(2))
        for r in pair:
            pid = r["prompt_id"]
            fail[pid] += [r["status"] != "ok", 1]
            if r["status"] != "ok":
                continue
            a, b = (checker[i]["score"] for i in r["image_ids"])
            want = r["image_ids"][0] if a > b else r["image_ids"][1] if b > a else "tie"
            pos = json.loads(r["details"]).get("position_choice")
            if want != "tie":
                agree[pid] = agree.get(pid, np.zeros(2)) + [r["choice"] == want, 1]
            if pos in ("A", "B"):
                first[pid] = first.get(pid, np.zeros(2)) + [pos == "A", 1]
        combined = combine_orders([r for r in pair if r["status"] == "ok"])
        by_key = {json.loads(r["details"])["pair_key"]: r["prompt_id"] for r in pair}
        cons, comb = {}, {}
        for key, c in combined.items():
            pid = by_key[key]
            cons[pid] = cons.get(pid, np.zeros(2)) + [c["consistent"], 1]
            a, b = (checker[i]["score"] for i in c["image_ids"])
            if a != b:
                want = c["image_ids"][0] if a > b else c["image_ids"][1]
                credit = 0.5 if c["choice"] == "tie" else float(c["choice"] == want)
                comb[pid] = comb.get(pid, np.zeros(2)) + [credit, 1]
        out["pairwise"] = {"requests": len(pair), "status": dict(status), "not_ok_rate": boot(fail, ratio, B, S),
                           "agreement_per_question": boot(agree, ratio, B, S),
                           "first_position_rate": boot(first, ratio, B, S),
                           "position_consistency": boot(cons, ratio, B, S),
                           "agreement_both_orders_tie_half": boot(comb, ratio, B, S),
                           "pairs_both_orders": len(combined)}
        p = out["pairwise"]
        lines += [f"pairwise vs the checker's preference: {len(pair)} questions ({len(combined)} pairs, both orders), "
                  f"status {dict(status)}",
                  f"  agreement per question (checker not tied) {fmt(p['agreement_per_question'])}",
                  f"  first-position rate {fmt(p['first_position_rate'])}   position consistency "
                  f"{fmt(p['position_consistency'])}",
                  f"  agreement after combining orders (inconsistent = tie = 1/2) "
                  f"{fmt(p['agreement_both_orders_tie_half'])}",
                  f"  not ok (parse failures etc.) {fmt(p['not_ok_rate'])}"]

    # ---------------------------------------------------------------- listwise
    lst = [r for r in vlm if r["mode"] == "listwise"]
    if lst:
        status = Counter(r["status"] for r in lst)
        valid, top1 = defaultdict(lambda: np.zeros(2)), {}
        for r in lst:
            pid = r["prompt_id"]
            valid[pid] += [r["status"] == "ok", 1]
            if r["status"] == "ok":
                best = max(checker[i]["score"] for i in r["ranking"])
                top1[pid] = top1.get(pid, np.zeros(2)) + [checker[r["ranking"][0]]["score"] == best, 1]
        out["listwise"] = {"requests": len(lst), "status": dict(status), "valid_permutation_rate":
                           boot(valid, ratio, B, S), "top1_is_checker_best": boot(top1, ratio, B, S)}
        lines += [f"listwise: {len(lst)} rankings, status {dict(status)}",
                  f"  valid permutation {fmt(out['listwise']['valid_permutation_rate'])}   first-ranked image has the "
                  f"checker's best score {fmt(out['listwise']['top1_is_checker_best'])}"]

    lines.append("checker vs checker (the ceiling): the checker is deterministic, 100% agreement, kappa 1.000")
    print("\n".join(lines))
    report = args.run / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / "vlm_vs_checker.json").write_text(json.dumps(out, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()

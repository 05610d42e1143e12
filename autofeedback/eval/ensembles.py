"""Judge ensembles in `autofeedback eval`: the combinations of autofeedback.ensemble (pure math) scored against
the human reference like any judge - next to the member judges and the ceiling, cross-fitted, with a cost-aware
greedy selection (in-sample) and nested cross-fitting (the honest numbers) - and calibration to P(aligned).
The `ensembles` and `calibration` keys of metrics.json (docs/eval.md).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings

import numpy as np

from .. import ensemble, stats
from .agreement import AgreementResult
from .scoring import RawMetrics, ScoringContext, average_raws, compare, finish, loo_raws


def judge_costs(judges, option: dict[str, float] | None) -> tuple[dict[str, float], dict[str, str]]:
    """USD per judge: --judge-cost NAME=USD when given, else the sum of its rows' cost_usd (every row,
    ok or not: failed calls cost too), else free (0)."""
    costs: dict[str, float] = {}
    source: dict[str, str] = {}
    if judges is not None and "cost_usd" in judges:
        for name, c in judges.groupby("rater")["cost_usd"]:
            if c.notna().any():
                costs[name] = float(c.sum())
                source[name] = "judgments.cost_usd"
    for name, usd in (option or {}).items():
        costs[name] = float(usd)
        source[name] = "--judge-cost"
    return costs, source


def mixed_raw(vectors, ctx: ScoringContext, score) -> RawMetrics:
    """Raw estimates of a statistic over several out-of-fold prediction vectors (one per fold split): the point
    is the mean over splits; bootstrap resample b uses split b mod R, so the split-to-split spread is inside the
    CI. score(x, ctx) -> RawMetrics (scoring.compare)."""
    R = len(vectors)
    rs = ctx.rs
    raws = []
    for r, x in enumerate(vectors):
        sub = dataclasses.replace(ctx, rs=rs.subset(r, R))
        if ctx.rs_prompts is not None:
            sub = dataclasses.replace(sub, rs_prompts=sub.rs if ctx.rs_prompts is rs else ctx.rs_prompts.subset(r, R))
        raws.append(score(x, sub))
    out = RawMetrics(pairs=next((raw.pairs for raw in raws if raw.pairs is not None), None),
                     per_prompt=next((raw.per_prompt for raw in raws if raw.per_prompt is not None), None))
    for name in dict.fromkeys(k for raw in raws for k in raw.estimates):
        vals = [raw.estimates[name] for raw in raws if name in raw.estimates]
        with warnings.catch_warnings():  # every split undefined: NaN without a RuntimeWarning
            warnings.simplefilter("ignore", RuntimeWarning)
            point = float(np.nanmean([v[0] for v in vals]))
        out.estimates[name] = (point, np.concatenate([np.asarray(v[1], dtype=np.float64) for v in vals]),
                               int(max(v[2] for v in vals)))
    return out


def default_threshold(kind: str, values) -> float:
    """Aligned = human mean >= this: labels 0.5; scores min + 3/4 (max - min) of the human rating values
    (4 on a 1-5 Likert scale, 0.75 on 0-1)."""
    if kind == "label":
        return 0.5
    v = np.asarray(values, dtype=np.float64)
    return float(v.min() + 0.75 * (v.max() - v.min()))


def evaluate_ensembles(agreement: AgreementResult, methods, members=None, folds: int = 5, seed: int = 0,
                       ridge: float = 1.0, threshold: float | None = None, calibration: str | None = "isotonic",
                       bins: int = 10, costs: dict[str, float] | None = None,
                       cost_source: dict[str, str] | None = None, budget: float | None = None,
                       repeats: int = 5) -> tuple[dict | None, dict | None, list[str]]:
    """Ensembles, calibration and selection from compute_agreement()'s result.

    Returns (ensembles, calibration, warnings): the `ensembles` and `calibration` keys of metrics.json."""
    notes: list[str] = []
    section, items = agreement.metrics, agreement.items
    ctx = items.ctx
    kind = ctx.ref_kind
    if kind == "choice":
        return None, None, ["ensembles and calibration need pointwise human ratings (scores or labels), "
                            "not pairwise choices: skipped"]
    ref_mean, ref_major, ref_values = items.mean, items.majority, items.values
    vectors = items.judges
    pointwise = [name for name in sorted(vectors) if section["judges"][name]["kind"] in ("score", "label")]
    if members:
        chosen = [name for name in pointwise if any(fnmatch.fnmatchcase(name, pat) for pat in members)]
        unmatched = [pat for pat in members if not any(fnmatch.fnmatchcase(n, pat) for n in pointwise)]
        if unmatched:
            notes.append(f"--ensemble-judge {', '.join(unmatched)}: matches no pointwise judge "
                         f"(judges: {', '.join(pointwise)})")
    else:
        chosen = pointwise
    n = len(ref_mean)
    threshold = default_threshold(kind, ref_values) if threshold is None else float(threshold)
    if kind == "label":
        aligned = np.where(np.isfinite(ref_major), ref_major, np.nan)
    else:
        aligned = np.where(np.isfinite(ref_mean), (ref_mean >= threshold).astype(np.float64), np.nan)
    groups = ctx.groups
    fold = ensemble.fold_ids(n, groups, folds, seed)
    fold_unit = "prompt_id" if groups is not None else "item"
    rs = ctx.rs
    primary = "spearman"

    ens = None
    ens_vectors: dict[str, np.ndarray] = {}
    if methods:
        if len(chosen) < 2:
            notes.append(f"ensembles need >= 2 pointwise judges; have {len(chosen)} ({', '.join(chosen) or '-'}): "
                         f"skipped")
        else:
            X = np.column_stack([vectors[name] for name in chosen])
            loo = items.loo
            results = {}
            for method in methods:
                x = ensemble.combine(X, method, ref_mean, aligned, fold, ridge)
                ens_vectors[method] = x
                entry = {"method": method, "members": chosen, "n_items": int(np.isfinite(x).sum()),
                         "out_of_fold": method in ensemble.LEARNED,
                         "selection": "none: all members given (choosing among these rows after seeing them is "
                                      "in-sample)",
                         "metrics": finish(compare(x, "score", ref_mean, ref_major, ref_values, ctx))}
                if loo:
                    entry["metrics_loo"] = average_raws(loo_raws(x, "score", loo, ref_values, ctx))
                if method in ensemble.LEARNED:
                    entry["weights"] = dict(zip(["intercept", *chosen],
                                                ensemble.learned_weights(X, ref_mean, aligned, method, ridge) or []))
                    entry["target"] = ("human mean" if method == "learned" else f"aligned (human mean >= {threshold:g})"
                                       if kind == "score" else "human majority label")
                results[method] = entry
            ceiling = (section["human"] or {}).get("ceiling")
            best_single = max(chosen, key=lambda j: ((section["judges"][j]["metrics"].get(primary) or {})
                                                     .get("value") or -9))
            ens = {"members": chosen, "methods": list(methods), "primary_metric": primary,
                   "folds": int(np.unique(fold).size), "fold_unit": fold_unit, "seed": seed, "ridge": ridge,
                   "missing": "zmean/rankmean/vote: mean over the judges present for the item; learned/logistic: "
                              "a missing z-score counts as 0 (the judge's training mean)",
                   "results": results,
                   "best_single": {"judge": best_single, "metrics": section["judges"][best_single]["metrics"]},
                   "ceiling": None if not ceiling else ceiling["metrics"],
                   "selection": None}
            # greedy selection under a budget: which judges buy the most agreement per dollar
            costs = costs or {}
            score = lambda v: stats.spearman(v, ref_mean)  # noqa: E731
            steps = ensemble.greedy_select(X, chosen, costs, score, budget)
            for st in steps:
                idx = [chosen.index(s["judge"]) for s in steps[:steps.index(st) + 1]]
                z = ensemble.zmean(X[:, idx])
                st["metric"] = stats.estimate(lambda w, z=z: stats.w_spearman(z, ref_mean, w), rs,
                                              point=st["value"], n=int((np.isfinite(z) & np.isfinite(ref_mean)).sum()))
            ens["selection"] = {
                "combination": "zmean", "metric": primary, "budget_usd": budget,
                "costs_usd": {j: float(costs.get(j, 0.0) or 0.0) for j in chosen},
                "cost_source": {j: (cost_source or {}).get(j, "free") for j in chosen},
                "steps": steps, "in_sample": True,
                "note": "IN-SAMPLE: selected on all items, the same items it is scored on; the path is optimistic "
                        "(the honest number is ensembles.nested)",
            }
            # nested cross-fitting: members and weights chosen inside each training fold (issue #22)
            preds, freq = ensemble.nested_predictions(X, chosen, ref_mean, aligned, groups, list(methods), folds,
                                                      repeats, seed, ridge, costs, budget)
            nested = {}
            for method in methods:
                vecs = list(preds[method])
                raw = mixed_raw(vecs, ctx, lambda x, c: compare(x, "score", ref_mean, ref_major, ref_values, c))
                entry = {"method": method, "n_items": int(np.isfinite(vecs[0]).sum()),
                         "metrics": finish(raw)}
                if loo:
                    per_rater = [mixed_raw(vecs, ctx, lambda x, c, e=e: compare(
                        np.where(e["mask"], x, np.nan), "score", e["mean"], e["majority"], ref_values, c))
                        for e in loo.entries]
                    entry["metrics_loo"] = average_raws(per_rater)
                nested[method] = entry
            ens["nested"] = {
                "protocol": f"nested cross-fitting: in each of {int(np.unique(fold).size)} folds grouped by "
                            f"{fold_unit}, repeated over {repeats} fold seeds ({seed}..{seed + repeats - 1}), the "
                            f"members are chosen by greedy z-mean Spearman selection"
                            + (f" within budget ${budget:g}" if budget is not None else "")
                            + " and the weights fitted on the training folds only, then the held-out fold is "
                              "predicted; numbers are on out-of-fold predictions (mean over fold seeds; each "
                              "bootstrap resample uses one fold seed, so their spread is inside the CI)",
                "folds": int(np.unique(fold).size), "repeats": repeats, "fold_unit": fold_unit,
                "selection_frequency": freq, "results": nested}

    cal = None
    if calibration:
        to_cal = {name: vectors[name] for name in pointwise}
        to_cal.update({f"ensemble:{m}": v for m, v in ens_vectors.items()})
        out = {}
        for name, x in to_cal.items():
            if name == "ensemble:logistic":
                p, how = x, "as predicted (out-of-fold logistic P(aligned))"
            else:
                p, how = ensemble.calibrate(x, aligned, fold, calibration), calibration
            ok = np.isfinite(p) & np.isfinite(aligned)
            if ok.sum() < 2:
                continue
            entry = {"mapping": how, "n_items": int(ok.sum()),
                     "ece": stats.estimate(lambda w, p=p: ensemble.w_ece(p, aligned, w, bins), rs, n=int(ok.sum())),
                     "brier": stats.estimate(lambda w, p=p: ensemble.w_brier(p, aligned, w), rs, n=int(ok.sum())),
                     "reliability": ensemble.reliability(p, aligned, bins)}
            raw = x[np.isfinite(x)]
            if raw.size and raw.min() >= 0 and raw.max() <= 1 and not name.startswith("ensemble:"):
                entry["ece_raw"] = stats.estimate(lambda w, x=x: ensemble.w_ece(x, aligned, w, bins), rs,
                                                  n=int(ok.sum()))
            out[name] = entry
        cal = {"method": calibration, "aligned": (f"human mean >= {threshold:g}" if kind == "score"
                                                  else "human majority label = yes"),
               "aligned_threshold": threshold if kind == "score" else None,
               "aligned_rate": _r(np.nanmean(aligned)) if np.isfinite(aligned).any() else None,
               "folds": int(np.unique(fold).size), "fold_unit": fold_unit, "bins": bins,
               "ece": f"sum over {bins} equal-width bins of predicted P(aligned) on [0, 1] of (n_bin / n) * "
                      f"|share aligned - mean predicted|",
               "judges": out}
    return ens, cal, notes


def _r(v) -> float:
    return round(float(v), 6)

"""Agreement of judges with the human reference: every judge's metrics (vs all raters and leave-one-rater-out),
Krippendorff's alpha among the raters, the human ceiling, the baselines, and judge health (statuses, refusals,
position bias). The `agreement` and `judge_health` keys of metrics.json (autofeedback.eval has the reference).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .. import stats
from ..errors import InputError
from . import protocol
from .scoring import MAX_DISCRETE, ScoringContext, average_raws, compare, finish, loo_raws


@dataclass
class ItemVectors:
    """The item-level arrays behind the `agreement` section (not written to metrics.json): the human reference
    and every comparable judge on one item index - what the ensembles and the report's image grids work on."""

    ids: list[str]                  # the human-rated items, sorted
    mean: np.ndarray                # the human mean per item
    majority: np.ndarray            # the human majority per item (NaN: no unique mode)
    values: np.ndarray              # the human rating values (-1, 0, 1 for choices; 0, 1 for labels)
    judges: dict[str, np.ndarray]   # judge -> its value per item (NaN: not rated)
    ctx: ScoringContext             # the bootstrap and the reference kind every score of these items shares
    loo: protocol.LooTargets        # the leave-one-rater-out targets


@dataclass
class AgreementResult:
    """compute_agreement()'s result."""

    metrics: dict                   # the `agreement` key of metrics.json
    items: ItemVectors


# ============================================================================ judge health
def judge_health(judges, n_boot: int = 2000, seed: int = 0) -> dict:
    out = {}
    for name, g in judges.groupby("rater", sort=True):
        counts = Counter(g["status"])
        n = len(g)
        h = {"source": g["source"].iat[0], "n_rows": n, "status": dict(sorted(counts.items())),
             "ok_rate": round(counts.get("ok", 0) / n, 6),
             "refusal_rate": round(counts.get("refused", 0) / n, 6),
             "parse_error_rate": round(counts.get("parse_error", 0) / n, 6),
             "error_rate": round(1 - counts.get("ok", 0) / n, 6),
             "position_consistency": None, "first_position_rate": None}
        pair = g[(g["kind"] == "choice") & (g["status"] == "ok")]
        if len(pair):
            flags = pair["consistent"].dropna()
            if len(flags):
                cons = flags.astype(float).to_numpy()
            else:
                cons = _derived_consistency(pair)
            if len(cons):
                rs = stats.Resampler(len(cons), n_boot, seed)
                h["position_consistency"] = stats.estimate(lambda w, c=cons: (w @ c) / w.sum(1), rs)
            decided = pair["first_chosen"].dropna().astype(float).to_numpy()
            if len(decided):
                rs = stats.Resampler(len(decided), n_boot, seed)
                h["first_position_rate"] = stats.estimate(lambda w, d=decided: (w @ d) / w.sum(1), rs)
        out[name] = h
    return out


def _derived_consistency(pair) -> np.ndarray:
    """Pairs asked in both orders: consistent iff the canonical choice is the same in every order."""
    res = []
    for _, g in pair.dropna(subset=["shown"]).groupby("item_id"):
        if g["shown"].nunique() >= 2:
            res.append(float(g["value"].nunique() == 1))
    return np.asarray(res, dtype=np.float64)


# ============================================================================ agreement
class _Reference:
    """The human side on the item index: ratings matrix, mean, majority, groups, categories."""

    def __init__(self, human, items: list[str], kind: str):
        self.items = items
        self.kind = kind
        agg = _aggregate(human, kind)
        self.raters = sorted(agg["rater"].unique())
        mat = agg.pivot(index="item_id", columns="rater", values="value").reindex(index=items, columns=self.raters)
        self.matrix = mat.to_numpy(dtype=np.float64)
        self.mean = np.nanmean(np.where(np.isfinite(self.matrix), self.matrix, np.nan), axis=1) \
            if self.matrix.size else np.zeros(0)
        self.majority = _majority(self.matrix)
        vals = np.unique(self.matrix[np.isfinite(self.matrix)])
        if kind == "choice":
            vals = np.array([-1.0, 0.0, 1.0])
        elif kind == "label":
            vals = np.array([0.0, 1.0])
        self.values = vals
        self.discrete = len(vals) <= MAX_DISCRETE
        self.first_sign = (human.groupby("item_id")["first_sign"].first().reindex(items).fillna(1.0)
                           .to_numpy(dtype=np.float64))
        # four-way answers (pairwise sets): one code per (item, rater), the raters' majority per item
        self.matrix4 = self.ref4 = None
        if kind == "choice":
            a4 = _aggregate4(human, "human")
            self.matrix4 = (a4.pivot(index="item_id", columns="rater", values="c4")
                            .reindex(index=items, columns=self.raters).to_numpy(dtype=np.float64))
            self.ref4 = protocol.majority4(self.matrix4)
            self.both_bad = bool((self.matrix4 == stats.C4_BOTH_BAD).any())


def _aggregate4(rows, role: str):
    """One four-way code per (item, rater) (protocol.aggregate4)."""
    g = rows.groupby(["item_id", "rater"], sort=False)["c4"].agg(lambda c: protocol.aggregate4(c.to_numpy(), role))
    return g.reset_index()


def _aggregate(rows, kind: str):
    """One value per (item, rater): mean of repeats; labels by majority (a 50/50 split is dropped);
    choices by the sign of the mean (orders that disagree become a tie)."""
    g = rows.groupby(["item_id", "rater"], sort=False)["value"].mean().reset_index()
    if kind == "label":
        g["value"] = np.where(g["value"] > 0.5, 1.0, np.where(g["value"] < 0.5, 0.0, np.nan))
    elif kind == "choice":
        g["value"] = np.sign(g["value"])
    return g.dropna(subset=["value"])


def _majority(matrix: np.ndarray) -> np.ndarray:
    """Most common value per row; NaN when there is no rating or no unique mode."""
    out = np.full(matrix.shape[0], np.nan)
    for i, row in enumerate(matrix):
        row = row[np.isfinite(row)]
        if row.size == 0:
            continue
        vals, counts = np.unique(row, return_counts=True)
        top = counts == counts.max()
        if top.sum() == 1:
            out[i] = vals[top][0]
    return out


def compute_agreement(human, judges, tie_policy: str = "half", n_boot: int = 2000, seed: int = 0,
                      min_rater_items: int = 10, images=None, prompts=None, human_source: str = "",
                      failed: str = "wrong", bootstrap_unit: str = "auto", judge_threshold=None, judge_scale=None,
                      aligned_threshold: float | None = None) -> AgreementResult:
    """Agreement of every judge with the human reference, baselines and the human ceiling.

    Every judge is scored twice: against the mean (majority) of all raters (`metrics`), and against the
    mean of the other n-1 raters for each left-out rater, averaged over raters (`metrics_loo`) - the
    target of the human ceiling (issue #22). The bootstrap resamples prompts when every item has a
    prompt_id (bootstrap_unit auto|prompt), else items. Returns the `agreement` section of metrics.json and the
    item-level arrays behind it."""
    kinds = set(human["kind"])
    if len(kinds) > 1:
        raise InputError(f"{human_source}: human ratings mix kinds {sorted(kinds)}; use one of score, label "
                         f"or choice per file")
    kind = kinds.pop()
    items = sorted(human["item_id"].unique())
    index = {it: i for i, it in enumerate(items)}
    ref = _Reference(human, items, kind)
    n = len(items)
    notes: list[str] = []

    # item metadata: category and prompt group, from the human file, else the judges, else the run.
    category = _item_attr(items, human, judges, "category")
    group = _item_attr(items, human, judges, "prompt_id")
    if images is not None and len(images):
        by_image = images.set_index("image_id")
        for i, it in enumerate(items):
            if group[i] is None and it in by_image.index:
                group[i] = by_image.at[it, "prompt_id"]
        if prompts is not None and len(prompts):
            pcat = dict(zip(prompts["prompt_id"], prompts["category"]))
            for i in range(n):
                if category[i] is None and group[i] is not None:
                    category[i] = pcat.get(group[i])
    has_prompts = n > 0 and all(g is not None for g in group)
    prompt_codes = None
    if has_prompts:
        codes = {g: k for k, g in enumerate(sorted(set(group)))}
        prompt_codes = np.array([codes[g] for g in group], dtype=np.float64)
    groups = prompt_codes if kind != "choice" else None
    pairwise_unit = ("pairs (the items themselves) of pairwise choices" if kind == "choice" else
                     "pairs of items with the same prompt_id" if groups is not None else "all pairs of items")
    cats = sorted({c for c in category if c is not None})
    cat_masks = {c: np.array([x == c for x in category], dtype=np.float64) for c in cats} if len(cats) > 1 else {}

    # the bootstrap unit: prompts (clusters) when every item has one, else items
    if bootstrap_unit not in ("auto", "prompt", "item"):
        raise InputError(f"--bootstrap-unit {bootstrap_unit!r}: use auto, prompt or item")
    if bootstrap_unit == "prompt" and not has_prompts:
        raise InputError("--bootstrap-unit prompt: not every item has a prompt_id (map one with --map prompt_id=COL)")
    by_prompt = has_prompts and bootstrap_unit != "item"
    rs = stats.Resampler(n, n_boot, seed, clusters=prompt_codes if by_prompt else None)
    rs_prompts = None
    if has_prompts:  # within-prompt statistics: CI over prompts, the same draws as rs when it resamples prompts
        rs_prompts = rs if by_prompt else stats.Resampler(n, n_boot, seed, clusters=prompt_codes)
    ctx = ScoringContext(ref_kind=kind, groups=groups, tie_policy=tie_policy, rs=rs, rs_prompts=rs_prompts)
    loo = protocol.LooTargets(ref.matrix, ref.raters, kind, _majority, min_rater_items, ref.matrix4)

    # judges
    judge_out: dict = {}
    judge_vectors: dict[str, np.ndarray] = {}
    if judges is not None:
        ok = judges[judges["status"] == "ok"]
        tried = judges.groupby("rater")["item_id"].agg(lambda s: set(s))
        for name, g in ok.groupby("rater", sort=True):
            jkind = g["kind"].iat[0]
            if kind == "label" and jkind == "score" and g["alt_label"].notna().any():
                g = g.assign(value=g["alt_label"], kind="label")  # yes/no humans: compare the judge's yes/no
                jkind = "label"
            agg = _aggregate(g, jkind)
            x = np.full(n, np.nan)
            hit = agg["item_id"].map(index)
            x[hit.dropna().astype(int).to_numpy()] = agg["value"].to_numpy()[hit.notna().to_numpy()]
            n_items = int(np.isfinite(x).sum())
            entry = {"source": g["source"].iat[0], "kind": jkind, "n_items": n_items,
                     "n_unmatched": int(hit.isna().sum())}
            if n_items == 0:
                notes.append(f"judge {name!r}: none of its {len(agg)} item ids matches a human item id "
                                f"(e.g. judge {agg['item_id'].iat[0]!r} vs human {items[0]!r}); use --map")
                entry["metrics"] = {}
                judge_out[name] = entry
                continue
            if not _comparable(jkind, kind):
                notes.append(f"judge {name!r} gives {jkind} ratings, humans give {kind}: not comparable")
                entry["metrics"] = {}
                judge_out[name] = entry
                continue
            x4 = None
            if kind == "choice":
                a4 = _aggregate4(g, "judge")
                x4 = np.full(n, np.nan)
                h4 = a4["item_id"].map(index)
                x4[h4.dropna().astype(int).to_numpy()] = a4["c4"].to_numpy()[h4.notna().to_numpy()]
                # failed answers: rows for the item (any status), no usable choice
                asked = np.array([it in tried.get(name, set()) for it in items])
                failed_items = asked & ~np.isfinite(x)
                entry["n_failed"] = int(failed_items.sum())
                entry["failed_policy"] = failed
                x, x4 = protocol.apply_failed(x, x4, failed_items, failed)
            judge_vectors[name] = x
            view = protocol.categorical_view(x, jkind, kind, ref.values, ref.mean, ref.majority, name,
                                             judge_threshold, judge_scale, aligned_threshold)
            xcat, rmaj, rvals, scale_note = view
            if scale_note:
                entry["scale"] = scale_note
                entry["scale_status"] = "skipped" if xcat is None else "converted"
            entry["metrics"] = finish(compare(x, jkind, ref.mean, ref.majority, ref.values, ctx, x4=x4,
                                              ref4=ref.ref4, cat=view))
            if loo:
                entry["metrics_loo"] = average_raws(loo_raws(x, jkind, loo, ref.values, ctx, x4=x4))
            entry["per_category"] = {
                c: {"n_items": int((np.isfinite(x) * m).sum()),
                    "metrics": finish(compare(x, jkind, ref.mean, ref.majority, ref.values, ctx, mask=m, x4=x4,
                                              ref4=ref.ref4, cat=view, per_prompt=False))}
                for c, m in cat_masks.items()}
            if kind == "choice":
                entry["confusion4"] = protocol.confusion4(x4, ref.ref4)
            judge_out[name] = entry
        if judge_out and all(j["n_items"] == 0 for j in judge_out.values()):
            raise InputError("no judge rated any of the human-labeled items: "
                             + "; ".join(notes[:3]))

    # the human side: alpha among raters, leave-one-rater-out ceiling
    human_out = {"source": human_source, "kind": kind, "n_items": n, "n_raters": len(ref.raters),
                 "n_ratings": int(np.isfinite(ref.matrix).sum()),
                 "ratings_per_item": round(float(np.isfinite(ref.matrix).sum(1).mean()), 3) if n else 0,
                 "values": [float(v) for v in ref.values] if ref.discrete else None,
                 "categories": cats, "alpha": None, "ceiling": None,
                 "n_prompts": int(len(set(group))) if has_prompts else None}
    if kind == "choice":
        human_out["answers4"] = {protocol.NAMES4[float(c)]: int(k) for c, k in
                                 zip(*np.unique(ref.ref4[np.isfinite(ref.ref4)], return_counts=True))}
    pairable = (np.isfinite(ref.matrix).sum(1) >= 2)
    if pairable.any():
        human_out["alpha"] = _alphas(ref.matrix, kind, ref.discrete, rs)
        human_out["ceiling"] = _ceiling(ref, ctx, cat_masks, min_rater_items, loo)
    else:
        notes.append("one rating per item: no human-human agreement or ceiling")

    # baselines
    baselines = _baselines(ref, ctx, seed)
    clip = [j for j in judge_vectors if "clip" in j.lower()]
    if clip:
        baselines["clip_score"] = {"judge": clip[0], "metrics": judge_out[clip[0]]["metrics"]}

    unit = ("prompt_id" if by_prompt else "item")
    metrics = {
        "human": human_out,
        "reference": {"correlations": "mean of the human raters per item",
                      "categorical": "majority of the human raters per item (items without one are left out)",
                      "loo": "metrics_loo and the ceiling: against the mean (majority) of the other n-1 raters on "
                             "the items the left-out rater rated, averaged over the left-out raters"},
        "primary_metric": "pairwise_accuracy" if kind == "choice" else "spearman",
        "tie_policy": tie_policy,
        "failed_policy": failed if kind == "choice" else None,
        "pairwise_unit": pairwise_unit,
        "bootstrap": {"n": n_boot, "seed": seed, "level": 0.95, "unit": unit, "method": "percentile",
                      "n_units": rs.n_units,
                      "note": ("cluster bootstrap: whole prompts are resampled" if by_prompt else
                               "items are resampled" + ("" if has_prompts else " (no prompt_id on every item)"))},
        "judges": judge_out,
        "baselines": baselines,
        "warnings": notes,
    }
    return AgreementResult(metrics, ItemVectors(ids=items, mean=ref.mean, majority=ref.majority, values=ref.values,
                                                judges=judge_vectors, ctx=ctx, loo=loo))


def _item_attr(items, human, judges, col):
    vals = {}
    for frame in (human, judges):
        if frame is None or col not in frame:
            continue
        sub = frame.dropna(subset=[col])
        for it, v in zip(sub["item_id"], sub[col]):
            vals.setdefault(it, v)
    return [vals.get(it) for it in items]


def _comparable(jkind: str, hkind: str) -> bool:
    if "choice" in (jkind, hkind):
        return jkind == hkind
    return True


def _alphas(matrix, kind, discrete, rs) -> dict:
    levels = ("nominal",) if kind in ("label", "choice") else ("nominal", "ordinal", "interval")
    out = {}
    for level in levels:
        if level != "interval" and not discrete:
            out[level] = None
            continue
        fn = lambda w, lv=level: stats.w_krippendorff_alpha(matrix, w, lv)  # noqa: E731
        n_units = int((np.isfinite(matrix).sum(1) >= 2).sum())
        out[level] = stats.estimate(fn, rs, n=n_units)
    return out


def _ceiling(ref: _Reference, ctx: ScoringContext, cat_masks, min_rater_items: int,
             loo: protocol.LooTargets) -> dict | None:
    """Leave-one-rater-out: each rater vs the mean (majority) of the others, averaged over raters; the
    per-rater values are kept (`per_rater`), so one deviant rater is visible."""
    raws, per_rater = [], {}
    per_cat_raws: dict[str, list] = {c: [] for c in cat_masks}
    for e in loo.entries:
        raw = compare(e["x"], ref.kind, e["mean"], e["majority"], ref.values, ctx, x4=e["x4"], ref4=e["ref4"])
        raws.append(raw)
        per_rater[e["rater"]] = {"n_items": int(e["mask"].sum()), "metrics": finish(raw)}
        for c, m in cat_masks.items():
            per_cat_raws[c].append(compare(e["x"], ref.kind, e["mean"], e["majority"], ref.values, ctx, mask=m,
                                           x4=e["x4"], ref4=e["ref4"], per_prompt=False))
    if not raws:
        return None
    return {"method": f"leave-one-rater-out: each rater with >= {min_rater_items} items vs the mean of the "
                      f"other raters (majority for accuracy, kappa, nominal alpha), averaged over raters",
            "n_raters": len(raws), "raters": loo.raters[:50],
            "metrics": average_raws(raws),
            "per_rater": per_rater,
            "per_category": {c: {"metrics": average_raws(v)} for c, v in per_cat_raws.items() if v}}


def _baselines(ref: _Reference, ctx: ScoringContext, seed: int) -> dict:
    n = len(ref.items)
    has = np.isfinite(ref.mean)
    rng = np.random.default_rng([seed, 1])
    out = {}
    if ref.kind == "choice":
        rand = rng.choice([-1.0, 1.0], size=n)
        rand4 = rng.choice([stats.C4_A, stats.C4_B, stats.C4_TIE, stats.C4_BOTH_BAD], size=n)
        out["random"] = {"description": "picks one image of each pair at random (four-way: one of the four answers)",
                         "metrics": finish(compare(np.where(has, rand, np.nan), "choice", ref.mean, ref.majority,
                                                   ref.values, ctx, x4=np.where(has, rand4, np.nan),
                                                   ref4=ref.ref4))}
        first = np.where(has, ref.first_sign, np.nan)
        first4 = np.where(has, np.where(ref.first_sign > 0, stats.C4_A, stats.C4_B), np.nan)
        out["always_first"] = {"description": "always picks the image shown first",
                               "metrics": finish(compare(first, "choice", ref.mean, ref.majority, ref.values, ctx,
                                                         x4=first4, ref4=ref.ref4))}
        return out
    if ref.discrete:
        rand = rng.choice(ref.values, size=n)
        desc = "a rating drawn uniformly from the human rating values"
    else:
        rand = rng.uniform(ref.values.min(), ref.values.max(), size=n)
        desc = "a rating drawn uniformly between the lowest and highest human rating"
    out["random"] = {"description": desc,
                     "metrics": finish(compare(np.where(has, rand, np.nan), ref.kind, ref.mean, ref.majority,
                                               ref.values, ctx))}
    maj = ref.majority[np.isfinite(ref.majority)]
    if maj.size:
        vals, counts = np.unique(maj, return_counts=True)
        const = float(vals[np.argmax(counts)])
        out["constant"] = {"description": "always the most common human rating", "value": const,
                           "metrics": finish(compare(np.where(has, const, np.nan), ref.kind, ref.mean,
                                                     ref.majority, ref.values, ctx))}
    return out

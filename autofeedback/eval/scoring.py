"""Scoring one rating vector against the human reference: raw bootstrap estimates of every agreement metric
(`compare`), their leave-one-rater-out versions (`loo_raws`), and the {"value", "ci95", "n"} entries of
metrics.json (`finish`, `average_raws`). The agreement, the ceiling, the baselines and the ensembles all score
through here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import stats
from .protocol import LooTargets

MAX_DISCRETE = 20          # a rating scale with at most this many values counts as categorical


@dataclass(frozen=True)
class ScoringContext:
    """What every comparison with one human reference shares."""

    ref_kind: str                           # the humans' kind: score | label | choice
    groups: np.ndarray | None               # prompt code per item: pairwise accuracy within prompts (pointwise sets)
    tie_policy: str                         # autofeedback.stats.TIE_POLICIES
    rs: stats.Resampler                     # the bootstrap (whole prompts resampled, or items)
    rs_prompts: stats.Resampler | None      # resamples prompts: the within-prompt (*_per_prompt) statistics


@dataclass
class RawMetrics:
    """compare()'s result before rounding: per metric (point estimate, bootstrap values, n), plus the counts
    that finish() attaches to pairwise_accuracy and the *_per_prompt metrics."""

    estimates: dict[str, tuple[float, np.ndarray, int]] = field(default_factory=dict)
    pairs: dict | None = None               # pair counts (stats.pairwise_counts), or {"items": n} for choices
    per_prompt: dict | None = None          # {"prompts", "defined"}: prompts with items, with a defined statistic


def compare(x, xkind, ref_mean, ref_major, ref_values, ctx: ScoringContext, mask=None, x4=None, ref4=None,
            cat=None, per_prompt: bool = True) -> RawMetrics:
    """Raw metric estimates of x vs a reference: RawMetrics.estimates {name: (point, boot array, n)}.

    x4 / ref4: four-way answers (pairwise sets): accuracy_4way. cat: protocol.categorical_view() of a judge
    on another scale (binarized or rescaled values for accuracy, kappa, alpha). per_prompt: the mean over
    prompts of the within-prompt correlations (CI over prompts)."""
    rs = ctx.rs
    hkind, groups, policy = ctx.ref_kind, ctx.groups, ctx.tie_policy
    m = np.ones(len(x)) if mask is None else mask
    valid = np.isfinite(x) & np.isfinite(ref_mean) & (m > 0)
    nv = int(valid.sum())
    raw = RawMetrics()
    out = raw.estimates

    def boot(fn):
        return rs.apply(lambda w: fn(w * m))

    def point(fn):
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(fn(m[None, :])[0])

    if nv == 0:
        return raw
    if hkind == "choice":
        fn = lambda w: stats.w_choice_accuracy(x, ref_mean, w, policy)  # noqa: E731
        out["pairwise_accuracy"] = (point(fn), boot(fn), nv)
        raw.pairs = {"items": nv}
        if x4 is not None and ref4 is not None:
            v4 = np.isfinite(x4) & np.isfinite(ref4) & (m > 0)
            if v4.any():
                f4 = lambda w: stats.w_choice4_accuracy(x4, ref4, w)  # noqa: E731
                out["accuracy_4way"] = (point(f4), boot(f4), int(v4.sum()))
    else:
        xs, ys = x[valid], ref_mean[valid]
        out["spearman"] = (stats.spearman(xs, ys),
                           boot(lambda w: stats.w_spearman(x, ref_mean, w)), nv)
        taus = np.concatenate([stats.w_kendall_taus(x, ref_mean, w * m) for w in rs.weights()]) \
            if rs.n else np.full((rs.n_boot, 2), np.nan)
        out["kendall_tau_b"] = (stats.kendall_tau_b(xs, ys), taus[:, 0], nv)
        out["kendall_tau_c"] = (stats.kendall_tau_c(xs, ys), taus[:, 1], nv)
        g = None if groups is None else groups[valid]
        rp = ctx.rs_prompts
        gs = None
        if groups is not None and (rs.clusters is not None or (per_prompt and rp is not None)):
            gs = stats.group_stats(np.where(m > 0, x, np.nan), ref_mean, groups, correlations=per_prompt)
        if groups is not None and rs.clusters is not None:
            # whole prompts resampled: each prompt's pairs count once per draw of the prompt
            terms = stats.group_pair_terms(gs)
            fn = lambda wg: stats.w_grouped_pairwise_accuracy(terms, wg, policy)  # noqa: E731
            with np.errstate(invalid="ignore", divide="ignore"):
                pt = float(fn(np.ones((1, len(terms["total"]))))[0])
            out["pairwise_accuracy"] = (pt, rs.apply_units(fn), nv)
        else:
            fn = lambda w: stats.w_pairwise_accuracy(x, ref_mean, w, groups, policy)  # noqa: E731
            out["pairwise_accuracy"] = (point(fn), boot(fn), nv)
        raw.pairs = stats.pairwise_counts(xs, ys, g)
        if per_prompt and rp is not None and gs is not None:
            for name in ("spearman", "kendall_tau_b", "kendall_tau_c"):
                v = gs[name]
                nd = int(np.isfinite(v).sum())
                if nd == 0:
                    continue
                with np.errstate(invalid="ignore", divide="ignore"):
                    pt = float(stats.w_group_mean(v)[0])
                out[f"{name}_per_prompt"] = (pt, rp.apply_units(lambda wg, v=v: stats.w_group_mean(v, wg)), nd)
            raw.per_prompt = {"prompts": int((gs["n"] > 0).sum()),
                                  "defined": int(np.isfinite(gs["spearman"]).sum())}
    # same discrete scale: categorical agreement and alpha
    xc, rmaj, rvals = x, ref_major, ref_values
    if cat is not None and cat[0] is not None:
        xc, rmaj, rvals = cat[0], cat[1], cat[2]
    xv = np.unique(xc[np.isfinite(xc)])
    if hkind == "choice":
        xv = xv[np.abs(xv) <= 1]  # 2 = a failed answer counted wrong (--failed wrong)
    same_scale = (xkind == hkind or {xkind, hkind} <= {"score", "label"}) and len(rvals) <= MAX_DISCRETE \
        and np.isin(xv, rvals).all()
    if same_scale:
        vm = np.isfinite(xc) & np.isfinite(rmaj) & (m > 0)
        if vm.any():
            fa = lambda w: stats.w_accuracy(xc, rmaj, w)  # noqa: E731
            fk = lambda w: stats.w_cohen_kappa(xc, rmaj, w)  # noqa: E731
            out["accuracy"] = (point(fa), boot(fa), int(vm.sum()))
            out["cohen_kappa"] = (point(fk), boot(fk), int(vm.sum()))
            pair_major = np.column_stack([xc, rmaj])
            fn = lambda w: stats.w_krippendorff_alpha(pair_major, w, "nominal")  # noqa: E731
            out["alpha_nominal"] = (point(fn), boot(fn), int(vm.sum()))
        binary = cat is not None and cat[0] is not None and len(rvals) == 2 and hkind == "score"
        if hkind == "score" and not binary:
            pair_mean = np.column_stack([xc, ref_mean])
            for level in ("ordinal", "interval"):
                try:
                    fn = lambda w, lv=level: stats.w_krippendorff_alpha(pair_mean, w, lv)  # noqa: E731
                    out[f"alpha_{level}"] = (point(fn), boot(fn), nv)
                except ValueError:
                    pass
    return raw


def finish(raw: RawMetrics) -> dict:
    """Raw (point, boot, n) -> {"value", "ci95", "n"} (+ pair counts for pairwise_accuracy)."""
    out = {}
    pairs = raw.pairs
    for name, val in raw.estimates.items():
        point, boot, n = val
        lo, hi = stats.percentile_ci(boot)
        out[name] = {"value": stats.round_or_none(point, 6),
                     "ci95": [stats.round_or_none(lo, 6), stats.round_or_none(hi, 6)], "n": n}
        if name == "pairwise_accuracy" and pairs is not None:
            out[name]["pairs"] = pairs
        if name.endswith("_per_prompt") and raw.per_prompt:
            out[name]["prompts"] = raw.per_prompt["prompts"]
    return out


def loo_raws(x, xkind, targets: LooTargets, ref_values, ctx: ScoringContext, mask=None, x4=None) -> list[RawMetrics]:
    """Raw metric estimates of a judge vector against each rater's leave-one-out target (same items)."""
    out = []
    for e in targets.entries:
        xm = np.where(e["mask"], x, np.nan)
        x4m = None if x4 is None else np.where(e["mask"], x4, np.nan)
        out.append(compare(xm, xkind, e["mean"], e["majority"], ref_values, ctx, mask=mask, x4=x4m, ref4=e["ref4"],
                           per_prompt=mask is None))
    return out


def average_raws(raws: list[RawMetrics]) -> dict:
    """Metrics averaged over raters (point and each resample); a rater where a metric is undefined is left out."""
    names = list(dict.fromkeys(k for r in raws for k in r.estimates))
    out = {}
    for name in names:
        vals = [r.estimates[name] for r in raws if name in r.estimates]
        if not vals:
            continue
        with warnings.catch_warnings():  # a resample where every rater is undefined stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            point = float(np.nanmean([v[0] for v in vals]))
            boot = np.nanmean(np.vstack([v[1] for v in vals]), axis=0)
        lo, hi = stats.percentile_ci(boot)
        out[name] = {"value": stats.round_or_none(point, 6),
                     "ci95": [stats.round_or_none(lo, 6), stats.round_or_none(hi, 6)],
                     "n": int(max(v[2] for v in vals))}
    return out

"""Rank correlations, per-group (per-prompt) statistics and pairwise accuracy with its tie policies, each in a
plain and a weighted (bootstrap) form (autofeedback.stats has the overview; the tie policies are described there).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _sps

from .bootstrap import complete_cases, weight_rows

TIE_POLICIES = ("half", "wrong", "drop", "match")


# ------------------------------------------------------------------------------------- pair kernels
def _group_codes(*keys: np.ndarray) -> np.ndarray:
    """One integer code per distinct tuple of keys (exact float equality)."""
    if len(keys[0]) == 0:
        return np.zeros(0, dtype=np.int64)
    stacked = np.column_stack([np.asarray(k, dtype=np.float64) for k in keys])
    _, codes = np.unique(stacked, axis=0, return_inverse=True)
    return codes.reshape(-1)


def _sum_sq_by_group(codes: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Sum over groups of (total weight in the group)^2, per weight row: (B,)."""
    if w.shape[1] == 0:
        return np.zeros(w.shape[0])
    order = np.argsort(codes, kind="stable")
    cs = codes[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    g = np.add.reduceat(w[:, order], starts, axis=1)
    return (g * g).sum(1)


def _sign_quadratic_form(x: np.ndarray, y: np.ndarray, w: np.ndarray, groups: np.ndarray | None = None,
                         max_cells: int = 4_000_000) -> np.ndarray:
    """sum_ij w_i w_j sign(x_i - x_j) sign(y_i - y_j) [g_i == g_j], for each weight row.

    Pairs are formed chunk by chunk (an n x chunk kernel of about max_cells entries). The kernel
    entries are -1/0/1 and the weights small integers: float32 products are exact.
    """
    n = len(x)
    chunk = max(16, max_cells // max(n, 1))
    out = np.zeros(w.shape[0])
    w32 = w.astype(np.float32)
    for s in range(0, n, chunk):
        c = slice(s, min(n, s + chunk))
        k = np.sign(x[:, None] - x[None, c]) * np.sign(y[:, None] - y[None, c])
        if groups is not None:
            k = k * (groups[:, None] == groups[None, c])
        out += np.einsum("bj,bj->b", (w32 @ k.astype(np.float32)).astype(np.float64), w[:, c])
    return out


# --------------------------------------------------------------------------- rank correlations
def spearman(x, y) -> float:
    """Spearman's rho (scipy), NaN pairs dropped."""
    (x, y), _ = complete_cases(x, y)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(_sps.spearmanr(x, y).statistic)


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b (scipy, variant="b"), NaN pairs dropped."""
    (x, y), _ = complete_cases(x, y)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(_sps.kendalltau(x, y, variant="b").statistic)


def _weighted_ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average (mid) ranks that rankdata would give the resampled data, per weight row: (B, n)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    gid = np.empty(len(x), dtype=np.int64)
    gid[order] = np.cumsum(new) - 1
    g = np.add.reduceat(w[:, order], starts, axis=1)
    rank_g = np.cumsum(g, axis=1) - g + (g + 1) / 2
    return rank_g[:, gid]


def w_spearman(x, y, w=None) -> np.ndarray:
    (x, y), w = complete_cases(x, y, w=w)
    if len(x) < 2:
        return np.full(w.shape[0], np.nan)
    rx, ry = _weighted_ranks(x, w), _weighted_ranks(y, w)
    tot = w.sum(1, keepdims=True)
    dx = rx - (w * rx).sum(1, keepdims=True) / tot
    dy = ry - (w * ry).sum(1, keepdims=True) / tot
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * dx * dy).sum(1) / np.sqrt((w * dx * dx).sum(1) * (w * dy * dy).sum(1))


def w_kendall_tau_b(x, y, w=None) -> np.ndarray:
    (x, y), w = complete_cases(x, y, w=w)
    if len(x) < 2:
        return np.full(w.shape[0], np.nan)
    tot = w.sum(1)
    num = _sign_quadratic_form(x, y, w)
    untied_x = tot ** 2 - _sum_sq_by_group(_group_codes(x), w)
    untied_y = tot ** 2 - _sum_sq_by_group(_group_codes(y), w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / np.sqrt(untied_x * untied_y)


def kendall_tau_c(x, y) -> float:
    """Kendall's tau-c (Stuart's; scipy, variant="c"), NaN pairs dropped."""
    (x, y), _ = complete_cases(x, y)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(_sps.kendalltau(x, y, variant="c").statistic)


def _n_distinct(codes: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Number of distinct values with positive weight, per weight row: (B,)."""
    order = np.argsort(codes, kind="stable")
    cs = codes[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    return (np.add.reduceat(w[:, order], starts, axis=1) > 0).sum(1)


def w_kendall_taus(x, y, w=None) -> np.ndarray:
    """Kendall's tau-b and tau-c per weight row, sharing the O(n^2) numerator: (B, 2).

    tau-c = 2 (C - D) / (n^2 (m - 1) / m), m = min(distinct x, distinct y) (Stuart 1953; scipy's variant="c")."""
    (x, y), w = complete_cases(x, y, w=w)
    if len(x) < 2:
        return np.full((w.shape[0], 2), np.nan)
    tot = w.sum(1)
    num = _sign_quadratic_form(x, y, w)                  # = 2 (C - D): ordered pairs
    cx, cy = _group_codes(x), _group_codes(y)
    untied_x = tot ** 2 - _sum_sq_by_group(cx, w)
    untied_y = tot ** 2 - _sum_sq_by_group(cy, w)
    m = np.minimum(_n_distinct(cx, w), _n_distinct(cy, w)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau_b = num / np.sqrt(untied_x * untied_y)
        tau_c = np.where(m > 1, num / (tot ** 2 * (m - 1) / m), np.nan)
    return np.column_stack([tau_b, tau_c])


def w_kendall_tau_c(x, y, w=None) -> np.ndarray:
    return w_kendall_taus(x, y, w)[:, 1]


# ------------------------------------------------------------------------- statistics per group
def group_stats(x, y, groups, correlations: bool = True) -> dict[str, np.ndarray]:
    """Per group (e.g. the images of one prompt), over the items where x and y are both finite:
    n, pairs, s (concordant - discordant pairs), tx / ty / txy (pairs tied in x / y / both), and the
    within-group spearman, kendall_tau_b, kendall_tau_c (scipy; NaN where undefined: fewer than 2 items
    or x or y constant in the group; the same values as scipy's spearmanr and kendalltau, computed from the
    group's sign matrices). Arrays of length n_groups (groups coded 0..G-1 by np.unique)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    codes = codes.reshape(-1)
    G = int(codes.max()) + 1 if len(codes) else 0
    keys = ("n", "pairs", "s", "tx", "ty", "txy", "spearman", "kendall_tau_b", "kendall_tau_c")
    out = {k: np.zeros(G) for k in keys}
    for k in ("spearman", "kendall_tau_b", "kendall_tau_c"):
        out[k][:] = np.nan
    ok = np.isfinite(x) & np.isfinite(y)
    order = np.argsort(codes, kind="stable")
    order = order[ok[order]]
    cs = codes[order]
    bounds = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1], True]) if len(cs) else np.array([0])
    for a, b in zip(bounds[:-1], bounds[1:]):
        g = cs[a]
        idx = order[a:b]
        xs, ys = x[idx], y[idx]
        n = len(idx)
        sx = np.sign(xs[:, None] - xs[None, :])
        sy = np.sign(ys[:, None] - ys[None, :])
        pairs = n * (n - 1) / 2
        tx = ((sx == 0).sum() - n) / 2
        ty = ((sy == 0).sum() - n) / 2
        txy = (((sx == 0) & (sy == 0)).sum() - n) / 2
        out["n"][g], out["pairs"][g], out["s"][g] = n, pairs, (sx * sy).sum() / 2
        out["tx"][g], out["ty"][g], out["txy"][g] = tx, ty, txy
        if correlations and n >= 2 and tx < pairs and ty < pairs:   # neither side constant in the group
            # mid-ranks from the sign matrix: rank_i = (n + 1) / 2 + sum_j sign(x_i - x_j) / 2 (= rankdata)
            rx, ry = sx.sum(1) / 2, sy.sum(1) / 2
            out["spearman"][g] = (rx @ ry) / np.sqrt((rx @ rx) * (ry @ ry))
            out["kendall_tau_b"][g] = out["s"][g] / np.sqrt((pairs - tx) * (pairs - ty))
            m = min(np.unique(xs).size, np.unique(ys).size)
            out["kendall_tau_c"][g] = 2 * out["s"][g] / (n * n * (m - 1) / m)
    return out


def policy_ratio(concordant, judge_tied, ref_untied, both_untied, both_tied, total, tie_policy: str):
    """Pairwise accuracy from pair counts under a tie policy (module doc)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if tie_policy == "half":
            return (concordant + 0.5 * judge_tied) / ref_untied
        if tie_policy == "wrong":
            return concordant / ref_untied
        if tie_policy == "drop":
            return concordant / both_untied
        return (concordant + both_tied) / total


def group_pair_terms(gs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-group pair counts (unordered) from group_stats(): the terms of pairwise accuracy."""
    both_untied = gs["pairs"] - gs["tx"] - gs["ty"] + gs["txy"]
    ref_untied = gs["pairs"] - gs["ty"]
    return {"concordant": (both_untied + gs["s"]) / 2, "judge_tied": ref_untied - both_untied,
            "ref_untied": ref_untied, "both_untied": both_untied, "both_tied": gs["txy"], "total": gs["pairs"]}


def w_grouped_pairwise_accuracy(terms: dict[str, np.ndarray], wg, tie_policy: str = "half") -> np.ndarray:
    """Pairwise accuracy within groups when whole groups are resampled: each group's pairs counted once per
    draw of the group (wg: (B, n_groups) draw counts). Pairs never cross groups or copies of a group."""
    wg = weight_rows(wg, len(terms["total"]))
    t = {k: wg @ v for k, v in terms.items()}
    return policy_ratio(t["concordant"], t["judge_tied"], t["ref_untied"], t["both_untied"], t["both_tied"],
                        t["total"], tie_policy)


def w_group_mean(values, wg=None) -> np.ndarray:
    """Mean over groups of a per-group statistic (NaN = undefined group, left out), per weight row."""
    v = np.asarray(values, dtype=np.float64)
    d = np.isfinite(v)
    wg = weight_rows(wg, len(v))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wg @ np.where(d, v, 0.0)) / (wg @ d.astype(np.float64))


# ------------------------------------------------------------------------------ pairwise accuracy
def w_pairwise_accuracy(x, y, w=None, groups=None, tie_policy: str = "half") -> np.ndarray:
    """Share of item pairs the judge x orders like the reference y (see the module doc for ties).

    groups: only pairs of items with the same group value count (e.g. images of one prompt).
    """
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {TIE_POLICIES}, got {tie_policy!r}")
    g = np.zeros(len(np.asarray(x))) if groups is None else np.asarray(groups, dtype=np.float64)
    (x, y, g), w = complete_cases(x, y, g, w=w)
    if len(x) < 2:
        return np.full(w.shape[0], np.nan)
    c = _pair_counts(x, y, g, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        if tie_policy == "half":
            return (c["concordant"] + 0.5 * c["judge_tied"]) / c["ref_untied"]
        if tie_policy == "wrong":
            return c["concordant"] / c["ref_untied"]
        if tie_policy == "drop":
            return c["concordant"] / c["both_untied"]
        return (c["concordant"] + c["both_tied"]) / c["all"]


def _pair_counts(x, y, g, w) -> dict[str, np.ndarray]:
    """Weighted counts of ordered pairs (i != j as draws) within groups."""
    self_sq = (w * w).sum(1)
    t = _sum_sq_by_group(_group_codes(g), w)             # all ordered pairs of draws in the same group
    tx = _sum_sq_by_group(_group_codes(g, x), w)         # ... tied in x
    ty = _sum_sq_by_group(_group_codes(g, y), w)         # ... tied in y
    txy = _sum_sq_by_group(_group_codes(g, x, y), w)     # ... tied in both
    a = _sign_quadratic_form(x, y, w, groups=g)          # concordant - discordant
    both_untied = t - tx - ty + txy
    return {
        "ref_untied": t - ty,
        "both_untied": both_untied,
        "concordant": (both_untied + a) / 2,
        "discordant": (both_untied - a) / 2,
        "judge_tied": (t - ty) - both_untied,            # reference orders the pair, the judge ties
        "both_tied": txy - self_sq,                      # two draws of one item are not a pair
        "all": t - self_sq,
    }


def pairwise_counts(x, y, groups=None) -> dict[str, int]:
    """Unweighted pair counts (unordered pairs), for reports."""
    g = np.zeros(len(np.asarray(x))) if groups is None else np.asarray(groups, dtype=np.float64)
    (x, y, g), w = complete_cases(x, y, g)
    if len(x) < 2:
        return {k: 0 for k in ("pairs", "ref_untied", "concordant", "discordant", "judge_tied", "both_tied")}
    c = _pair_counts(x, y, g, w)
    return {"pairs": int(round(c["all"][0] / 2)), "ref_untied": int(round(c["ref_untied"][0] / 2)),
            "concordant": int(round(c["concordant"][0] / 2)), "discordant": int(round(c["discordant"][0] / 2)),
            "judge_tied": int(round(c["judge_tied"][0] / 2)), "both_tied": int(round(c["both_tied"][0] / 2))}


def pairwise_accuracy(x, y, groups=None, tie_policy: str = "half") -> float:
    return float(w_pairwise_accuracy(x, y, None, groups, tie_policy)[0])


def w_choice_accuracy(x, y, w=None, tie_policy: str = "half") -> np.ndarray:
    """Pairwise choices coded +1 (first), -1 (second), 0 (tie): the judge x vs the reference y. A judge value
    beyond +-1 (2: a failed answer counted wrong, autofeedback.eval.protocol) is an answer that is never right."""
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {TIE_POLICIES}, got {tie_policy!r}")
    (x, y), w = complete_cases(x, y, w=w)
    sx, sy = np.where(np.abs(x) > 1, 2.0, np.sign(x)), np.sign(y)
    right = (sx == sy) & (sy != 0)
    ref_untied = sy != 0
    judge_tied = (sx == 0) & ref_untied
    both_untied = (sx != 0) & ref_untied
    with np.errstate(invalid="ignore", divide="ignore"):
        if tie_policy == "half":
            return (w @ right + 0.5 * (w @ judge_tied)) / (w @ ref_untied)
        if tie_policy == "wrong":
            return (w @ right) / (w @ ref_untied)
        if tie_policy == "drop":
            return (w @ right) / (w @ both_untied)
        return (w @ (sx == sy)) / w.sum(1)


def choice_accuracy(x, y, tie_policy: str = "half") -> float:
    return float(w_choice_accuracy(x, y, None, tie_policy)[0])

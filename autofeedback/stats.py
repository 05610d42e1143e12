"""Agreement statistics and a vectorized bootstrap (pure numpy/scipy; no torch, no pandas).

Point estimates of the rank correlations come from scipy (`spearmanr`, `kendalltau(variant="b")`).
Confidence intervals come from a percentile bootstrap over items. A bootstrap resample is written as
*weights*: w[i] = how many times item i was drawn (multinomial counts). Every statistic here has a
weighted form `f(..., w)` that takes a (B, n) matrix of such weights and returns B values at once,
so 2,000 resamples cost a few matrix products instead of 2,000 Python calls. With w = 1 the
weighted form equals the plain statistic (tests check this against scipy).

    Resampler(n, n_boot, seed)      the resamples; the same seed gives the same resamples for every
                                    statistic, so intervals of different judges are coupled
    estimate(stat, rs, point)       {"value", "ci95", "n"} from a weighted statistic

Statistics (x = judge or rater, y = reference; NaN = missing, dropped pairwise):
    accuracy, cohen_kappa           categorical agreement (kappa: Cohen 1960, unweighted)
    spearman, kendall_tau_b         rank correlations (tau-b: ties corrected in both variables)
    pairwise_accuracy               pairs of items (optionally only pairs with the same group, e.g. the
                                    same prompt) ordered the same way, with an explicit TIE POLICY
    choice_accuracy                 the same tie policies for pairwise choices coded +1 / -1 / 0 (tie)
    krippendorff_alpha              several raters, missing values allowed; nominal / ordinal /
                                    interval / ratio metric (Krippendorff 2011, coincidence matrix)
    kendall_tau_c, w_kendall_taus   Stuart's tau-c (scipy variant="c"), and tau-b / tau-c sharing one pass
    group_stats, w_group_mean       per-group (per-prompt) Spearman / tau-b / tau-c and pair counts; the mean
                                    over groups, for groups resampled whole
    w_grouped_pairwise_accuracy     pairwise accuracy within groups when groups are resampled whole
    w_choice4_accuracy              four-way pairwise answers (A, B, tie, both bad) as arena benchmarks count them

Cluster bootstrap: Resampler(..., clusters=codes) draws whole clusters (e.g. prompts); an item's weight is
its cluster's draw count (unit_weights() gives the cluster counts themselves).

Tie policies (TIE_POLICIES), for pairs the reference orders (y_i != y_j) and the judge ties:
    half   counts 1/2 (the judge's expected score if it broke ties at random); pairs the reference
           ties are left out. The default.
    wrong  counts 0; reference ties left out.
    drop   pairs tied by the judge or by the reference are left out.
    match  every pair counts; right iff sign(x_i - x_j) == sign(y_i - y_j), so a tie is right only
           when the reference ties too (Deutsch et al. 2023, "Ties Matter", acc_eq).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats as _sps

TIE_POLICIES = ("half", "wrong", "drop", "match")
LEVELS = ("nominal", "ordinal", "interval", "ratio")
MAX_CATEGORIES = 100  # nominal/ordinal/ratio alpha build a V x V coincidence matrix


# ------------------------------------------------------------------------------------- bootstrap
class Resampler:
    """B bootstrap resamples of n units, produced in chunks of weight rows (B_chunk, n).

    Resample b draws n units with replacement; its weights are the draw counts. Chunks are
    regenerated from the seed on every call, so all statistics see the same resamples and memory
    stays at about `max_cells` floats whatever n and B are.
    """

    def __init__(self, n: int, n_boot: int = 2000, seed: int = 0, level: float = 0.95, max_cells: int = 4_000_000,
                 clusters=None):
        if n < 0 or n_boot < 1:
            raise ValueError(f"need n >= 0 and n_boot >= 1, got n={n}, n_boot={n_boot}")
        self.n, self.n_boot, self.seed, self.level = n, n_boot, seed, level
        self._total = n_boot  # resamples drawn (a subset() keeps only some of them)
        self.chunk = max(1, min(n_boot, max_cells // max(n, 1)))
        self._cache: list[np.ndarray] | None = None
        # cluster bootstrap: resample whole clusters (e.g. prompts); an item's weight is its cluster's draw count
        self.clusters = None
        self.n_units = n
        if clusters is not None:
            _, codes = np.unique(np.asarray(clusters), return_inverse=True)
            self.clusters = codes.reshape(-1).astype(np.int64)
            if len(self.clusters) != n:
                raise ValueError(f"clusters has {len(self.clusters)} entries for {n} items")
            self.n_units = int(self.clusters.max()) + 1 if n else 0
        self._rows: tuple[int, int] | None = None  # (part, parts): only resamples b with b % parts == part

    @property
    def unit(self) -> str:
        return "item" if self.clusters is None else "cluster"

    def _draws(self):
        """(weights over units (b, n_units), global index of the first row) per chunk."""
        m = self.n_units
        for k, start in enumerate(range(0, self._total, self.chunk)):
            b = min(self.chunk, self._total - start)
            rng = np.random.default_rng([self.seed, k])
            idx = rng.integers(0, m, size=(b, m)) if m else np.zeros((b, 0), dtype=np.int64)
            flat = (idx + (np.arange(b) * m)[:, None]).ravel()
            yield np.bincount(flat, minlength=b * m).reshape(b, m).astype(np.float64), start

    def _select(self, w: np.ndarray, start: int) -> np.ndarray:
        if self._rows is None:
            return w
        part, parts = self._rows
        return w[(start + np.arange(len(w))) % parts == part]

    def unit_weights(self):
        """The resamples as draw counts of the units (clusters, or items without clusters): (b, n_units)."""
        for w, start in self._draws():
            yield self._select(w, start)

    def weights(self):
        if self._cache is not None:
            yield from self._cache
            return
        chunks = []
        for w, start in self._draws():
            if self.clusters is not None:
                w = w[:, self.clusters]
            w = self._select(w, start)
            w.flags.writeable = False
            if self.chunk == self.n_boot == self._total:  # everything fits in one chunk: keep it for the next statistic
                chunks.append(w)
            yield w
        if chunks:
            self._cache = chunks

    def subset(self, part: int, parts: int) -> "Resampler":
        """The same resamples, only those with index b % parts == part (for a statistic that takes turns
        between `parts` variants, e.g. one fold split per resample)."""
        out = Resampler.__new__(Resampler)
        out.__dict__.update(self.__dict__)
        out._cache = None
        out._rows = (part, parts)
        out.n_boot = len(range(part, self.n_boot, parts))
        return out

    def apply(self, stat: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """stat(weights (b, n)) -> (b,) for every chunk; returns all B values."""
        if self.n == 0:
            return np.full(self.n_boot, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):  # an undefined resample is NaN, left out of the CI
            return np.concatenate([np.asarray(stat(w), dtype=np.float64).reshape(-1) for w in self.weights()])

    def apply_units(self, stat: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """stat(unit weights (b, n_units)) -> (b,): for statistics that are sums over clusters."""
        if self.n == 0:
            return np.full(self.n_boot, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.concatenate([np.asarray(stat(w), dtype=np.float64).reshape(-1) for w in self.unit_weights()])


def percentile_ci(boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(boot, [a, 1 - a])
    return float(lo), float(hi)


def estimate(stat: Callable[[np.ndarray], np.ndarray], rs: Resampler, point: float | None = None,
             n: int | None = None, digits: int = 6) -> dict:
    """{"value": point, "ci95": [lo, hi], "n": n}; point defaults to stat at weights 1."""
    if point is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            point = float(np.asarray(stat(np.ones((1, rs.n))))[0]) if rs.n else float("nan")
    lo, hi = percentile_ci(rs.apply(stat), rs.level)
    return {"value": _round(point, digits), "ci95": [_round(lo, digits), _round(hi, digits)],
            "n": int(rs.n if n is None else n)}


def _round(v: float, digits: int) -> float | None:
    v = float(v)
    return None if not np.isfinite(v) else round(v, digits)


# ------------------------------------------------------------------------------------- helpers
def _w2(w, n: int) -> np.ndarray:
    if w is None:
        return np.ones((1, n))
    w = np.asarray(w, dtype=np.float64)
    return w.reshape(1, -1) if w.ndim == 1 else w


def _valid(*arrays: np.ndarray, w=None):
    """Keep items where every array is finite; returns (arrays..., weights (B, n_valid))."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    n = len(arrays[0])
    for a in arrays:
        if len(a) != n:
            raise ValueError(f"arrays of different lengths: {[len(a) for a in arrays]}")
    keep = np.ones(n, dtype=bool)
    for a in arrays:
        keep &= np.isfinite(a)
    w = _w2(w, n)
    keep &= (w != 0).any(0)  # items no resample draws (e.g. outside a category) change nothing
    return [a[keep] for a in arrays], w[:, keep]


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
    (x, y), _ = _valid(x, y)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(_sps.spearmanr(x, y).statistic)


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b (scipy, variant="b"), NaN pairs dropped."""
    (x, y), _ = _valid(x, y)
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
    (x, y), w = _valid(x, y, w=w)
    if len(x) < 2:
        return np.full(w.shape[0], np.nan)
    rx, ry = _weighted_ranks(x, w), _weighted_ranks(y, w)
    tot = w.sum(1, keepdims=True)
    dx = rx - (w * rx).sum(1, keepdims=True) / tot
    dy = ry - (w * ry).sum(1, keepdims=True) / tot
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w * dx * dy).sum(1) / np.sqrt((w * dx * dx).sum(1) * (w * dy * dy).sum(1))


def w_kendall_tau_b(x, y, w=None) -> np.ndarray:
    (x, y), w = _valid(x, y, w=w)
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
    (x, y), _ = _valid(x, y)
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
    (x, y), w = _valid(x, y, w=w)
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
    wg = _w2(wg, len(terms["total"]))
    t = {k: wg @ v for k, v in terms.items()}
    return policy_ratio(t["concordant"], t["judge_tied"], t["ref_untied"], t["both_untied"], t["both_tied"],
                        t["total"], tie_policy)


def w_group_mean(values, wg=None) -> np.ndarray:
    """Mean over groups of a per-group statistic (NaN = undefined group, left out), per weight row."""
    v = np.asarray(values, dtype=np.float64)
    d = np.isfinite(v)
    wg = _w2(wg, len(v))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wg @ np.where(d, v, 0.0)) / (wg @ d.astype(np.float64))


# ------------------------------------------------------------------------ four-way pairwise answers
# A pairwise answer with four outcomes, as arena benchmarks collect them (GenAI-Arena: leftvote, rightvote,
# tievote, bothbad_vote). Codes: A (first image better), B, TIE (both good), BOTH_BAD, TIE_ANY (a judge's
# undifferentiated tie, e.g. "[[A=B]]": right for a human tie and for a human both-bad), WRONG (a failed
# or position-inconsistent judge answer counted as wrong).
C4_A, C4_B, C4_TIE, C4_BOTH_BAD, C4_TIE_ANY, C4_WRONG = 1.0, 2.0, 3.0, 4.0, 5.0, 0.0


def w_choice4_accuracy(x, y, w=None) -> np.ndarray:
    """Exact agreement of four-way answers: the judge's code x vs the human code y (NaN = left out)."""
    (x, y), w = _valid(x, y, w=w)
    right = (x == y) | ((x == C4_TIE_ANY) & np.isin(y, (C4_TIE, C4_BOTH_BAD)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ right.astype(np.float64)) / w.sum(1)


# ------------------------------------------------------------------------------ pairwise accuracy
def w_pairwise_accuracy(x, y, w=None, groups=None, tie_policy: str = "half") -> np.ndarray:
    """Share of item pairs the judge x orders like the reference y (see the module doc for ties).

    groups: only pairs of items with the same group value count (e.g. images of one prompt).
    """
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {TIE_POLICIES}, got {tie_policy!r}")
    g = np.zeros(len(np.asarray(x))) if groups is None else np.asarray(groups, dtype=np.float64)
    (x, y, g), w = _valid(x, y, g, w=w)
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
    (x, y, g), w = _valid(x, y, g)
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
    beyond +-1 (2: a failed answer counted wrong, autofeedback.protocol) is an answer that is never right."""
    if tie_policy not in TIE_POLICIES:
        raise ValueError(f"tie_policy must be one of {TIE_POLICIES}, got {tie_policy!r}")
    (x, y), w = _valid(x, y, w=w)
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


# ------------------------------------------------------------------------ categorical agreement
def w_accuracy(x, y, w=None) -> np.ndarray:
    (x, y), w = _valid(x, y, w=w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ (x == y)) / w.sum(1)


def accuracy(x, y) -> float:
    return float(w_accuracy(x, y)[0])


def w_cohen_kappa(x, y, w=None) -> np.ndarray:
    """Cohen's kappa = (p_o - p_e) / (1 - p_e) over the categories either rater used."""
    (x, y), w = _valid(x, y, w=w)
    cats, codes = np.unique(np.r_[x, y], return_inverse=True)
    k = len(cats)
    cx, cy = codes[:len(x)], codes[len(x):]
    onehot = np.zeros((len(x), k * k))
    onehot[np.arange(len(x)), cx * k + cy] = 1.0
    conf = (w @ onehot).reshape(-1, k, k)
    tot = conf.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = conf / tot[:, None, None]
        po = np.trace(p, axis1=1, axis2=2)
        pe = (p.sum(2) * p.sum(1)).sum(1)
        return (po - pe) / (1 - pe)


def cohen_kappa(x, y) -> float:
    return float(w_cohen_kappa(x, y)[0])


# ----------------------------------------------------------------------------- Krippendorff
def w_krippendorff_alpha(ratings, w=None, level: str = "interval") -> np.ndarray:
    """Krippendorff's alpha for a units x raters matrix (NaN = not rated), per weight row over units.

        alpha = 1 - D_o / D_e = 1 - (n - 1) * sum_ck o_ck d2_ck / sum_ck n_c n_k d2_ck

    o is the coincidence matrix (each unit with m >= 2 values adds its ordered value pairs of
    different raters, divided by m - 1), n_c its margins, n the number of pairable values, d2 the
    squared difference of the metric. Interval alpha is computed from per-unit sums (any number of
    distinct values); the other levels from the coincidence matrix (at most MAX_CATEGORIES values).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    r = np.asarray(ratings, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"ratings must be units x raters, got shape {r.shape}")
    w = _w2(w, r.shape[0])
    present = np.isfinite(r)
    m = present.sum(1)
    keep = m >= 2                                      # only pairable units count
    r, present, m, w = r[keep], present[keep], m[keep].astype(np.float64), w[:, keep]
    if r.shape[0] == 0:
        return np.full(w.shape[0], np.nan)
    if level == "interval":
        v = np.where(present, r, 0.0)
        s1, s2 = v.sum(1), (v * v).sum(1)
        within = 2 * (m * s2 - s1 * s1) / (m - 1)
        n = w @ m
        t1, t2 = w @ s1, w @ s2
        with np.errstate(invalid="ignore", divide="ignore"):
            return 1 - (n - 1) * (w @ within) / (2 * (n * t2 - t1 * t1))
    values = np.unique(r[present])
    if len(values) > MAX_CATEGORIES:
        raise ValueError(f"{level} alpha needs at most {MAX_CATEGORIES} distinct values, got {len(values)}")
    k = len(values)
    counts = np.zeros((r.shape[0], k))                 # n_uc: how often value c occurs in unit u
    for j in range(r.shape[1]):
        rows = np.flatnonzero(present[:, j])
        counts[rows, np.searchsorted(values, r[rows, j])] += 1
    unit_o = (counts[:, :, None] * counts[:, None, :]
              - counts[:, :, None] * np.eye(k)[None]) / (m - 1)[:, None, None]
    o = (w @ unit_o.reshape(len(m), k * k)).reshape(-1, k, k)
    nc = o.sum(2)
    n = nc.sum(1)
    d2 = _delta2(values, nc, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        do = (o * d2).sum((1, 2))
        de = (nc[:, :, None] * nc[:, None, :] * d2).sum((1, 2))
        return 1 - (n - 1) * do / de


def _delta2(values: np.ndarray, nc: np.ndarray, level: str) -> np.ndarray:
    """Squared metric differences d2[b, c, k] (ordinal depends on the margins n_c)."""
    b, k = nc.shape
    if level == "nominal":
        return np.broadcast_to(1.0 - np.eye(k), (b, k, k))
    if level == "ratio":
        s = values[:, None] + values[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.where(s == 0, 0.0, (values[:, None] - values[None, :]) / s)
        return np.broadcast_to(d * d, (b, k, k))
    if level == "ordinal":
        # for c <= k: sum_{g=c..k} n_g - (n_c + n_k)/2 = cum_k - cum_c + (n_c - n_k)/2; symmetric.
        cum = np.cumsum(nc, axis=1)
        d = cum[:, None, :] - cum[:, :, None] + (nc[:, :, None] - nc[:, None, :]) / 2
        return d * d
    d = values[:, None] - values[None, :]
    return np.broadcast_to(d * d, (b, k, k))


def krippendorff_alpha(ratings, level: str = "interval") -> float:
    return float(w_krippendorff_alpha(ratings, None, level)[0])

"""Judge ensembles, cross-fitted learned combinations, calibration and cost-aware judge selection.

Pure numpy/scipy; works on an items x judges matrix X (NaN = the judge did not rate the item). `pairs --ensemble`
combines judges with it; `eval --ensemble` scores the combinations against humans (autofeedback.eval.ensembles).

Combinations (METHODS), one score per item:
    zmean     mean of the judges' z-scores (each judge standardized over the items it rated)
    rankmean  mean of the judges' percentile ranks ((mid-rank - 1/2) / n_rated)
    vote      share of judges voting "aligned": a yes/no judge (values in {0, 1}) votes its label, a
              score judge votes yes when its score is >= its own mean; the majority label is vote > 1/2
              (an even split is 1/2, a tie)
    learned   ridge regression (L2 = `ridge`, on z-scored judge scores) fitted to the human mean,
              cross-fitted: out-of-fold predictions only
    logistic  L2 logistic regression on z-scored judge scores predicting the binarized human label
              (human mean >= the aligned threshold), cross-fitted: the out-of-fold P(aligned)

Missing values: zmean / rankmean / vote average over the judges present for the item (an item no member
rated stays missing). The learned combinations impute a missing z-score with 0 (the judge's training
mean) and add no indicator.

Cross-fitting (`folds`): items are split into K folds by group (prompt_id when every item has one, so
the images of one prompt are never both in training and test data; else each item is its own group),
groups assigned to folds at random (seeded). For each fold the model - including the z-scoring means
and standard deviations - is fitted on the other K-1 folds' items that have a human reference, and
predicts the held-out fold. Every reported number of a learned combination is on out-of-fold
predictions; no item's own human label is ever used to predict it.

Calibration (`calibrate`): the same cross-fitting maps one raw score to P(aligned) with isotonic
regression (scipy.optimize.isotonic_regression, non-decreasing, clipped to [0, 1]; values between fitted
points interpolated, outside clamped) or Platt scaling (1-D logistic regression). Expected calibration
error: ECE = sum_b (n_b / n) |mean(aligned in b) - mean(p in b)| over `bins` equal-width bins of the
predicted probability on [0, 1] (the last bin closed); Brier = mean (p - aligned)^2.

Selection (`greedy_select`): start from no judge; repeatedly add the judge that buys the most gain in
the z-mean's agreement per dollar (free judges first, by gain), while the total cost stays within the
budget and the gain is positive. On all items that is in-sample (tuning on the test items).

Nested selection (`nested_predictions`, issue #22): the same selection and the learned weights made inside each
training fold only, over several fold seeds; each held-out fold is predicted by a model that never saw its
labels. autofeedback.eval.ensembles.mixed_raw turns the per-seed out-of-fold predictions into one estimate whose
CI holds the seed-to-seed spread (resample b uses seed b mod R).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
from scipy import stats as _sps

from . import stats

METHODS = ("zmean", "rankmean", "vote", "learned", "logistic")
LEARNED = ("learned", "logistic")
CALIBRATION = ("isotonic", "platt")


# ============================================================================== combinations
def zscores(X: np.ndarray, mean=None, std=None) -> np.ndarray:
    """Columns standardized by (mean, std) (default: of the column's finite values); a constant
    column becomes 0 where present."""
    X = np.asarray(X, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        mu = np.nanmean(X, axis=0) if mean is None else mean
        sd = np.nanstd(X, axis=0) if std is None else std
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    mu = np.where(np.isfinite(mu), mu, 0.0)
    return (X - mu) / sd


@contextlib.contextmanager
def _quiet():
    """nanmean / nanstd of an all-missing column: NaN without a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def rowmean(Z: np.ndarray) -> np.ndarray:
    """Mean over the finite values of each row (NaN where a row has none)."""
    present = np.isfinite(Z)
    cnt = present.sum(1)
    s = np.where(present, Z, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)


def zmean(X) -> np.ndarray:
    return rowmean(zscores(X))


def rankmean(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    R = np.full(X.shape, np.nan)
    for j in range(X.shape[1]):
        ok = np.isfinite(X[:, j])
        if ok.any():
            R[ok, j] = (_sps.rankdata(X[ok, j]) - 0.5) / ok.sum()
    return rowmean(R)


def votes(X) -> np.ndarray:
    """Binary votes per judge: labels as given, scores >= the judge's mean."""
    X = np.asarray(X, dtype=np.float64)
    V = np.full(X.shape, np.nan)
    for j in range(X.shape[1]):
        ok = np.isfinite(X[:, j])
        if not ok.any():
            continue
        col = X[ok, j]
        V[ok, j] = col if np.isin(col, (0.0, 1.0)).all() else (col >= col.mean()).astype(np.float64)
    return V


def vote(X) -> np.ndarray:
    """Share of the judges present that vote aligned (> 1/2: majority yes; 1/2: a tie)."""
    return rowmean(votes(X))


# ============================================================================== learned models
def fit_ridge(Z: np.ndarray, y: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Least squares with intercept and L2 penalty `ridge` (not on the intercept): coefficients (1 + p)."""
    A = np.column_stack([np.ones(len(Z)), Z])
    P = ridge * np.eye(A.shape[1])
    P[0, 0] = 0.0
    return np.linalg.solve(A.T @ A + P, A.T @ y)


def fit_logistic(Z: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> np.ndarray:
    """L2-penalized logistic regression by Newton's method: coefficients (1 + p), intercept first."""
    A = np.column_stack([np.ones(len(Z)), Z])
    beta = np.zeros(A.shape[1])
    P = l2 * np.eye(A.shape[1])
    P[0, 0] = 0.0
    for _ in range(iters):
        p = _sigmoid(A @ beta)
        grad = A.T @ (p - y) + P @ beta
        H = (A * (p * (1 - p))[:, None]).T @ A + P + 1e-9 * np.eye(A.shape[1])
        step = np.linalg.solve(H, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def _sigmoid(t):
    return 1.0 / (1.0 + np.exp(-np.clip(t, -500, 500)))


def fold_ids(n: int, groups=None, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold of each item; all items of one group share a fold. Groups are shuffled (seeded), then dealt
    round-robin so fold sizes in groups differ by at most one."""
    if groups is None:
        codes = np.arange(n)
    else:
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
        codes = codes.reshape(-1)
    n_groups = int(codes.max()) + 1 if n else 0
    k = max(2, min(folds, n_groups))
    perm = np.random.default_rng([seed, 7]).permutation(n_groups)
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    fold_of_group[perm] = np.arange(n_groups) % k
    return fold_of_group[codes]


def cross_fit(X: np.ndarray, target: np.ndarray, method: str, fold: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Out-of-fold predictions of a learned combination (NaN for items no member rated).

    X: items x judges (NaN missing); target: the human mean (learned) or 0/1 aligned (logistic), NaN =
    no human reference (never used for fitting)."""
    X = np.asarray(X, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    out = np.full(len(X), np.nan)
    rated = np.isfinite(X).any(1)
    for f in np.unique(fold):
        test = (fold == f) & rated
        train = (fold != f) & rated & np.isfinite(target)
        if not test.any() or train.sum() < 3:
            continue
        Xt = X[train]
        with _quiet():
            mu, sd = np.nanmean(Xt, axis=0), np.nanstd(Xt, axis=0)
        Zt = np.nan_to_num(zscores(Xt, mu, sd), nan=0.0)
        Zs = np.nan_to_num(zscores(X[test], mu, sd), nan=0.0)
        y = target[train]
        if method == "learned":
            beta = fit_ridge(Zt, y, ridge)
            out[test] = beta[0] + Zs @ beta[1:]
        elif method == "logistic":
            if np.unique(y).size < 2:  # one class in training: predict its rate
                out[test] = y.mean()
                continue
            beta = fit_logistic(Zt, y, ridge)
            out[test] = _sigmoid(beta[0] + Zs @ beta[1:])
        else:
            raise ValueError(f"unknown learned method {method!r}")
    return out


def combine(X, method: str, ref_mean=None, aligned=None, fold=None, ridge: float = 1.0) -> np.ndarray:
    """One ensemble score per item. Learned methods need the reference and the folds."""
    if method == "zmean":
        return zmean(X)
    if method == "rankmean":
        return rankmean(X)
    if method == "vote":
        return vote(X)
    if method == "learned":
        return cross_fit(X, ref_mean, "learned", fold, ridge)
    if method == "logistic":
        return cross_fit(X, aligned, "logistic", fold, ridge)
    raise ValueError(f"unknown ensemble method {method!r}; methods: {', '.join(METHODS)}")


def learned_weights(X, ref_mean, aligned, method: str, ridge: float = 1.0) -> list[float] | None:
    """The combination fitted on all items (for display only: reported numbers are out-of-fold)."""
    X = np.asarray(X, dtype=np.float64)
    target = ref_mean if method == "learned" else aligned
    ok = np.isfinite(X).any(1) & np.isfinite(target)
    if ok.sum() < 3:
        return None
    Z = np.nan_to_num(zscores(X[ok]), nan=0.0)
    y = np.asarray(target, dtype=np.float64)[ok]
    if method == "logistic" and np.unique(y).size < 2:
        return None
    beta = fit_ridge(Z, y, ridge) if method == "learned" else fit_logistic(Z, y, ridge)
    return [round(float(b), 6) for b in beta]


# ============================================================================== calibration
def _isotonic_fit(x: np.ndarray, y: np.ndarray):
    from scipy.optimize import isotonic_regression

    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    # one point per distinct x (mean of y), weighted by its count
    ux, start, cnt = np.unique(xs, return_index=True, return_counts=True)
    ym = np.add.reduceat(ys, start) / cnt
    fit = isotonic_regression(ym, weights=cnt.astype(np.float64), increasing=True).x
    return lambda t: np.clip(np.interp(t, ux, fit), 0.0, 1.0)


def _platt_fit(x: np.ndarray, y: np.ndarray):
    mu, sd = x.mean(), x.std() or 1.0
    beta = fit_logistic(((x - mu) / sd)[:, None], y, l2=1e-3)
    return lambda t: _sigmoid(beta[0] + beta[1] * (t - mu) / sd)


def calibrate(x: np.ndarray, aligned: np.ndarray, fold: np.ndarray, method: str = "isotonic") -> np.ndarray:
    """Cross-fitted P(aligned | raw score): each fold mapped by a fit on the other folds."""
    if method not in CALIBRATION:
        raise ValueError(f"calibration must be one of {CALIBRATION}, got {method!r}")
    x = np.asarray(x, dtype=np.float64)
    aligned = np.asarray(aligned, dtype=np.float64)
    out = np.full(len(x), np.nan)
    for f in np.unique(fold):
        test = (fold == f) & np.isfinite(x)
        train = (fold != f) & np.isfinite(x) & np.isfinite(aligned)
        if not test.any() or train.sum() < 3:
            continue
        xt, yt = x[train], aligned[train]
        if np.unique(yt).size < 2 or np.ptp(xt) == 0:
            out[test] = yt.mean()
            continue
        fn = _isotonic_fit(xt, yt) if method == "isotonic" else _platt_fit(xt, yt)
        out[test] = fn(x[test])
    return out


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    return np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)


def w_ece(p, y, w=None, bins: int = 10) -> np.ndarray:
    """Expected calibration error per weight row (equal-width bins on [0, 1])."""
    (p, y), w = stats.complete_cases(p, y, w=w)
    onehot = np.zeros((len(p), bins))
    onehot[np.arange(len(p)), _bin_index(p, bins)] = 1.0
    nb = w @ onehot
    sp = w @ (onehot * p[:, None])
    sy = w @ (onehot * y[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(sy - sp).sum(1) / nb.sum(1)


def w_brier(p, y, w=None) -> np.ndarray:
    (p, y), w = stats.complete_cases(p, y, w=w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ ((p - y) ** 2)) / w.sum(1)


def reliability(p, y, bins: int = 10) -> list[dict]:
    """Reliability diagram points: per non-empty bin, its range, n, mean predicted p, share aligned."""
    ok = np.isfinite(p) & np.isfinite(y)
    p, y = p[ok], y[ok]
    b = _bin_index(p, bins)
    out = []
    for k in range(bins):
        m = b == k
        if m.any():
            out.append({"lo": k / bins, "hi": (k + 1) / bins, "n": int(m.sum()),
                        "mean_pred": round(float(p[m].mean()), 6), "frac_aligned": round(float(y[m].mean()), 6)})
    return out


# ============================================================================== selection
def greedy_select(X: np.ndarray, names: list[str], costs: dict[str, float], score_fn, budget: float | None = None,
                  min_gain: float = 1e-9) -> list[dict]:
    """Greedy judge selection under a cost budget.

    score_fn(vector) -> agreement (e.g. Spearman with the human mean) of a combined score. Each step adds
    the affordable judge with the largest gain per dollar (a free judge: the largest gain, before any
    paid one); stops when nothing affordable improves the z-mean. Returns the steps:
    [{judge, cost_usd, total_cost_usd, value, gain}]."""
    chosen: list[int] = []
    total, current = 0.0, float("-inf")
    steps = []
    left = set(range(len(names)))
    while left:
        best = None
        for j in sorted(left):
            c = float(costs.get(names[j], 0.0) or 0.0)
            if budget is not None and total + c > budget + 1e-12:
                continue
            v = score_fn(zmean(X[:, chosen + [j]]))
            if not np.isfinite(v):
                continue
            gain = v - (current if np.isfinite(current) else 0.0)
            if gain <= min_gain:
                continue
            key = (c <= 0, gain / c if c > 0 else gain)
            if best is None or key > best[0]:
                best = (key, j, v, gain, c)
        if best is None:
            break
        _, j, v, gain, c = best
        chosen.append(j)
        left.discard(j)
        total += c
        steps.append({"judge": names[j], "cost_usd": c, "total_cost_usd": round(total, 6), "value": round(v, 6),
                      "gain": round(gain, 6)})
        current = v
    return steps


# ============================================================================== nested selection
def _fit_predict(X: np.ndarray, target: np.ndarray, train: np.ndarray, test: np.ndarray, method: str,
                 ridge: float) -> np.ndarray:
    """A learned combination fitted on the train items (z-scoring included), predicting the test items."""
    return cross_fit(np.where((train | test)[:, None], X, np.nan), np.where(train, target, np.nan), method,
                     np.where(test, 0, 1), ridge)[test]


def nested_predictions(X: np.ndarray, names: list[str], ref_mean: np.ndarray, aligned: np.ndarray, groups,
                       methods, folds: int = 5, repeats: int = 5, seed: int = 0, ridge: float = 1.0,
                       costs: dict[str, float] | None = None, budget: float | None = None) -> tuple[dict, dict]:
    """Nested cross-fitting of *selected* ensembles: for each of `repeats` fold splits (fold seeds seed,
    seed+1, ...; folds grouped like fold_ids) and each fold, the members are chosen by greedy_select (z-mean
    Spearman with the human mean, costs and budget as given) on the other folds only, the learned weights are
    fitted there too, and the combination predicts the held-out fold. No held-out item's label is used to
    choose or weight anything that predicts it.

    Returns ({method: (repeats, n) out-of-fold predictions}, {judge: share of the fits that selected it})."""
    n = len(ref_mean)
    preds = {m: np.full((repeats, n), np.nan) for m in methods}
    counts = np.zeros(len(names))
    fits = 0
    rated = np.isfinite(X).any(1)
    for r in range(repeats):
        fold = fold_ids(n, groups, folds, seed + r)
        for f in np.unique(fold):
            test = (fold == f) & rated
            train = (fold != f) & rated & np.isfinite(ref_mean)
            if not test.any() or train.sum() < 3:
                continue
            yt = ref_mean[train]
            steps = greedy_select(X[train], names, costs or {}, lambda v, yt=yt: stats.spearman(v, yt), budget)
            sel = [names.index(st["judge"]) for st in steps]
            fits += 1
            if not sel:
                continue
            counts[sel] += 1
            Xs = X[:, sel]
            for m in methods:
                if m in LEARNED:
                    target = ref_mean if m == "learned" else aligned
                    if m == "logistic" and np.unique(target[train & np.isfinite(target)]).size < 2:
                        preds[m][r, test] = np.nanmean(target[train])
                        continue
                    preds[m][r, test] = _fit_predict(Xs, target, train, test, m, ridge)
                else:
                    preds[m][r, test] = combine(Xs, m)[test]
    freq = {name: round(float(c / fits), 6) if fits else None for name, c in zip(names, counts)}
    return preds, freq

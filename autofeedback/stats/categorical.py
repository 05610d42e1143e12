"""Categorical agreement: accuracy, Cohen's kappa, Krippendorff's alpha, and four-way pairwise answers, each in
a plain and a weighted (bootstrap) form (autofeedback.stats has the overview).
"""

from __future__ import annotations

import numpy as np

from .bootstrap import complete_cases, weight_rows

LEVELS = ("nominal", "ordinal", "interval", "ratio")
MAX_CATEGORIES = 100  # nominal/ordinal/ratio alpha build a V x V coincidence matrix


# ------------------------------------------------------------------------ four-way pairwise answers
# A pairwise answer with four outcomes, as arena benchmarks collect them (GenAI-Arena: leftvote, rightvote,
# tievote, bothbad_vote). Codes: A (first image better), B, TIE (both good), BOTH_BAD, TIE_ANY (a judge's
# undifferentiated tie, e.g. "[[A=B]]": right for a human tie and for a human both-bad), WRONG (a failed
# or position-inconsistent judge answer counted as wrong).
C4_A, C4_B, C4_TIE, C4_BOTH_BAD, C4_TIE_ANY, C4_WRONG = 1.0, 2.0, 3.0, 4.0, 5.0, 0.0


def w_choice4_accuracy(x, y, w=None) -> np.ndarray:
    """Exact agreement of four-way answers: the judge's code x vs the human code y (NaN = left out)."""
    (x, y), w = complete_cases(x, y, w=w)
    right = (x == y) | ((x == C4_TIE_ANY) & np.isin(y, (C4_TIE, C4_BOTH_BAD)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ right.astype(np.float64)) / w.sum(1)


# ------------------------------------------------------------------------ categorical agreement
def w_accuracy(x, y, w=None) -> np.ndarray:
    (x, y), w = complete_cases(x, y, w=w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ (x == y)) / w.sum(1)


def accuracy(x, y) -> float:
    return float(w_accuracy(x, y)[0])


def w_cohen_kappa(x, y, w=None) -> np.ndarray:
    """Cohen's kappa = (p_o - p_e) / (1 - p_e) over the categories either rater used."""
    (x, y), w = complete_cases(x, y, w=w)
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
    w = weight_rows(w, r.shape[0])
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

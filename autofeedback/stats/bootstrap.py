"""The vectorized bootstrap: resamples as weight rows, percentile intervals, and the helpers every weighted
statistic uses (autofeedback.stats has the overview).

A bootstrap resample is written as *weights*: w[i] = how many times item i was drawn (multinomial counts).
Every statistic in autofeedback.stats has a weighted form `f(..., w)` that takes a (B, n) matrix of such
weights and returns B values at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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
    return {"value": round_or_none(point, digits), "ci95": [round_or_none(lo, digits), round_or_none(hi, digits)],
            "n": int(rs.n if n is None else n)}


def round_or_none(v: float, digits: int) -> float | None:
    v = float(v)
    return None if not np.isfinite(v) else round(v, digits)


# ------------------------------------------------------------------------------------- helpers
def weight_rows(w, n: int) -> np.ndarray:
    if w is None:
        return np.ones((1, n))
    w = np.asarray(w, dtype=np.float64)
    return w.reshape(1, -1) if w.ndim == 1 else w


def complete_cases(*arrays: np.ndarray, w=None):
    """Keep items where every array is finite; returns (arrays..., weights (B, n_valid))."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    n = len(arrays[0])
    for a in arrays:
        if len(a) != n:
            raise ValueError(f"arrays of different lengths: {[len(a) for a in arrays]}")
    keep = np.ones(n, dtype=bool)
    for a in arrays:
        keep &= np.isfinite(a)
    w = weight_rows(w, n)
    keep &= (w != 0).any(0)  # items no resample draws (e.g. outside a category) change nothing
    return [a[keep] for a in arrays], w[:, keep]

"""The evaluation protocol of `autofeedback eval` (issue #22): what is compared to what, so that a number
can be published.

    leave-one-rater-out targets    each rater j vs the mean of the other n-1 raters (the human ceiling), and
                                   every judge against the *same* n-1 means (`metrics_loo`), averaged over j;
                                   the per-rater values are kept, so a deviant rater is visible
    four-way pairwise answers      A, B, tie (both good), both bad — and a judge's undifferentiated tie
                                   ("[[A=B]]") — parsed from the words arena benchmarks use (GenAI-Arena:
                                   leftvote / rightvote / tievote / bothbad_vote; judge verdicts [[A>B]],
                                   [[B>A]], [[A=B=Good]], [[A=B=Bad]], [[A=B]])
    failed judge answers           a judge that has rows for an item but no usable answer: counted wrong
                                   (default, as arena benchmarks do), as a tie, or left out (--failed)
    scales                         judge and humans on different scales: which metrics are skipped and
                                   why; --judge-threshold (binary: judge >= T is "aligned") or --judge-scale
                                   (linear rescale onto the human values) to compute accuracy, kappa, alpha
    column maps and label words    --map TARGET=SOURCE with constants, joins and per-file roles; --labels
                                   yes=1,partly=0.5,no=0

Pure numpy/pandas; the statistics themselves are in autofeedback.stats, the scoring against these targets
in autofeedback.eval.scoring (loo_raws).
"""

from __future__ import annotations

import contextlib
import re
import warnings

import numpy as np

from .. import stats
from ..errors import InputError

# ============================================================================ four-way pairwise answers
# canonical orientation: "A" = the first image of the pair (for image_ids pairs, eval.ratings maps it to the
# sorted-first image like the three-way sign)
_A = {"leftvote", "left_vote", "a>b", "a>>b", "a_better", "a is better"}
_B = {"rightvote", "right_vote", "b>a", "b>>a", "b_better", "b is better"}
_TIE = {"tievote", "tie_vote", "a=b=good", "tie_good", "both_good", "both good", "bothgood"}
_BOTH_BAD = {"bothbad_vote", "bothbad", "both_bad", "both bad", "both-bad", "a=b=bad", "tie_bad", "bothbadvote"}
_TIE_ANY = {"a=b", "a==b"}
CODE = {"A": stats.C4_A, "B": stats.C4_B, "tie": stats.C4_TIE, "both_bad": stats.C4_BOTH_BAD,
        "tie_any": stats.C4_TIE_ANY}
NAMES4 = {v: k for k, v in CODE.items()} | {stats.C4_WRONG: "failed"}


def arena_answer(value) -> str | None:
    """'A' | 'B' | 'tie' | 'both_bad' | 'tie_any' for an arena-style answer, else None.

    "[[A>B]]" and "A>B" alike; a bracketed verdict holding another bracket ("[[Model A: [[A>B]] ]") is not
    an answer (GenAI-Bench counts it wrong, and so does this parser)."""
    s = str(value).strip().lower()
    if s.startswith("[[") and s.endswith("]]"):
        s = s[2:-2]
        if "[" in s or "]" in s:
            return None
    s = s.strip()
    squeezed = re.sub(r"\s+", "", s)
    for vocab, name in ((_A, "A"), (_B, "B"), (_TIE, "tie"), (_BOTH_BAD, "both_bad"), (_TIE_ANY, "tie_any")):
        if s in vocab or squeezed in vocab:
            return name
    return None


def aggregate4(codes, role: str) -> float:
    """One four-way code per (item, rater) from its rows: the unique code; rows that disagree (a judge asked in
    both orders answering differently, a rater's repeats) are a failed answer for a judge, NaN for a human."""
    c = np.asarray([v for v in codes if np.isfinite(v)], dtype=np.float64)
    if c.size == 0:
        return float("nan")
    u = np.unique(c)
    if u.size == 1:
        return float(u[0])
    return stats.C4_WRONG if role == "judge" else float("nan")


def majority4(matrix: np.ndarray) -> np.ndarray:
    """The most common four-way code per item over raters (columns); NaN without a unique mode."""
    out = np.full(matrix.shape[0], np.nan)
    for i, row in enumerate(matrix):
        row = row[np.isfinite(row)]
        if row.size:
            vals, counts = np.unique(row, return_counts=True)
            if (counts == counts.max()).sum() == 1:
                out[i] = vals[np.argmax(counts)]
    return out


def confusion4(x4: np.ndarray, ref4: np.ndarray) -> dict:
    """{human answer: {judge answer: count}} over items with both (failed judge answers included)."""
    ok = np.isfinite(x4) & np.isfinite(ref4)
    out: dict = {}
    for h, j in zip(ref4[ok], x4[ok]):
        row = out.setdefault(NAMES4[float(h)], {})
        row[NAMES4[float(j)]] = row.get(NAMES4[float(j)], 0) + 1
    return out


FAILED_POLICIES = ("wrong", "tie", "drop")


def apply_failed(x: np.ndarray, x4: np.ndarray | None, failed: np.ndarray, policy: str):
    """Failed items (the judge has rows for them but no usable answer) under --failed:
    wrong: a value that matches nothing (three-way: 2, never equal to a sign; four-way: C4_WRONG);
    tie: a tie (three-way 0, four-way 'tie'); drop: left out (NaN)."""
    if policy not in FAILED_POLICIES:
        raise InputError(f"--failed {policy!r}: use one of {', '.join(FAILED_POLICIES)}")
    x = x.copy()
    x4 = None if x4 is None else x4.copy()
    f = failed & ~np.isfinite(x)
    if policy == "wrong":
        x[f] = 2.0
        if x4 is not None:
            x4[f] = stats.C4_WRONG
    elif policy == "tie":
        x[f] = 0.0
        if x4 is not None:
            x4[f] = stats.C4_TIE
    return x, x4


# ============================================================================ leave-one-rater-out targets
class LooTargets:
    """For each rater j with >= min_items items that also have another rater: its ratings, and the mean /
    majority (/ four-way majority) of the *other* raters on the items j rated. The human ceiling scores j
    against that target; a judge's `metrics_loo` scores the judge against the same target on the same
    items, so judges and raters are compared on one footing."""

    def __init__(self, matrix: np.ndarray, raters: list[str], kind: str, majority_fn, min_items: int,
                 matrix4: np.ndarray | None = None):
        self.entries = []
        for j, r in enumerate(raters):
            x = matrix[:, j]
            others = np.delete(matrix, j, axis=1)
            has_other = np.isfinite(others).sum(1) >= 1
            mask = np.isfinite(x) & has_other
            if mask.sum() < min_items:
                continue
            with np.errstate(invalid="ignore"), _quiet():
                om = np.nanmean(np.where(np.isfinite(others), others, np.nan), axis=1) if others.shape[1] \
                    else x * np.nan
            if kind == "choice":
                om = np.sign(om)
            om = np.where(mask, om, np.nan)
            omaj = np.where(mask, majority_fn(others), np.nan)
            x4 = om4 = None
            if matrix4 is not None:
                x4 = np.where(mask, matrix4[:, j], np.nan)
                om4 = np.where(mask, majority4(np.delete(matrix4, j, axis=1)), np.nan)
            self.entries.append({"rater": r, "x": np.where(mask, x, np.nan), "mean": om, "majority": omaj,
                                 "mask": mask, "x4": x4, "ref4": om4})

    @property
    def raters(self) -> list[str]:
        return [e["rater"] for e in self.entries]

    def __bool__(self) -> bool:
        return bool(self.entries)


@contextlib.contextmanager
def _quiet():
    """nanmean of an all-missing row: NaN without a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# ============================================================================ scales
def aligned_threshold(values) -> float:
    """'Aligned' on a rating scale: lowest + 3/4 of the range (4 on 1-5, 0.75 on 0-1, 7.5 on 0-10)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.min() + 0.75 * (v.max() - v.min()))


def per_judge(option, name: str):
    """--judge-threshold / --judge-scale values: {"*": v, "name": v} -> the value for a judge (or None)."""
    if not option:
        return None
    return option.get(name, option.get("*"))


def describe_scale(values: np.ndarray, kind: str) -> str:
    v = np.unique(values[np.isfinite(values)])
    if kind == "label":
        return "yes/no"
    if kind == "choice":
        return "pairwise choices"
    if v.size == 0:
        return "no values"
    if v.size <= 20:
        return f"{v.size} values {_g(v.min())}–{_g(v.max())}"
    return f"continuous {_g(v.min())}–{_g(v.max())}"


def _g(v: float) -> str:
    return f"{v:.3g}"


def categorical_view(x, jkind: str, hkind: str, ref_values, ref_mean, ref_major, name: str, threshold_opt,
                     scale_opt, human_threshold: float | None):
    """How a judge can get accuracy / kappa / alpha against the humans when the scales differ.

    Returns (x_cat, ref_major_cat, ref_values_cat, note): x_cat None when nothing applies (then note says
    which metrics are skipped, why, and how to get them)."""
    xv = np.unique(x[np.isfinite(x)])
    ref_values = np.asarray(ref_values, dtype=np.float64)
    same = (len(ref_values) <= 20) and np.isin(xv, ref_values).all()
    if hkind == "choice" or jkind == "choice" or same:
        return None, None, None, None
    t = per_judge(threshold_opt, name)
    sc = per_judge(scale_opt, name)
    judge_scale = describe_scale(x, jkind)
    human_scale = describe_scale(ref_values, hkind)
    if sc is not None and hkind == "score" and len(ref_values) <= 20:
        lo, hi = sc
        if hi == lo:
            raise InputError(f"--judge-scale {name}={lo}:{hi}: empty range")
        hv = np.sort(ref_values)
        pos = hv.min() + (np.clip(x, min(lo, hi), max(lo, hi)) - lo) / (hi - lo) * (hv.max() - hv.min())
        snapped = hv[np.abs(pos[:, None] - hv[None, :]).argmin(1)] if len(x) else pos
        xc = np.where(np.isfinite(x), snapped, np.nan)
        return xc, ref_major, ref_values, (f"judge rescaled from [{_g(lo)}, {_g(hi)}] onto the human values "
                                           f"{_g(hv.min())}–{_g(hv.max())} (nearest value) for accuracy, κ, α")
    if t is not None:
        thr = aligned_threshold(x) if t == "auto" else float(t)
        xc = np.where(np.isfinite(x), (x >= thr).astype(np.float64), np.nan) if jkind == "score" else x
        if hkind == "label":
            rmaj = ref_major
            how = "the human majority label"
        else:
            ht = aligned_threshold(ref_values) if human_threshold is None else human_threshold
            rmaj = np.where(np.isfinite(ref_mean), (ref_mean >= ht).astype(np.float64), np.nan)
            how = f"human mean >= {_g(ht)}"
        jt = f"judge >= {_g(thr)}" + (" (auto: lowest + 3/4 of its range)" if t == "auto" else "") \
            if jkind == "score" else "the judge's yes/no"
        return xc, rmaj, np.array([0.0, 1.0]), f"binary: {jt} vs {how}, for accuracy, κ, nominal α"
    auto = aligned_threshold(x) if jkind == "score" and xv.size else None
    hint = (f"--judge-threshold {_g(auto)} (the default 'aligned' threshold of the judge's range) or "
            f"--judge-threshold {name}=T" if jkind == "score" else "--judge-threshold auto (humans: mean >= "
            f"{_g(aligned_threshold(ref_values) if human_threshold is None else human_threshold)} is aligned)")
    if jkind == "score" and hkind == "score" and len(ref_values) <= 20:
        hint += f", or --judge-scale {name}=LO:HI"
    return None, None, None, (f"accuracy, κ, α skipped: judge scale ({judge_scale}) is not the human scale "
                              f"({human_scale}); use {hint}")


def parse_thresholds(items) -> dict:
    """['0.5', 'gpt=7', 'auto'] -> {'*': 0.5, 'gpt': 7.0, ...}; a value is a number or 'auto'."""
    if isinstance(items, dict):
        return dict(items)
    out: dict = {}
    for item in items or []:
        name, eq, val = str(item).rpartition("=")
        key = name.strip() if eq else "*"
        v = val.strip()
        if v != "auto":
            try:
                v = float(v)
            except ValueError:
                raise InputError(f"--judge-threshold {item!r}: expected T, auto or NAME=T") from None
        out[key] = v
    return out


def parse_scales(items) -> dict:
    """['0:10', 'gpt=1:10'] -> {'*': (0, 10), 'gpt': (1, 10)}."""
    if isinstance(items, dict):
        return {k: tuple(v) for k, v in items.items()}
    out: dict = {}
    for item in items or []:
        name, eq, val = str(item).rpartition("=")
        lo, colon, hi = val.partition(":")
        try:
            rng = (float(lo), float(hi))
        except ValueError:
            raise InputError(f"--judge-scale {item!r}: expected LO:HI or NAME=LO:HI, e.g. 0:10") from None
        if not colon:
            raise InputError(f"--judge-scale {item!r}: expected LO:HI or NAME=LO:HI, e.g. 0:10")
        out[name.strip() if eq else "*"] = rng
    return out


# ============================================================================ --map and --labels
ROLES = ("human", "judgments")
CONST_MODES = ("pointwise", "pairwise", "vqa", "caption", "listwise")


def parse_map(items, mappable) -> list[dict]:
    """--map items -> [{role, target, source, raw}] (role None = every file).

    TARGET=SOURCE            column SOURCE used as TARGET (repeat a TARGET with other SOURCEs: the first
                             one a file has is used)
    TARGET='text'            a constant column (`mode=pairwise` works unquoted: modes are a closed set)
    TARGET=COL1+COL2         the columns joined with '/' (e.g. item_id=prompt_id+model)
    human:TARGET=..., judgments:TARGET=...   only for the --human file / the --judgments files
    """
    pairs = []
    if isinstance(items, dict):
        for k, v in items.items():
            for src in (v if isinstance(v, (list, tuple)) else [v]):
                pairs.append((k, src, f"{k}={src}"))
    else:
        for item in items or []:
            dest, eq, src = str(item).partition("=")
            if not eq or not dest.strip() or not src.strip():
                raise InputError(f"--map {item!r}: expected TARGET=SOURCE, e.g. item_id=image")
            pairs.append((dest, src, str(item)))
    out = []
    for dest, src, raw in pairs:
        dest, src = dest.strip(), str(src).strip()
        role = None
        if ":" in dest:
            role, _, dest = dest.partition(":")
            role = role.strip().lower()
            role = {"judge": "judgments", "judges": "judgments", "humans": "human"}.get(role, role)
            if role not in ROLES:
                raise InputError(f"--map {raw}: unknown file role {role!r}; use human: or judgments:")
        if dest not in mappable:
            raise InputError(f"--map {dest}={src}: unknown target column {dest!r}; targets: {', '.join(mappable)}")
        out.append({"role": role, "target": dest, "source": src, "raw": raw})
    return out


def _const(src: str) -> str | None:
    if len(src) >= 2 and src[0] == src[-1] and src[0] in "'\"":
        return src[1:-1]
    return None


def resolve(spec: dict, columns) -> tuple[str, object] | None:
    """How a --map entry applies to a file with these columns: ('col', name) | ('const', value) |
    ('join', [names]) | None (not applicable to this file)."""
    src, cols = spec["source"], set(map(str, columns))
    c = _const(src)
    if c is not None:
        return ("const", c)
    if src in cols:
        return ("col", src)
    if "+" in src:
        parts = [p.strip() for p in src.split("+")]
        if all(p in cols for p in parts):
            return ("join", parts)
        return None
    if spec["target"] == "mode" and src.lower() in CONST_MODES:
        return ("const", src.lower())
    return None


def apply_map(df, specs: list[dict], role: str):
    """Apply --map entries of this role (and role-less ones) to a DataFrame (in place on a copy)."""
    done: set[str] = set()
    df = df.copy() if specs else df
    cols = list(df.columns)
    for spec in specs:
        if spec["role"] not in (None, role) or spec["target"] in done:
            continue
        how = resolve(spec, cols)
        if how is None:
            continue
        kind, val = how
        t = spec["target"]
        if kind == "col":
            if val == t:
                done.add(t)
                continue
            df[t] = df[val]
        elif kind == "const":
            df[t] = val
        else:
            df[t] = df[val[0]].astype(str)
            for p in val[1:]:
                df[t] = df[t] + "/" + df[p].astype(str)
        done.add(t)
    return df


def check_map(specs: list[dict], columns_by_role: dict[str, list[str]]) -> None:
    """Every --map entry must apply to at least one file of its role."""
    for spec in specs:
        roles = [spec["role"]] if spec["role"] else list(columns_by_role)
        files = [cols for r in roles for cols in columns_by_role.get(r, [])]
        if any(resolve(spec, cols) is not None for cols in files):
            continue
        seen = sorted({c for cols in files for c in map(str, cols)})
        src = spec["source"]
        extra = ""
        if "+" in src:
            extra = " (a join COL1+COL2 needs every column in one file)"
        elif _const(src) is None:
            extra = f"; for a constant write {spec['target']}='{src}'"
        where = f"the {spec['role']} file(s)" if spec["role"] else "any input"
        raise InputError(f"--map {spec['target']}={src}: no column {src!r} in {where} "
                         f"(columns: {', '.join(seen)}){extra}")


def parse_labels(items) -> dict[str, float]:
    """--labels yes=1,partly=0.5,no=0 (repeatable, comma-separated) -> {'yes': 1.0, ...} (lower-case words)."""
    if isinstance(items, dict):
        return {str(k).strip().lower(): float(v) for k, v in items.items()}
    out: dict[str, float] = {}
    for item in items or []:
        for part in str(item).split(","):
            if not part.strip():
                continue
            word, eq, val = part.rpartition("=")
            try:
                out[word.strip().lower()] = float(val)
            except ValueError:
                raise InputError(f"--labels {part!r}: expected WORD=NUMBER, e.g. yes=1,partly=0.5,no=0") from None
            if not eq or not word.strip():
                raise InputError(f"--labels {part!r}: expected WORD=NUMBER, e.g. yes=1,partly=0.5,no=0")
    return out

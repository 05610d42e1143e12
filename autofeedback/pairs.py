"""pairs: judgments (or human labels) -> preference pairs, pointwise labels and prompt augmentations.

Reads:   RUN/judgments.parquet      judge, mode, template, prompt_id, image_ids, label, score, choice, ranking,
                                    status (ok rows vote; the other rows only tell which orders were asked)
         or RUN/human_labels.parquet (--source human_labels; annotator plays the judge, every row is ok)
         RUN/prompts.parquet        prompt text and metadata (augmentations); RUN/images.parquet as a fallback
Writes:  RUN/preferences.parquet    pair_id, prompt_id, prompt, chosen_image_id, rejected_image_id, margin,
                                    agreement, source, created_at
         RUN/labels.parquet         label_id, image_id, prompt_id, prompt, label, score, agreement, judges, source,
                                    created_at (one row per image judged pointwise; for reward training)
         RUN/augmentations.parquet  aug_id, image_id, prompt_id, prompt, perturbed, changed, created_at
                                    (N-1 prompts with one concept changed, Lee et al.; from the
                                    prompt's suite hook, autofeedback.suites)
         RUN/report/pairs.json      the config, the summary and every judge's templates (provenance for export)
Columns: margin     strength of the preference in the judge's units: score difference (pointwise), 1 (pairwise),
                    rank distance (listwise); several judges: mean over those that agree (majority) or the mean
                    signed margin (mean). A kept tie (--tie-policy keep) has margin 0.
         agreement  one judge: the share of its votes (the two orders of a pairwise pair, or the rankings that hold
                    the pair) that agree with the verdict; several judges: the share of judges that agree.
         source     "TABLE:JUDGE/MODE[+JUDGE/MODE...]" - which table and judges the pair comes from.

How each mode votes (a voter = one judge, mode and template):
  pointwise, vqa, caption  images of one prompt, compared two by two on their label (aligned vs not aligned) or
                           score; equal values are ties; an image labeled both ways by one judge is dropped
  pairwise                 the pair's verdict: with --orders consistent, a pair asked in both orders counts only when
                           both answered ok, and is a tie when they disagree (judge.combine_orders); with --orders any,
                           every order is a vote
  listwise                 all pairs of a ranking; tied images (human rankings, "a=b") are ties, kept apart
Then the votes of several voters on one pair are combined (--combine), ties dropped or kept, --min-margin applied,
and at most --max-pairs-per-prompt pairs kept per prompt (a seeded sample). Everything is vectorized (numpy,
pyarrow): a million judgment rows take seconds (bench/pairs.py).

Re-running is idempotent: pair_id = content_id(source table, prompt_id, chosen, rejected), and the rows this
command derived from the same source table are replaced, so a changed option never leaves stale pairs behind.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import suites, tables
from .config import JUDGE_MODES, PairsConfig
from .errors import InputError

POINTWISE_MODES = ("pointwise", "vqa", "caption")
LOW_CARDINALITY_FIELDS = 50  # a metadata field with more distinct values than this is not perturbed


def run(cfg: PairsConfig) -> dict:
    """Derive preferences (and labels, augmentations) from the run's judgments. Returns a summary."""
    t0 = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    # 1. Check inputs: the source table, its ok rows, the judges and modes asked for.
    rows, status = _load_votes_table(cfg)
    voters = _Voters(rows)
    summary: dict = {"source": cfg.source, "rows": rows.num_rows, "status": status, "voters": {},
                     "dropped": Counter(), "ties": Counter()}
    ok = np.asarray(pc.equal(rows.column("status"), "ok").fill_null(False))
    img_dict = _sorted_unique(pc.list_flatten(rows.column("image_ids")))
    prompt_dict = _sorted_unique(rows.column("prompt_id"))
    n_img = max(len(img_dict), 1)
    mode = np.asarray(rows.column("mode").to_numpy(zero_copy_only=False))

    # 2. One verdict per (voter, image pair) from each mode.
    parts = []
    point = None
    m = np.isin(mode, POINTWISE_MODES) & ok
    if m.any():
        point = _pointwise_values(cfg, rows, m, voters, img_dict, prompt_dict, summary)
        if cfg.ensemble:
            point = _ensemble_values(cfg, point, voters, summary)
        parts.append(_pointwise_votes(point, n_img))
    m = mode == "pairwise"
    if (m & ok).any():
        parts.append(_pairwise_votes(cfg, rows, m, ok, voters, img_dict, prompt_dict, summary))
    m = (mode == "listwise") & ok
    if m.any():
        parts.append(_listwise_votes(rows, m, voters, img_dict, prompt_dict, n_img, summary))
    votes = {k: np.concatenate([p[k] for p in parts]) for k in _VOTE_KEYS} if parts else _no_votes()
    for v in np.unique(votes["voter"]):
        summary["voters"].setdefault(voters.names[v], {})["pairs"] = int((votes["voter"] == v).sum())

    # 3. Combine voters per image pair, apply the tie policy, the minimum margin and the per-prompt cap.
    if cfg.dedupe:
        final = _combine(votes, votes["a"].astype(np.int64) * n_img + votes["b"], cfg.combine)
    else:
        final = {**votes, "n": np.ones(len(votes["a"]), np.int64)}
    below = (final["sign"] != 0) & (final["margin"] < cfg.min_margin - 1e-12)
    summary["ties"]["below_min_margin"] = int(below.sum())
    final["sign"] = np.where(below, 0, final["sign"])
    is_tie = final["sign"] == 0
    summary["ties"]["total"] = int(is_tie.sum())
    summary["ties"]["kept"] = cfg.tie_policy == "keep"
    if cfg.tie_policy == "drop":
        final = {k: v[~is_tie] for k, v in final.items()}
    final["margin"] = np.where(final["sign"] == 0, 0.0, final["margin"])
    preferences = _preferences_table(cfg, final, voters, img_dict, prompt_dict, run_dir, summary)

    # 4. Pointwise labels (one per image) and prompt augmentations.
    labels = None
    if cfg.labels and point is not None:
        labels = _labels_table(cfg, point, voters, img_dict, prompt_dict, run_dir, summary)
    augmentations, aug_ids = None, set()
    if cfg.augment > 1:
        ids = aug_ids
        if labels is not None:
            ids |= set(labels.column("image_id").to_pylist())
        elif preferences.num_rows <= 200_000:
            ids |= set(preferences.column("chosen_image_id").to_pylist())
            ids |= set(preferences.column("rejected_image_id").to_pylist())
        augmentations = _augmentations_table(cfg, run_dir, ids, summary)

    # 5. Write: replace what this command derived before from the same source table.
    prefix = f"{cfg.source}:"
    with tables.run_lock(run_dir):
        summary["written"] = {
            "preferences": _replace(run_dir, "preferences", preferences,
                                    lambda t: pc.starts_with(t.column("source"), prefix)),
        }
        if labels is not None:
            summary["written"]["labels"] = _replace(run_dir, "labels", labels,
                                                    lambda t: pc.starts_with(t.column("source"), prefix))
        if augmentations is not None:  # rows of the images considered now are replaced, others stay
            considered = pa.array(sorted(aug_ids), pa.string())
            summary["written"]["augmentations"] = _replace(run_dir, "augmentations", augmentations,
                                                           lambda t: pc.is_in(t.column("image_id"), considered))
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        summary["dropped"] = dict(summary["dropped"])
        summary["ties"] = dict(summary["ties"])
        _write_report(cfg, summary, voters, rows)
    return summary


# ======================================================================================= inputs
def _load_votes_table(cfg: PairsConfig) -> tuple[pa.Table, dict]:
    """The source rows of the chosen judges and modes, as judge/mode/template/.../status columns."""
    path = tables.table_path(cfg.run_dir, cfg.source)
    if not tables.exists(path):
        hint = "run `autofeedback judge` first" if cfg.source == "judgments" else "run `autofeedback import-labels`"
        raise InputError(f"{path}: no {cfg.source} table; {hint}")
    if cfg.source == "judgments":
        cols = ["judge", "mode", "template", "prompt_id", "image_ids", "label", "score", "choice", "ranking",
                "status"]
        t = tables.read(path, "judgments", columns=cols).select(cols)
    else:
        cols = ["annotator", "mode", "prompt_id", "image_ids", "label", "score", "choice", "ranking"]
        t = tables.read(path, "human_labels", columns=cols).select(cols)
        # a row with no value is a withdrawn label (`autofeedback label`'s undo): the annotator has no answer
        t = t.filter(pc.invert(pc.and_(pc.and_(pc.is_null(t.column("label")), pc.is_null(t.column("score"))),
                                       pc.and_(pc.is_null(t.column("choice")), pc.is_null(t.column("ranking"))))))
        n = t.num_rows
        t = t.rename_columns(["judge", *cols[1:]])
        t = t.append_column("template", pa.nulls(n, pa.string())).append_column(
            "status", pa.array(np.full(n, "ok", dtype=object), pa.string()))
    if t.num_rows == 0:
        raise InputError(f"{path}: the {cfg.source} table has no rows")
    if cfg.split is not None:  # e.g. train: held-out prompts must never become training pairs
        prompts = tables.read(tables.table_path(cfg.run_dir, "prompts"), "prompts", columns=["prompt_id", "split"])
        in_split = pc.filter(prompts.column("prompt_id"), pc.equal(prompts.column("split"), cfg.split))
        t = t.filter(pc.is_in(t.column("prompt_id"), in_split))
        if t.num_rows == 0:
            raise InputError(f"{path}: no {cfg.source} rows for prompts of split {cfg.split!r}")
    judges = t.column("judge").fill_null("")
    present = sorted(set(pc.unique(judges).to_pylist()))
    if cfg.judges:
        missing = [j for j in cfg.judges if j not in present]
        if missing:
            raise InputError(f"{path}: no rows of judge {', '.join(map(repr, missing))}; "
                             f"judges here: {', '.join(present)}")
        t = t.filter(pc.is_in(judges, pa.array(cfg.judges)))
    modes = t.column("mode").fill_null("")
    unknown = sorted(set(pc.unique(modes).to_pylist()) - set(JUDGE_MODES))
    if unknown and (not cfg.modes):
        bad = t.filter(pc.is_in(modes, pa.array(unknown)))
        raise InputError(f"{path}: unknown mode {unknown[0]!r} in {bad.num_rows} rows (judge "
                         f"{bad.column('judge')[0].as_py()!r}); known modes: {', '.join(JUDGE_MODES)} "
                         f"(or pick some with --mode)")
    if cfg.modes:
        t = t.filter(pc.is_in(modes, pa.array(list(cfg.modes))))
        if t.num_rows == 0:
            raise InputError(f"{path}: no rows of mode {', '.join(cfg.modes)} "
                             f"(modes here: {', '.join(sorted(set(modes.to_pylist())))})")
    status = {k: v for k, v in _value_counts(t.column("status")).items()}
    if not status.get("ok"):
        raise InputError(f"{path}: no ok rows to make pairs from (status: "
                         f"{', '.join(f'{k}={v}' for k, v in sorted(status.items()))})")
    return t, status


class _Voters:
    """voter = (judge, mode, template); codes per row and display names (JUDGE/MODE, +@TEMPLATE if ambiguous)."""

    def __init__(self, rows: pa.Table) -> None:
        key = pc.binary_join_element_wise(rows.column("judge").fill_null(""), rows.column("mode").fill_null(""),
                                          rows.column("template").fill_null(""), "\x1f")
        enc = pc.dictionary_encode(key).combine_chunks()
        self.codes = np.asarray(enc.indices)
        self.keys = [k.split("\x1f") for k in enc.dictionary.to_pylist()]
        count = Counter((j, m) for j, m, _ in self.keys)
        self.names = [f"{j}/{m}" + (f"@{t}" if count[(j, m)] > 1 else "") for j, m, t in self.keys]


def _sorted_unique(arr) -> pa.Array:
    u = pc.unique(arr.drop_null() if hasattr(arr, "drop_null") else arr)
    if isinstance(u, pa.ChunkedArray):
        u = u.combine_chunks()
    return u.take(pc.sort_indices(u))


def _codes(values, dictionary: pa.Array) -> np.ndarray:
    """Position of every value in the sorted dictionary (-1 when absent or null)."""
    idx = pc.index_in(values, value_set=dictionary)
    if isinstance(idx, pa.ChunkedArray):
        idx = idx.combine_chunks()
    return np.asarray(idx.fill_null(-1), dtype=np.int64)


def _value_counts(arr) -> dict:
    vc = pc.value_counts(arr.fill_null("(null)"))
    return {str(d["values"]): int(d["counts"]) for d in vc.to_pylist()}


def _np_float(arr) -> np.ndarray:
    return np.asarray(pc.cast(arr, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)


def _list_column(rows: pa.Table, name: str, mask: np.ndarray) -> pa.ListArray:
    col = rows.column(name).filter(pa.array(mask))
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


# ======================================================================================== votes
_VOTE_KEYS = ("voter", "prompt", "a", "b", "sign", "margin", "agree")


def _no_votes() -> dict:
    return {"voter": np.zeros(0, np.int64), "prompt": np.zeros(0, np.int64), "a": np.zeros(0, np.int64),
            "b": np.zeros(0, np.int64), "sign": np.zeros(0, np.int64), "margin": np.zeros(0), "agree": np.zeros(0)}


def _pointwise_values(cfg, rows, mask, voters, img_dict, prompt_dict, summary) -> dict:
    """One value per (voter, image): the mean label/score of its rows; contradictory labels are dropped."""
    idx = np.flatnonzero(mask)
    ids = _list_column(rows, "image_ids", mask)
    img = _codes(pc.list_element(ids, 0), img_dict) if len(ids) else np.zeros(0, np.int64)
    voter = voters.codes[idx]
    prompt = _codes(rows.column("prompt_id").filter(pa.array(mask)), prompt_dict)
    label = _np_float(rows.column("label").filter(pa.array(mask)))
    score = _np_float(rows.column("score").filter(pa.array(mask)))
    bad = (img < 0) | (prompt < 0)
    summary["dropped"]["invalid_rows"] += int(bad.sum())
    keep = ~bad
    voter, img, prompt, label, score = voter[keep], img[keep], prompt[keep], label[keep], score[keep]
    # basis per voter: label (aligned vs not) or score
    basis_label = np.zeros(len(voters.names), bool)
    for v in np.unique(voter):
        sel = voter == v
        has_label = not np.isnan(label[sel]).any()
        use_label = cfg.pointwise_value == "label" or (cfg.pointwise_value == "auto" and has_label)
        basis_label[v] = use_label
        info = summary["voters"].setdefault(voters.names[v], {})
        info.update({"mode": voters.keys[v][1], "ok_rows": int(sel.sum()), "compares": "label" if use_label else "score"})
    value = np.where(basis_label[voter], label, score)
    # aggregate per (voter, image)
    key = voter.astype(np.int64) * max(len(img_dict), 1) + img
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    n = len(uniq)

    def mean_of(x):
        good = ~np.isnan(x)
        c = np.bincount(inv[good], minlength=n)
        s = np.bincount(inv[good], weights=x[good], minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, s / np.maximum(c, 1), np.nan), c

    lab_mean, _ = mean_of(label)
    contradictory = (lab_mean > 0) & (lab_mean < 1)
    summary["dropped"]["contradictory_labels"] += int(contradictory.sum())
    val, cnt = mean_of(value)
    val = np.where(basis_label[voter[first]] & contradictory, np.nan, val)
    summary["dropped"]["no_value"] += int(((cnt == 0) & ~contradictory).sum())
    sc, _ = mean_of(score)
    return {"voter": voter[first], "image": img[first], "prompt": prompt[first], "value": val,
            "label": lab_mean, "score": sc, "contradictory": contradictory}


def _ensemble_values(cfg, point: dict, voters: _Voters, summary) -> dict:
    """--ensemble: the pointwise judges' scores (labels where a judge has no score) combined per image by
    autofeedback.ensemble (zmean / rankmean / vote) into one voter, `METHOD(JUDGE/MODE+...)`; its label is
    the majority of the members' labels (or, for score-only members, of their votes)."""
    from . import ensemble

    good = ~point["contradictory"]
    p = {k: v[good] for k, v in point.items()}
    members = np.unique(p["voter"])
    if len(members) < 2:
        raise InputError(f"--ensemble {cfg.ensemble}: needs >= 2 pointwise judges, have "
                         f"{', '.join(voters.names[v] for v in members) or 'none'} (add --judge A --judge B)")
    img, inv_img = np.unique(p["image"], return_inverse=True)
    col = np.searchsorted(members, p["voter"])
    X = np.full((len(img), len(members)), np.nan)
    X[inv_img, col] = np.where(np.isfinite(p["score"]), p["score"], p["label"])
    L = np.full((len(img), len(members)), np.nan)
    L[inv_img, col] = p["label"]
    V = ensemble.votes(X)
    L = np.where(np.isfinite(L), L, V)
    value = ensemble.combine(X, cfg.ensemble)
    share = ensemble._rowmean(L)
    label = np.where(share > 0.5, 1.0, np.where(share < 0.5, 0.0, np.nan))
    prompt = np.zeros(len(img), np.int64)
    prompt[inv_img] = p["prompt"]
    name = f"{cfg.ensemble}(" + "+".join(sorted(voters.names[v] for v in members)) + ")"
    voters.names.append(name)
    voters.keys.append([cfg.ensemble, "pointwise", ""])
    code = len(voters.names) - 1
    summary["voters"][name] = {"mode": "pointwise", "compares": f"{cfg.ensemble} of {len(members)} judges",
                               "members": sorted(voters.names[v] for v in members)}
    return {"voter": np.full(len(img), code, np.int64), "image": img, "prompt": prompt, "value": value,
            "label": label, "score": value, "contradictory": np.zeros(len(img), bool)}


def _pairs_within(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i < j) of rows in the same group; `group` must be sorted."""
    if len(group) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    sizes = np.diff(np.r_[starts, len(group)])
    out_a, out_b = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for k in np.unique(sizes):
        if k < 2:
            continue
        s = starts[sizes == k]
        ia, ib = np.triu_indices(int(k), 1)
        out_a.append((s[:, None] + ia[None, :]).ravel())
        out_b.append((s[:, None] + ib[None, :]).ravel())
    return np.concatenate(out_a), np.concatenate(out_b)


def _pointwise_votes(point: dict, n_img: int) -> dict:
    good = ~np.isnan(point["value"])
    p = {k: point[k][good] for k in ("voter", "prompt", "image", "value")}
    order = np.lexsort((p["image"], p["prompt"], p["voter"]))
    p = {k: v[order] for k, v in p.items()}
    group = p["voter"].astype(np.int64) * (int(p["prompt"].max(initial=0)) + 1) + p["prompt"]
    ia, ib = _pairs_within(group)
    diff = p["value"][ia] - p["value"][ib]
    return {"voter": p["voter"][ia], "prompt": p["prompt"][ia], "a": p["image"][ia], "b": p["image"][ib],
            "sign": np.sign(diff).astype(np.int64), "margin": np.abs(diff), "agree": np.ones(len(ia))}


def _pairwise_votes(cfg, rows, mask, ok, voters, img_dict, prompt_dict, summary) -> dict:
    """One verdict per (voter, pair) from rows asked in one or both orders."""
    idx = np.flatnonzero(mask)
    ids = _list_column(rows, "image_ids", mask)
    lens = np.asarray(pc.list_value_length(ids).fill_null(0))
    c0 = np.full(len(idx), -1, np.int64)
    c1 = np.full(len(idx), -1, np.int64)
    two = lens == 2
    if two.any():
        sub = ids.filter(pa.array(two))
        c0[two] = _codes(pc.list_element(sub, 0), img_dict)
        c1[two] = _codes(pc.list_element(sub, 1), img_dict)
    choice = rows.column("choice").filter(pa.array(mask))
    cc = _codes(choice, img_dict)
    is_tie = np.asarray(pc.equal(choice, "tie").fill_null(False))
    is_ok = ok[idx]
    prompt = _codes(rows.column("prompt_id").filter(pa.array(mask)), prompt_dict)
    valid = two & (c0 >= 0) & (c1 >= 0) & (c0 != c1) & (prompt >= 0)
    first, second = (cc == c0) & valid, (cc == c1) & valid
    vote_ok = is_ok & valid & (first | second | is_tie)
    summary["dropped"]["invalid_rows"] += int((is_ok & ~vote_ok).sum())
    voter = voters.codes[idx]
    a, b = np.minimum(c0, c1), np.maximum(c0, c1)
    order = (c0 > c1).astype(np.int64)  # 0: shown as (a, b), 1: shown as (b, a)
    chosen = np.where(first, c0, c1)
    sign = np.where(is_tie, 0, np.where(chosen == a, 1, -1))
    n_img = max(len(img_dict), 1)
    key = (voter.astype(np.int64) * n_img + a) * n_img + b
    v_idx = np.flatnonzero(valid)
    uniq, first_i, inv = np.unique(key[v_idx], return_index=True, return_inverse=True)
    g = len(uniq)
    asked = np.zeros((g, 2), bool)
    asked[inv, order[v_idx]] = True
    vsel = vote_ok[v_idx]
    cnt = np.zeros((g, 2))
    tot = np.zeros((g, 2))
    np.add.at(cnt, (inv[vsel], order[v_idx][vsel]), 1)
    np.add.at(tot, (inv[vsel], order[v_idx][vsel]), sign[v_idx][vsel])
    has = cnt > 0
    vote = np.sign(tot).astype(np.int64)
    both_asked = asked.all(1)
    both_voted = has.all(1)
    consistent = both_voted & (vote[:, 0] == vote[:, 1])
    if cfg.orders == "consistent":
        single = ~both_asked & has.any(1)
        verdict = np.where(single, vote.sum(1), np.where(consistent, vote[:, 0], 0))
        use = single | both_voted
        missing = both_asked & ~both_voted & has.any(1)
        summary["dropped"]["missing_order"] += int(missing.sum())
        summary["ties"]["position_inconsistent"] += int((both_voted & ~consistent).sum())
    else:
        verdict = np.sign(vote.sum(1))
        use = has.any(1)
    n_votes = has.sum(1)
    agree = ((vote == verdict[:, None]) & has).sum(1) / np.maximum(n_votes, 1)
    gv = voter[v_idx][first_i]
    for v in np.unique(voter):
        info = summary["voters"].setdefault(voters.names[v], {})
        info.update({"mode": "pairwise", "ok_rows": int((vote_ok & (voter == v)).sum())})
        mine = both_voted & (gv == v)
        if mine.any():
            info["pairs_both_orders"] = int(mine.sum())
            info["position_consistency"] = round(float(consistent[mine].mean()), 4)
        first_shown = vote_ok & (voter == v) & ~is_tie
        if first_shown.any():
            info["chose_first_shown"] = round(float(first[first_shown].mean()), 4)
    return {"voter": gv[use], "prompt": prompt[v_idx][first_i][use], "a": a[v_idx][first_i][use],
            "b": b[v_idx][first_i][use], "sign": verdict[use], "margin": np.abs(verdict[use]).astype(np.float64),
            "agree": agree[use]}


def _listwise_votes(rows, mask, voters, img_dict, prompt_dict, n_img, summary) -> dict:
    """All pairs of every ranking (best first; "a=b" = tied), then one verdict per (voter, pair)."""
    idx = np.flatnonzero(mask)
    ranking = _list_column(rows, "ranking", mask)
    ids = _list_column(rows, "image_ids", mask)
    n = len(idx)
    r_vals = pc.list_flatten(ranking)
    r_row = np.asarray(pc.list_parent_indices(ranking))
    offsets = np.asarray(ranking.offsets)
    pos = np.arange(len(r_row)) - offsets[r_row] if len(r_row) else np.zeros(0, np.int64)
    if len(r_vals) and pc.any(pc.match_substring(r_vals, "=")).as_py():
        split = pc.split_pattern(r_vals, "=")
        parent = np.asarray(pc.list_parent_indices(split))
        r_vals, r_row, pos = pc.list_flatten(split), r_row[parent], pos[parent]
    rc = _codes(r_vals, img_dict)
    i_row = np.asarray(pc.list_parent_indices(ids))
    ic = _codes(pc.list_flatten(ids), img_dict)
    # a ranking must be a permutation of the images shown
    same_len = np.bincount(r_row, minlength=n) == np.bincount(i_row, minlength=n)
    mr, mi = same_len[r_row], same_len[i_row]
    o_r = np.lexsort((rc[mr], r_row[mr]))
    o_i = np.lexsort((ic[mi], i_row[mi]))
    sr, si = rc[mr][o_r], ic[mi][o_i]
    rows_sorted = r_row[mr][o_r]
    dup = np.r_[False, (sr[1:] == sr[:-1]) & (rows_sorted[1:] == rows_sorted[:-1])]
    bad_rows = np.unique(rows_sorted[(sr != si) | (sr < 0) | dup])
    good = same_len.copy()
    good[bad_rows] = False
    good &= np.bincount(r_row, minlength=n) >= 1
    prompt_all = _codes(rows.column("prompt_id").filter(pa.array(mask)), prompt_dict)
    good &= prompt_all >= 0
    summary["dropped"]["invalid_rows"] += int((~good).sum())
    keep = good[r_row]
    row, code, level = r_row[keep], rc[keep], pos[keep]
    o = np.lexsort((code, row))
    row, code, level = row[o], code[o], level[o]
    ia, ib = _pairs_within(row)
    diff = level[ib] - level[ia]  # > 0: a ranked better
    voter = voters.codes[idx][row[ia]]
    prompt = prompt_all[row[ia]]
    for v in np.unique(voters.codes[idx]):
        info = summary["voters"].setdefault(voters.names[v], {})
        info.update({"mode": "listwise", "ok_rows": int((voters.codes[idx] == v).sum())})
    votes = {"voter": voter, "prompt": prompt, "a": code[ia], "b": code[ib], "sign": np.sign(diff).astype(np.int64),
             "margin": np.abs(diff).astype(np.float64), "agree": np.ones(len(ia))}
    key = (votes["voter"].astype(np.int64) * n_img + votes["a"]) * n_img + votes["b"]
    out = _combine(votes, key, "majority")
    return {k: out[k] for k in _VOTE_KEYS}


def _combine(votes: dict, key: np.ndarray, how: str) -> dict:
    """Votes with the same key -> one verdict: majority of signs (or sign of the mean signed margin)."""
    if len(key) == 0:
        return {**_no_votes(), "n": np.zeros(0, np.int64)}
    uniq, first, inv, cnt = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    g = len(uniq)
    sign, margin = votes["sign"], votes["margin"]
    signed = sign * margin
    if how == "mean":
        mean = np.bincount(inv, weights=signed, minlength=g) / cnt
        verdict = np.sign(np.round(mean, 12)).astype(np.int64)
        out_margin = np.abs(mean)
    else:
        verdict = np.sign(np.bincount(inv, weights=sign, minlength=g)).astype(np.int64)
    agrees = sign == verdict[inv]
    n_agree = np.bincount(inv, weights=agrees, minlength=g)
    if how != "mean":
        out_margin = np.bincount(inv, weights=np.where(agrees, margin, 0.0), minlength=g) / np.maximum(n_agree, 1)
    agreement = np.where(cnt == 1, votes["agree"][first], n_agree / cnt)
    return {"voter": votes["voter"][first], "prompt": votes["prompt"][first], "a": votes["a"][first],
            "b": votes["b"][first], "sign": verdict, "margin": np.where(verdict == 0, 0.0, out_margin),
            "agree": agreement, "n": cnt, "voters": _voter_sets(votes["voter"], inv, g)}


def _voter_sets(voter: np.ndarray, inv: np.ndarray, g: int) -> np.ndarray:
    """A bitmask-like code per group of which voters voted (for the source column); small voter counts only."""
    if voter.max(initial=0) >= 62:
        return np.zeros(g, np.int64)
    out = np.zeros(g, np.int64)
    np.bitwise_or.at(out, inv, np.left_shift(np.int64(1), voter.astype(np.int64)))
    return out


# ====================================================================================== outputs
def _preferences_table(cfg, final, voters, img_dict, prompt_dict, run_dir, summary) -> pa.Table:
    n = len(final["a"])
    chosen = np.where(final["sign"] >= 0, final["a"], final["b"])
    rejected = np.where(final["sign"] >= 0, final["b"], final["a"])
    chosen_s = img_dict.take(pa.array(chosen)) if n else pa.array([], pa.string())
    rejected_s = img_dict.take(pa.array(rejected)) if n else pa.array([], pa.string())
    prompt_s = prompt_dict.take(pa.array(final["prompt"])) if n else pa.array([], pa.string())
    # source: which voters
    if cfg.dedupe:
        masks = final["voters"]
        names = {}
        for mk in np.unique(masks):
            vs = [voters.names[v] for v in range(len(voters.names)) if (int(mk) >> v) & 1] or sorted(
                {voters.names[v] for v in np.unique(final["voter"])})
            label = "+".join(vs)
            if len(vs) > 1:
                label = f"{cfg.combine}({label})"
            names[mk] = f"{cfg.source}:{label}"
        uniq, inv = np.unique(masks, return_inverse=True)
        source = pa.array([names[u] for u in uniq], pa.string()).take(pa.array(inv)) if n else pa.array([], pa.string())
        ident = [pa.array(np.full(n, cfg.source, object), pa.string()), prompt_s, chosen_s, rejected_s]
    else:
        vnames = pa.array([f"{cfg.source}:{nm}" for nm in voters.names], pa.string())
        source = vnames.take(pa.array(final["voter"])) if n else pa.array([], pa.string())
        ident = [source, prompt_s, chosen_s, rejected_s]
    # 3b. at most N pairs per prompt: keep the N with the smallest seeded hash
    if cfg.max_pairs_per_prompt and n:
        import pandas as pd

        key = pc.binary_join_element_wise(chosen_s, rejected_s, "|").to_numpy(zero_copy_only=False)
        h = pd.util.hash_array(key, hash_key=f"{cfg.seed:016d}"[-16:]).astype(np.uint64)
        order = np.lexsort((h, final["prompt"]))
        p_sorted = final["prompt"][order]
        starts = np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        keep = np.zeros(n, bool)
        keep[order[rank < cfg.max_pairs_per_prompt]] = True
        summary["dropped"]["over_max_pairs_per_prompt"] += int((~keep).sum())
        sel = pa.array(keep)
        final = {k: v[keep] for k, v in final.items()}
        chosen_s, rejected_s, prompt_s, source = (x.filter(sel) for x in (chosen_s, rejected_s, prompt_s, source))
        ident = [x.filter(sel) for x in ident]
        n = int(keep.sum())
    pair_id = content_ids("pair", *ident)
    texts = _prompt_texts(run_dir, prompt_dict)
    prompt_text = texts.take(pa.array(final["prompt"])) if n else pa.array([], pa.string())
    summary["pairs"] = n
    summary["prompts"] = int(len(np.unique(final["prompt"])))
    summary["pairs_without_prompt_text"] = int(prompt_text.null_count)
    if n:
        summary["mean_agreement"] = round(float(final["agree"].mean()), 4)
        summary["decided_pairs"] = int((final["sign"] != 0).sum())
    return pa.table({
        "pair_id": pair_id, "prompt_id": prompt_s, "prompt": prompt_text, "chosen_image_id": chosen_s,
        "rejected_image_id": rejected_s, "margin": pa.array(final["margin"], pa.float64()),
        "agreement": pa.array(final["agree"], pa.float64()), "source": source,
        "created_at": pa.array(np.full(n, np.datetime64(tables.now().replace(tzinfo=None), "us")),
                               tables.TIMESTAMP),
    }, schema=tables.SCHEMAS["preferences"])


def _labels_table(cfg, point, voters, img_dict, prompt_dict, run_dir, summary) -> pa.Table:
    """One row per image: majority label over judges, mean score, agreement, who labeled."""
    usable = ~(np.isnan(point["label"]) & np.isnan(point["score"])) & ~point["contradictory"]
    p = {k: v[usable] for k, v in point.items()}
    order = np.lexsort((p["voter"], p["image"]))
    p = {k: v[order] for k, v in p.items()}
    uniq, first, inv, cnt = np.unique(p["image"], return_index=True, return_inverse=True, return_counts=True)
    g = len(uniq)
    has_label = ~np.isnan(p["label"])
    pos = np.bincount(inv, weights=has_label & (p["label"] >= 0.5), minlength=g)
    neg = np.bincount(inv, weights=has_label & (p["label"] < 0.5), minlength=g)
    n_lab = pos + neg
    split = (n_lab > 0) & (pos == neg)
    summary["dropped"]["split_labels"] += int(split.sum())
    label = pa.array(pos > neg, pa.bool_(), mask=(n_lab == 0) | split)
    has_score = ~np.isnan(p["score"])
    sc_n = np.bincount(inv, weights=has_score, minlength=g)
    sc = np.bincount(inv, weights=np.where(has_score, p["score"], 0.0), minlength=g)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(sc_n > 0, sc / np.maximum(sc_n, 1), np.nan)
        agreement = np.where(n_lab > 0, np.maximum(pos, neg) / np.maximum(n_lab, 1), np.nan)
    keep = ~((n_lab == 0) | split) | (sc_n > 0)
    keep &= ~split
    names = pa.array(voters.names, pa.string())
    judges = pa.ListArray.from_arrays(pa.array(np.r_[first, len(inv)].astype(np.int32)),
                                      names.take(pa.array(p["voter"])))
    image_s = img_dict.take(pa.array(p["image"][first]))
    prompt_s = prompt_dict.take(pa.array(p["prompt"][first]))
    texts = _prompt_texts(run_dir, prompt_dict).take(pa.array(p["prompt"][first]))
    src = f"{cfg.source}:" + "+".join(sorted({voters.names[v] for v in np.unique(p["voter"])}))
    t = pa.table({
        "label_id": content_ids("label", pa.array(np.full(g, cfg.source, object), pa.string()), image_s),
        "image_id": image_s, "prompt_id": prompt_s, "prompt": texts,
        "label": label,
        "score": pa.array(score, pa.float64(), from_pandas=True),
        "agreement": pa.array(agreement, pa.float64(), from_pandas=True), "judges": judges,
        "source": pa.array(np.full(g, src, object), pa.string()),
        "created_at": pa.array(np.full(g, np.datetime64(tables.now().replace(tzinfo=None), "us")), tables.TIMESTAMP),
    }, schema=tables.SCHEMAS["labels"]).filter(pa.array(keep))
    summary["labels"] = t.num_rows
    summary["labels_aligned"] = int(pc.sum(t.column("label").cast(pa.int64())).as_py() or 0)
    return t


def _prompt_texts(run_dir: Path, prompt_dict: pa.Array) -> pa.Array:
    """Prompt text for every prompt code (null where unknown): prompts table, else images table."""
    out = pa.nulls(len(prompt_dict), pa.string())
    for name in ("images", "prompts"):  # prompts last: it wins
        path = tables.table_path(run_dir, name)
        if not tables.exists(path) or not len(prompt_dict):
            continue
        t = tables.read(path, name, columns=["prompt_id", "prompt"])
        codes = _codes(t.column("prompt_id"), prompt_dict)
        hit = codes >= 0
        if not hit.any():
            continue
        arr = np.asarray(out.to_numpy(zero_copy_only=False), dtype=object)
        arr[codes[hit]] = np.asarray(t.column("prompt").to_numpy(zero_copy_only=False), dtype=object)[hit]
        out = pa.array(arr, pa.string(), from_pandas=True)
    return out


def content_ids(*columns) -> pa.Array:
    """tables.content_id(*row) for every row of the columns (str scalars or string arrays), fast.

    The JSON text content_id hashes is built with pyarrow; only the sha256 runs per row. Strings that JSON
    would escape (quotes, backslashes, control or non-ASCII characters) take the exact slow path.
    """
    n = max((len(c) for c in columns if not isinstance(c, str)), default=1)
    arrays = [pa.array(np.full(n, c, object), pa.string()) if isinstance(c, str) else
              (c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c) for c in columns]
    if n == 0:
        return pa.array([], pa.string())
    plain = all(not pc.any(pc.match_substring_regex(a, r'["\\\x00-\x1f\x7f-\x{10ffff}]')).as_py() and
                a.null_count == 0 for a in arrays)
    if not plain:
        rows = zip(*(a.to_pylist() for a in arrays))
        return pa.array([tables.content_id(*r) for r in rows], pa.string())
    quoted = [pc.binary_join_element_wise('"', a, '"', "") for a in arrays]
    blob = pc.binary_join_element_wise("[", pc.binary_join_element_wise(*quoted, ","), "]", "")
    sha = hashlib.sha256
    return pa.array([sha(b).hexdigest()[:16] for b in pc.cast(blob, pa.binary()).to_pylist()], pa.string())


# ================================================================================ augmentations
def _augmentations_table(cfg, run_dir: Path, image_ids: set[str], summary) -> pa.Table | None:
    """For every image: N-1 prompts with one metadata field changed (other counts, colors, backgrounds...)."""
    images_path, prompts_path = tables.table_path(run_dir, "images"), tables.table_path(run_dir, "prompts")
    if not image_ids or not tables.exists(prompts_path):
        summary["augmentations"] = 0
        return None
    prompts = {r["prompt_id"]: r for r in tables.read(prompts_path, "prompts").to_pylist()}
    if tables.exists(images_path):
        img = tables.read(images_path, "images", columns=["image_id", "prompt_id"])
        img_prompt = dict(zip(img.column("image_id").to_pylist(), img.column("prompt_id").to_pylist()))
    else:
        img_prompt = {}
    vocab = _vocabulary([_meta(p) for p in prompts.values()])
    candidates: dict[str, list[tuple[str, str]]] = {}
    rows, no_meta, unsupported = [], 0, Counter()
    created = tables.now()
    for image_id in sorted(image_ids):
        pid = img_prompt.get(image_id)
        rec = prompts.get(pid) if pid else None
        if rec is None:
            no_meta += 1
            continue
        if not suites.has_perturbations(rec.get("suite")):
            unsupported[rec.get("suite")] += 1
            continue
        if pid not in candidates:
            candidates[pid] = perturbations(rec["prompt"], _meta(rec), rec.get("suite"), vocab)
        cands = candidates[pid]
        if not cands:
            no_meta += 1
            continue
        rng = random.Random(tables.content_id("augment", cfg.seed, image_id))  # per image: varied, reproducible
        picked = _spread(cands, cfg.augment - 1, rng)
        rows.append({"aug_id": tables.content_id("aug", image_id, cfg.augment, cfg.seed), "image_id": image_id,
                     "prompt_id": pid, "prompt": rec["prompt"], "perturbed": [p for p, _ in picked],
                     "changed": [f for _, f in picked], "created_at": created})
    summary["augmentations"] = len(rows)
    summary["augmentations_skipped"] = no_meta  # images whose prompt has no metadata to perturb
    if unsupported:  # images whose suite has no perturbations hook
        summary["augmentations_unsupported"] = dict(sorted(unsupported.items(), key=str))
    return tables.to_table(rows, "augmentations")


def _meta(rec: dict) -> dict:
    raw = rec.get("metadata")
    if not raw:
        return {}
    try:
        m = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return {}
    return m if isinstance(m, dict) else {}


def _spread(cands: list[tuple[str, str]], k: int, rng: random.Random) -> list[tuple[str, str]]:
    """k candidates, round-robin over the fields changed so that every field is represented."""
    by_field: dict[str, list] = {}
    for c in cands:
        by_field.setdefault(c[1], []).append(c)
    for lst in by_field.values():
        rng.shuffle(lst)
    fields = sorted(by_field)
    rng.shuffle(fields)
    out = []
    while len(out) < k and any(by_field.values()):
        for f in fields:
            if by_field[f] and len(out) < k:
                out.append(by_field[f].pop())
    return out


def _vocabulary(metas: list[dict]) -> dict[str, list]:
    vocab: dict[str, set] = {}
    for m in metas:
        for field, value in suites.leaves(m):
            vocab.setdefault(field, set()).add(value)
    return {f: sorted(v, key=str) for f, v in vocab.items() if 2 <= len(v) <= LOW_CARDINALITY_FIELDS}


def perturbations(prompt: str, meta: dict, suite: str | None, vocab: dict[str, list]) -> list[tuple[str, str]]:
    """Every prompt that differs from `prompt` in one concept: (text, field), from the prompt's suite hook
    (autofeedback.suites). The shapes world: the scene's prompt with another count, color or background. Suites
    without a hook: a metadata value that appears in the prompt as a word is replaced by another value the run's
    prompts use for that field."""
    return suites.perturbations(suite, prompt, meta, vocab)


# ========================================================================================= write
def _replace(run_dir: Path, name: str, new: pa.Table, owned) -> bool:
    """Make the rows this command owns in table `name` equal to `new`; other rows stay. False if unchanged."""
    path = tables.table_path(run_dir, name)
    tables.clean_temp(path)
    old = tables.read(path, name, required=False)
    if old.num_rows:
        mine = np.asarray(owned(old).fill_null(False)) if owned is not None else np.ones(old.num_rows, bool)
        others, mine_old = old.filter(pa.array(~mine)), old.filter(pa.array(mine))
    else:
        others, mine_old = old, old
    if _same(mine_old, new, tables.KEYS[name]):
        return False
    full = pa.concat_tables([others, new.select(others.column_names)]) if others.num_rows else new
    shards = sorted(p for p in path.glob("*.parquet")) if path.is_dir() else []
    written = tables.append(path, full, name, tag="pairs")
    for shard in shards:
        if shard != written:
            shard.unlink(missing_ok=True)
    return True


def _same(a: pa.Table, b: pa.Table, key: str) -> bool:
    if a.num_rows != b.num_rows:
        return False
    cols = [c for c in b.column_names if c != "created_at"]
    a = a.select(cols).sort_by(key)
    b = b.select(cols).sort_by(key)
    return a.equals(b)


def _write_report(cfg: PairsConfig, summary: dict, voters: _Voters, rows: pa.Table) -> None:
    for v, (judge, mode, template) in enumerate(voters.keys):
        info = summary["voters"].setdefault(voters.names[v], {})
        info.update({"judge": judge, "mode": mode, "template": template or None})
    report = Path(cfg.run_dir) / "report"
    report.mkdir(parents=True, exist_ok=True)
    path = report / "pairs.json"
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[cfg.source] = {"config": json.loads(cfg.model_dump_json()), "summary": summary,
                        "created_at": tables.now().isoformat(timespec="seconds")}
    tmp = report / ".pairs.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def format_summary(s: dict, cfg: PairsConfig | None = None) -> str:
    status = ", ".join(f"{k}={v}" for k, v in sorted(s["status"].items()))
    lines = [f"pairs from {s['source']}: {s['rows']} rows ({status}), {s.get('seconds', 0)} s"]
    for name, info in sorted(s["voters"].items()):
        extra = ""
        if "position_consistency" in info:
            extra = (f", position consistency {100 * info['position_consistency']:.1f}% over "
                     f"{info['pairs_both_orders']} pairs")
        lines.append(f"  {name}: {info.get('ok_rows', 0)} ok rows -> {info.get('pairs', 0)} verdicts{extra}")
    t = s["ties"]
    kept = "kept" if t.get("kept") else "dropped"
    reasons = [f"{k.replace('_', ' ')} {v}" for k, v in t.items() if k not in ("total", "kept") and v]
    lines.append(f"  {s['pairs']} pairs over {s['prompts']} prompts; ties {kept}: {t.get('total', 0)}"
                 + (f" ({', '.join(reasons)})" if reasons else ""))
    if s.get("mean_agreement") is not None:
        lines.append(f"  mean agreement {s['mean_agreement']:.3f}")
    drops = {k: v for k, v in s["dropped"].items() if v}
    if drops:
        lines.append("  dropped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(drops.items())))
    if "labels" in s:
        lines.append(f"  labels: {s['labels']} images ({s.get('labels_aligned', 0)} aligned)")
    if s.get("augmentations") or s.get("augmentations_skipped"):
        skipped = s.get("augmentations_skipped")
        lines.append(f"  augmentations: {s.get('augmentations', 0)} images"
                     + (f" ({skipped} skipped: no prompt metadata to perturb)" if skipped else ""))
    for suite, n in s.get("augmentations_unsupported", {}).items():
        lines.append(f"  augmentations: suite {suite!r} has no perturbations (see autofeedback.suites), "
                     f"{n} images without augmentations")
    w = s.get("written", {})
    changed = [k for k, v in w.items() if v]
    lines.append(f"  wrote {', '.join(changed)}" if changed else "  tables up to date (nothing written)")
    return "\n".join(lines)

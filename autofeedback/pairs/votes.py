"""Votes: one verdict per (voter, image pair) from each judging mode, and the combination of several voters
(autofeedback.pairs has the overview: how each mode votes, margins, agreement). Vectorized with numpy and
pyarrow; the image and prompt ids are coded as positions in sorted dictionaries.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError

POINTWISE_MODES = ("pointwise", "vqa", "caption")


class Voters:
    """voter = (judge, mode, template); codes per row and display names (JUDGE/MODE, +@TEMPLATE if ambiguous)."""

    def __init__(self, rows: pa.Table) -> None:
        key = pc.binary_join_element_wise(rows.column("judge").fill_null(""), rows.column("mode").fill_null(""),
                                          rows.column("template").fill_null(""), "\x1f")
        enc = pc.dictionary_encode(key).combine_chunks()
        self.codes = np.asarray(enc.indices)
        self.keys = [k.split("\x1f") for k in enc.dictionary.to_pylist()]
        count = Counter((j, m) for j, m, _ in self.keys)
        self.names = [f"{j}/{m}" + (f"@{t}" if count[(j, m)] > 1 else "") for j, m, t in self.keys]


def sorted_unique(arr) -> pa.Array:
    u = pc.unique(arr.drop_null() if hasattr(arr, "drop_null") else arr)
    if isinstance(u, pa.ChunkedArray):
        u = u.combine_chunks()
    return u.take(pc.sort_indices(u))


def encode(values, dictionary: pa.Array) -> np.ndarray:
    """Position of every value in the sorted dictionary (-1 when absent or null)."""
    idx = pc.index_in(values, value_set=dictionary)
    if isinstance(idx, pa.ChunkedArray):
        idx = idx.combine_chunks()
    return np.asarray(idx.fill_null(-1), dtype=np.int64)


def value_counts(arr) -> dict:
    vc = pc.value_counts(arr.fill_null("(null)"))
    return {str(d["values"]): int(d["counts"]) for d in vc.to_pylist()}


def to_float(arr) -> np.ndarray:
    return np.asarray(pc.cast(arr, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)


def list_column(rows: pa.Table, name: str, mask: np.ndarray) -> pa.ListArray:
    col = rows.column(name).filter(pa.array(mask))
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


# ======================================================================================== votes
VOTE_KEYS = ("voter", "prompt", "a", "b", "sign", "margin", "agree")


def no_votes() -> dict:
    return {"voter": np.zeros(0, np.int64), "prompt": np.zeros(0, np.int64), "a": np.zeros(0, np.int64),
            "b": np.zeros(0, np.int64), "sign": np.zeros(0, np.int64), "margin": np.zeros(0), "agree": np.zeros(0)}


def pointwise_values(cfg, rows, mask, voters, img_dict, prompt_dict, summary) -> dict:
    """One value per (voter, image): the mean label/score of its rows; contradictory labels are dropped."""
    idx = np.flatnonzero(mask)
    ids = list_column(rows, "image_ids", mask)
    img = encode(pc.list_element(ids, 0), img_dict) if len(ids) else np.zeros(0, np.int64)
    voter = voters.codes[idx]
    prompt = encode(rows.column("prompt_id").filter(pa.array(mask)), prompt_dict)
    label = to_float(rows.column("label").filter(pa.array(mask)))
    score = to_float(rows.column("score").filter(pa.array(mask)))
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


def ensemble_values(cfg, point: dict, voters: Voters, summary) -> dict:
    """--ensemble: the pointwise judges' scores (labels where a judge has no score) combined per image by
    autofeedback.ensemble (zmean / rankmean / vote) into one voter, `METHOD(JUDGE/MODE+...)`; its label is
    the majority of the members' labels (or, for score-only members, of their votes)."""
    from .. import ensemble

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
    share = ensemble.rowmean(L)
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


def pointwise_votes(point: dict, n_img: int) -> dict:
    good = ~np.isnan(point["value"])
    p = {k: point[k][good] for k in ("voter", "prompt", "image", "value")}
    order = np.lexsort((p["image"], p["prompt"], p["voter"]))
    p = {k: v[order] for k, v in p.items()}
    group = p["voter"].astype(np.int64) * (int(p["prompt"].max(initial=0)) + 1) + p["prompt"]
    ia, ib = _pairs_within(group)
    diff = p["value"][ia] - p["value"][ib]
    return {"voter": p["voter"][ia], "prompt": p["prompt"][ia], "a": p["image"][ia], "b": p["image"][ib],
            "sign": np.sign(diff).astype(np.int64), "margin": np.abs(diff), "agree": np.ones(len(ia))}


def pairwise_votes(cfg, rows, mask, ok, voters, img_dict, prompt_dict, summary) -> dict:
    """One verdict per (voter, pair) from rows asked in one or both orders."""
    idx = np.flatnonzero(mask)
    ids = list_column(rows, "image_ids", mask)
    lens = np.asarray(pc.list_value_length(ids).fill_null(0))
    c0 = np.full(len(idx), -1, np.int64)
    c1 = np.full(len(idx), -1, np.int64)
    two = lens == 2
    if two.any():
        sub = ids.filter(pa.array(two))
        c0[two] = encode(pc.list_element(sub, 0), img_dict)
        c1[two] = encode(pc.list_element(sub, 1), img_dict)
    choice = rows.column("choice").filter(pa.array(mask))
    cc = encode(choice, img_dict)
    is_tie = np.asarray(pc.equal(choice, "tie").fill_null(False))
    is_ok = ok[idx]
    prompt = encode(rows.column("prompt_id").filter(pa.array(mask)), prompt_dict)
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


def listwise_votes(rows, mask, voters, img_dict, prompt_dict, n_img, summary) -> dict:
    """All pairs of every ranking (best first; "a=b" = tied), then one verdict per (voter, pair)."""
    idx = np.flatnonzero(mask)
    ranking = list_column(rows, "ranking", mask)
    ids = list_column(rows, "image_ids", mask)
    n = len(idx)
    r_vals = pc.list_flatten(ranking)
    r_row = np.asarray(pc.list_parent_indices(ranking))
    offsets = np.asarray(ranking.offsets)
    pos = np.arange(len(r_row)) - offsets[r_row] if len(r_row) else np.zeros(0, np.int64)
    if len(r_vals) and pc.any(pc.match_substring(r_vals, "=")).as_py():
        split = pc.split_pattern(r_vals, "=")
        parent = np.asarray(pc.list_parent_indices(split))
        r_vals, r_row, pos = pc.list_flatten(split), r_row[parent], pos[parent]
    rc = encode(r_vals, img_dict)
    i_row = np.asarray(pc.list_parent_indices(ids))
    ic = encode(pc.list_flatten(ids), img_dict)
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
    prompt_all = encode(rows.column("prompt_id").filter(pa.array(mask)), prompt_dict)
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
    out = combine(votes, key, "majority")
    return {k: out[k] for k in VOTE_KEYS}


def combine(votes: dict, key: np.ndarray, how: str) -> dict:
    """Votes with the same key -> one verdict: majority of signs (or sign of the mean signed margin)."""
    if len(key) == 0:
        return {**no_votes(), "n": np.zeros(0, np.int64)}
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

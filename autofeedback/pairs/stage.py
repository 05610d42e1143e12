"""pairs stage: read the source table, derive the votes (autofeedback.pairs.votes), combine them, and write
preferences, labels and augmentations (autofeedback.pairs has the overview).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import tables
from ..config import JUDGE_MODES, PairsConfig
from ..errors import InputError
from .augment import augmentations_table
from .votes import (POINTWISE_MODES, VOTE_KEYS, Voters, combine, encode, ensemble_values, listwise_votes, no_votes,
                    pairwise_votes, pointwise_values, pointwise_votes, sorted_unique, value_counts)


def run(cfg: PairsConfig) -> dict:
    """Derive preferences (and labels, augmentations) from the run's judgments. Returns a summary."""
    t0 = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    # 1. Check inputs: the source table, its ok rows, the judges and modes asked for.
    rows, status = _load_votes_table(cfg)
    voters = Voters(rows)
    summary: dict = {"source": cfg.source, "rows": rows.num_rows, "status": status, "voters": {},
                     "dropped": Counter(), "ties": Counter()}
    ok = np.asarray(pc.equal(rows.column("status"), "ok").fill_null(False))
    img_dict = sorted_unique(pc.list_flatten(rows.column("image_ids")))
    prompt_dict = sorted_unique(rows.column("prompt_id"))
    n_img = max(len(img_dict), 1)
    mode = np.asarray(rows.column("mode").to_numpy(zero_copy_only=False))

    # 2. One verdict per (voter, image pair) from each mode.
    parts = []
    point = None
    m = np.isin(mode, POINTWISE_MODES) & ok
    if m.any():
        point = pointwise_values(cfg, rows, m, voters, img_dict, prompt_dict, summary)
        if cfg.ensemble:
            point = ensemble_values(cfg, point, voters, summary)
        parts.append(pointwise_votes(point, n_img))
    m = mode == "pairwise"
    if (m & ok).any():
        parts.append(pairwise_votes(cfg, rows, m, ok, voters, img_dict, prompt_dict, summary))
    m = (mode == "listwise") & ok
    if m.any():
        parts.append(listwise_votes(rows, m, voters, img_dict, prompt_dict, n_img, summary))
    votes = {k: np.concatenate([p[k] for p in parts]) for k in VOTE_KEYS} if parts else no_votes()
    for v in np.unique(votes["voter"]):
        summary["voters"].setdefault(voters.names[v], {})["pairs"] = int((votes["voter"] == v).sum())

    # 3. Combine voters per image pair, apply the tie policy, the minimum margin and the per-prompt cap.
    if cfg.dedupe:
        final = combine(votes, votes["a"].astype(np.int64) * n_img + votes["b"], cfg.combine)
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
        augmentations = augmentations_table(cfg, run_dir, ids, summary)

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
    status = {k: v for k, v in value_counts(t.column("status")).items()}
    if not status.get("ok"):
        raise InputError(f"{path}: no ok rows to make pairs from (status: "
                         f"{', '.join(f'{k}={v}' for k, v in sorted(status.items()))})")
    return t, status


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
        codes = encode(t.column("prompt_id"), prompt_dict)
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


def _write_report(cfg: PairsConfig, summary: dict, voters: Voters, rows: pa.Table) -> None:
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

"""Reading ratings: label files (Parquet, CSV/TSV, JSON lines, JSON) and the run's own tables, the --map column
mapping, and normalizing the long label format into one row per rating (autofeedback.eval has the format).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import stats, tables
from ..errors import InputError
from ..labels import FIRST, NO, SECOND, TIE, YES  # one answer vocabulary with import-labels
from . import protocol

RATER_COLUMNS = ("rater", "annotator", "judge", "worker_id", "worker")
MAPPABLE = ("item_id", "rater", "score", "label", "choice", "category", "prompt_id", "image_ids", "image_id",
            "mode", "status", "details")


def parse_map(items) -> list[dict]:
    """['item_id=image', 'mode=pairwise', 'judgments:rater=\'gpt4o\'', ...] or {'item_id': 'image'} -> the
    --map entries (autofeedback.eval.protocol.parse_map: columns, constants, joins, per-file roles)."""
    return protocol.parse_map(items, MAPPABLE)


def maps_target(mapping: list[dict], target: str, role: str) -> bool:
    return any(m["target"] == target and m["role"] in (None, role) for m in mapping)


def check_map_used(mapping: list[dict], paths_by_role: dict[str, list]) -> None:
    if not mapping:
        return
    protocol.check_map(mapping, {role: [_columns_of(Path(p)) for p in paths] for role, paths in paths_by_role.items()})


def _columns_of(path: Path) -> list[str]:
    if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        shards = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        try:
            return sorted({n for s in shards for n in pq.read_schema(s).names})
        except Exception:  # unreadable: read_ratings() reports it properly
            return []
    return list(read_ratings(path, None, nrows=5).columns)


def read_ratings(path, mapping=None, nrows: int | None = None, role: str = "human"):
    """A label file (Parquet file or folder, CSV/TSV, JSONL, JSON) as a DataFrame, with the --map entries
    of this role ("human" or "judgments") applied."""
    import pandas as pd

    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if path.is_dir() and path.name == "human_labels.parquet":
            # a run's own table: one row per label_id, the newest (a re-label or an undo supersedes)
            df = tables.read(path, "human_labels").to_pandas()
        elif path.is_dir() or suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", nrows=nrows)
        elif suffix == ".json":  # a JSON array of records (e.g. GenAI-Bench's pairwise.json), else JSON lines
            try:
                df = pd.read_json(path)
            except ValueError:
                df = pd.read_json(path, lines=True, nrows=nrows)
        elif suffix in (".jsonl", ".ndjson"):
            try:
                df = pd.read_json(path, lines=True, nrows=nrows)
            except ValueError:
                df = pd.read_json(path)
        else:
            raise InputError(f"{path}: unknown label file type {suffix!r}; use .parquet, .csv, .tsv or .jsonl")
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise InputError(f"{path}: could not read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if nrows is not None:
        df = df.head(nrows)
    if mapping:
        specs = mapping if isinstance(mapping, list) else parse_map(mapping)
        df = protocol.apply_map(df, specs, role)
    return df


def read_run_judgments(run_dir):
    path = tables.table_path(run_dir, "judgments")
    t = tables.read(path, "judgments", columns=["judge", "mode", "prompt_id", "image_ids", "label", "score",
                                                "choice", "status", "details", "cost_usd"])
    return t.to_pandas()


def read_run_table(run_dir: Path, name: str, columns: list[str]):
    path = tables.table_path(run_dir, name)
    if not tables.exists(path):
        return None
    return tables.read(path, name, columns=columns).to_pandas()


def is_null(v) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN
    except (TypeError, ValueError):
        return False


def _as_list(v) -> list | None:
    if v is None:
        return None
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v]
    if is_null(v):
        return None
    s = str(v).strip()
    if s.startswith("["):
        try:
            return [str(x) for x in json.loads(s)]
        except json.JSONDecodeError:
            pass
    return [x.strip() for x in s.split("|")] if "|" in s else [s]


def _text(v):
    return None if is_null(v) else str(v)


def normalize(df, where, default_rater: str = "rater", prefer_item_id: bool = False, role: str = "human",
              label_map: dict[str, float] | None = None):
    """Long ratings -> one row per rating: item_id, rater, kind, value, c4, category, prompt_id, status,
    consistent, first_chosen, first_sign, shown (the pair in the order shown), source.

    kind is score (a number), label (1/0) or choice (+1 = first image of the pair in sorted-id order,
    -1 = second, 0 = tie). c4 is the four-way answer of a choice (autofeedback.eval.protocol: A, B, tie,
    both bad, a judge's undifferentiated tie). The item is image_ids when the file has it (item_id is then
    taken for a row id, as `import-labels` reads it) unless item_id was mapped explicitly (prefer_item_id),
    else item_id, else image_id. Without a prompt_id column, a prompt column (the prompt text) groups the
    items. role "judge": a choice no vocabulary knows is a failed answer (status `unparsed`), not an error.
    label_map (--labels): label words -> numbers; with a value other than 0/1 the labels become scores.
    Raises InputError naming the file, column and value for bad input.
    """
    import pandas as pd

    where = str(where)
    cols = set(df.columns)
    if len(df) == 0:
        raise InputError(f"{where}: no rows")
    if "prompt_id" not in cols and "prompt" in cols:
        df = df.assign(prompt_id=df["prompt"])
        cols.add("prompt_id")
    if label_map and "label" in cols and any(v not in (0.0, 1.0) for v in label_map.values()):
        # three-level (or more) word labels are an ordinal score: yes=1, partly=0.5, no=0
        df = df.copy()
        words = df["label"]
        mapped = [float("nan") if is_null(v) else label_map.get(str(v).strip().lower()) for v in words]
        for i, (v, m) in enumerate(zip(words, mapped)):
            if m is None:
                raise InputError(f"{where}: row {i}: column 'label' value {v!r} is not in --labels "
                                 f"({', '.join(f'{k}={g:g}' for k, g in label_map.items())})")
        if "score" in cols:
            df["score"] = [sc if not is_null(sc) else m for sc, m in zip(df["score"], mapped)]
        else:
            df["score"] = mapped
            cols.add("score")
        df = df.drop(columns=["label"])
        cols.discard("label")
    if "mode" in cols:  # rankings (listwise) are not compared with labels here
        df = df[~df["mode"].astype(str).str.lower().isin(["listwise"])].reset_index(drop=True)
        if len(df) == 0:
            raise InputError(f"{where}: only listwise rows; eval compares scores, labels and pairwise choices")
    n = len(df)
    # rater
    rater_col = next((c for c in RATER_COLUMNS if c in cols), None)
    raters = (df[rater_col].astype(str) if rater_col else pd.Series([default_rater] * n, index=df.index))
    if rater_col and df[rater_col].isna().any():
        row = int(np.flatnonzero(df[rater_col].isna())[0])
        raise InputError(f"{where}: column {rater_col!r} has empty values (row {row})")
    modes = df["mode"].astype(str).str.lower() if "mode" in cols else pd.Series([None] * n, index=df.index)
    # item ids and the pair shown
    id_lists = [_as_list(v) for v in df["image_ids"]] if "image_ids" in cols else [None] * n
    if "item_id" in cols and (prefer_item_id or "image_ids" not in cols):
        if df["item_id"].isna().any():
            row = int(np.flatnonzero(df["item_id"].isna())[0])
            raise InputError(f"{where}: column 'item_id' has empty values (row {row})")
        items = df["item_id"].astype(str).tolist()
    elif "image_ids" in cols:
        items = []
        for i, ids in enumerate(id_lists):
            if not ids:
                raise InputError(f"{where}: row {i}: empty image_ids")
            items.append(ids[0] if len(ids) == 1 else "|".join(sorted(ids)))
    elif "image_id" in cols:
        items = df["image_id"].astype(str).tolist()
    else:
        raise InputError(f"{where}: no item column: need item_id (or image_ids / image_id); it has: "
                         f"{', '.join(map(str, df.columns))}. Map one with --map item_id=COLUMN")
    status = (df["status"].fillna("ok").astype(str).str.lower() if "status" in cols
              else pd.Series(["ok"] * n, index=df.index))
    consistent = [None] * n
    if "details" in cols:
        for i, d in enumerate(df["details"]):
            if isinstance(d, str) and d.strip():
                try:
                    obj = json.loads(d)
                except json.JSONDecodeError:
                    raise InputError(f"{where}: row {i}: column 'details' is not JSON: {d[:80]!r}") from None
                if isinstance(obj, dict) and isinstance(obj.get("consistent"), bool):
                    consistent[i] = obj["consistent"]
            elif isinstance(d, dict) and isinstance(d.get("consistent"), bool):
                consistent[i] = d["consistent"]
    score = df["score"] if "score" in cols else None
    label = df["label"] if "label" in cols else None
    choice = df["choice"] if "choice" in cols else None
    if score is None and label is None and choice is None:
        raise InputError(f"{where}: no rating column: need score, label or choice; it has: "
                         f"{', '.join(map(str, df.columns))}. Map one with --map score=COLUMN")
    # per rater: which value column to use for pointwise rows
    kinds, values, first_chosen, first_sign, shown, alt_label, c4s = [], [], [], [], [], [], []
    unparsed = np.zeros(n, dtype=bool)
    empty = np.zeros(n, dtype=bool)   # no score, label or choice at all: takes the kind of the rater's other rows
    score_raters = set(raters[score.notna()]) if score is not None else set()
    for i in range(n):
        r = raters.iat[i]
        mode = modes.iat[i]
        ids = id_lists[i]
        c = None if choice is None else choice.iat[i]
        empty[i] = is_null(c) and (score is None or is_null(score.iat[i])) and (
            label is None or is_null(label.iat[i]))
        is_pair = mode == "pairwise" or (ids is not None and len(ids) == 2 and not is_null(c)) or (
            not is_null(c) and (score is None or is_null(score.iat[i])) and (label is None or is_null(label.iat[i])))
        fc, fs, sh, c4 = None, 1.0, None, float("nan")
        if is_pair:
            kind = "choice"
            val, fc, fs, sh, c4 = _parse_choice(c, ids, where, i, strict=role != "judge")
            unparsed[i] = not is_null(c) and not np.isfinite(val)
        elif r in score_raters:
            kind = "score"
            val = _parse_score(score.iat[i], where, "score", i)
        elif label is not None:
            kind = "label"
            val = _parse_label(label.iat[i], where, i)
        else:
            kind = "score"
            val = float("nan")
        kinds.append(kind)
        values.append(val)
        c4s.append(c4)
        alt_label.append(_parse_label(label.iat[i], where, i) if kind == "score" and label is not None
                         else float("nan"))
        first_chosen.append(fc)
        first_sign.append(fs)
        shown.append(sh)
    # a row without any answer (a failed request) belongs to its rater's kind: one judge, whatever its failures
    # look like, not a second "pointwise" judge made of its pairwise failures (issue #22)
    if empty.any() and (~empty).any():
        main = pd.Series(kinds)[~empty].groupby(raters[~empty].to_numpy()).agg(lambda k: k.value_counts().index[0])
        for i in np.flatnonzero(empty):
            kinds[i] = main.get(raters.iat[i], kinds[i])
    out = pd.DataFrame({
        "item_id": items, "rater": raters.tolist(), "kind": kinds, "value": np.asarray(values, dtype=np.float64),
        "c4": np.asarray(c4s, dtype=np.float64),
        "category": [_text(v) for v in df["category"]] if "category" in cols else [None] * n,
        "prompt_id": [_text(v) for v in df["prompt_id"]] if "prompt_id" in cols else [None] * n,
        "status": status.tolist(), "consistent": consistent,
        "cost_usd": (pd.to_numeric(df["cost_usd"], errors="coerce").to_numpy(dtype=np.float64) if "cost_usd" in cols
                     else np.full(n, np.nan)), "alt_label": alt_label, "first_chosen": first_chosen,
        "first_sign": first_sign, "shown": shown, "source": where,
    })
    # a judge used in several modes (pointwise, pairwise, vqa...) is one rater per mode
    out["mode"] = [m if m not in (None, "none", "nan") else ("pairwise" if k == "choice" else "pointwise")
                   for m, k in zip(modes.tolist(), kinds)]
    mixed = out.groupby("rater")["mode"].nunique()
    for r in mixed[mixed > 1].index:
        sel = out["rater"] == r
        out.loc[sel, "rater"] = r + "/" + out.loc[sel, "mode"]
    ok = out["status"] == "ok"
    out.loc[ok & unparsed, "status"] = "unparsed"
    missing = (out["status"] == "ok") & out["value"].isna()
    if (missing | (ok & unparsed)).all():
        raise InputError(f"{where}: every row lacks a usable value in score/label/choice")
    out.loc[missing, "status"] = "no_value"
    return out


def _parse_score(v, where, col, i) -> float:
    if is_null(v):
        return float("nan")
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"{where}: row {i}: column {col!r} value {v!r} is not a number") from None


def _parse_label(v, where, i) -> float:
    if is_null(v):
        return float("nan")
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    s = str(v).strip().lower()
    if s in YES:
        return 1.0
    if s in NO:
        return 0.0
    raise InputError(f"{where}: row {i}: column 'label' value {v!r} is not a yes/no label "
                     f"(use true/false, yes/no or 1/0)")


def _parse_choice(c, ids, where, i, strict: bool = True):
    """-> (canonical sign, first_chosen, first_sign, shown, four-way code). sign +1 = sorted-first image
    preferred. Arena answers (leftvote, [[A>B]], bothbad_vote, [[A=B=Good]]...) are read too; both-bad is a
    tie for the sign and stays distinct in the four-way code. A plain "tie" is a human's tie (both good) and a
    judge's undifferentiated tie. strict=False (judges): an unknown answer is NaN (a failed answer)."""
    nan = float("nan")
    if is_null(c):
        return nan, None, 1.0, None, nan
    s = str(c).strip()
    low = s.lower()
    arena = protocol.arena_answer(s)
    tie_code = stats.C4_TIE if strict else stats.C4_TIE_ANY
    pos = "A" if (low in FIRST or arena == "A") else "B" if (low in SECOND or arena == "B") else None
    tie = arena if arena in ("tie", "both_bad", "tie_any") else ("tie" if low in TIE else None)
    if ids is not None and len(ids) == 2:
        canon = sorted(ids)
        fs = 1.0 if ids[0] == canon[0] else -1.0
        shown = "|".join(ids)
        if s in ids:
            chosen = s
        elif pos is not None:
            chosen = ids[0] if pos == "A" else ids[1]
        elif tie is not None:
            return 0.0, None, fs, shown, (protocol.CODE[tie] if arena else tie_code)
        elif not strict:
            return nan, None, fs, shown, nan
        else:
            raise InputError(f"{where}: row {i}: column 'choice' value {c!r} is neither image of the pair "
                             f"{ids} nor A/B, first/second, 0/1 (position), tie or both-bad")
        sign = 1.0 if chosen == canon[0] else -1.0
        return sign, chosen == ids[0], fs, shown, (stats.C4_A if sign > 0 else stats.C4_B)
    if pos == "A":
        return 1.0, True, 1.0, None, stats.C4_A
    if pos == "B":
        return -1.0, False, 1.0, None, stats.C4_B
    if tie is not None:
        return 0.0, None, 1.0, None, (protocol.CODE[tie] if arena else tie_code)
    if not strict:
        return nan, None, 1.0, None, nan
    raise InputError(f"{where}: row {i}: column 'choice' value {c!r} is not A/B, first/second, 0/1 (position), "
                     f"tie or both-bad (or give the pair in image_ids and the chosen image id)")


def merge_sources(frames):
    import pandas as pd

    if not frames:
        return None
    seen: dict[str, str] = {}
    fixed = []
    for f in frames:
        f = f.copy()
        for r in f["rater"].unique():
            src = f["source"].iat[0]
            if r in seen and seen[r] != src:
                f.loc[f["rater"] == r, "rater"] = f"{r}@{Path(src).name}"
            else:
                seen[r] = src
        fixed.append(f)
    return pd.concat(fixed, ignore_index=True)

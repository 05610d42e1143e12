"""import-labels: human (or external) ratings, choices and rankings -> RUN/human_labels.parquet.

Reads:   FILE (.csv, .tsv, .jsonl/.json, .parquet), one row per rating / choice / ranking; `--map FIELD=COLUMN`
         renames a column to the field it holds
Writes:  RUN/human_labels.parquet  label_id, annotator, mode, prompt_id, image_ids, label, score, choice, ranking,
                                   category, created_at (the shapes of judgments, so `pairs` and `eval` read both)
         RUN/prompts.parquet       prompts given as text and not yet in the run (suite = --suite)
Fields:  every kind   prompt_id or prompt (prompt_id = hash(suite, prompt)), optional annotator, category,
                      item_id (the file's own row id, part of label_id)
         ratings      image_id (or image_ids with one image) and label (yes/no, true/false, 1/0, aligned...)
                      and/or score (a number)                                               -> mode pointwise
         choices      image_ids (two images, in the order shown; or image_0 + image_1) and choice (an image id,
                      A/B, first/second, left/right, 0/1 = 0-based position, or tie/equal/draw), or Pick-a-Pic's
                      label_0 + label_1 (1/0, 0/1, 0.5/0.5 = tie)                           -> mode pairwise
         rankings     image_ids (N images) and ranks (numbers aligned with image_ids, 1 = best, equal = tied), or
                      ranking (image ids best first; numbers there are read as ranks)       -> mode listwise,
                      ranking = image ids best first, tied images joined by "=" in one entry
List cells may be lists, JSON lists or "a|b|c". label_id = content_id(annotator, mode, prompt_id, image_ids,
item_id, n-th repeat), so importing the same file again adds nothing, and a rating repeated with another
value is kept (and reported as contradictory; `pairs` drops it).
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path

from . import tables
from .config import ImportLabelsConfig
from .errors import InputError

FIELDS = ("prompt_id", "prompt", "annotator", "category", "item_id", "image_id", "image_ids", "image_0", "image_1",
          "label", "score", "choice", "label_0", "label_1", "ranks", "ranking")
# The answer vocabulary of every human label file: import-labels, eval and the label page all read it from here.
# Pairwise numbers are 0-based positions (0 = first shown).
YES = {"true", "yes", "y", "1", "1.0", "good", "aligned", "correct", "pass", "match"}
NO = {"false", "no", "n", "0", "0.0", "bad", "misaligned", "not aligned", "wrong", "incorrect", "fail"}
TIE = {"tie", "equal", "draw", "same", "both", "neither", "=", "0.5"}
FIRST = {"a", "first", "left", "image_0", "image 0", "0", "0.0"}
SECOND = {"b", "second", "right", "image_1", "image 1", "1", "1.0"}
MODES = {"ratings": "pointwise", "choices": "pairwise", "rankings": "listwise"}


def run(cfg: ImportLabelsConfig) -> dict:
    """Read the file, normalize every row, append what the run does not have yet. Returns a summary."""
    # 1. Check inputs: read the file, apply the column map, pick the kind.
    df = read_file(cfg.file)
    for field, column in cfg.column_map.items():
        if field not in FIELDS:
            raise InputError(f"--map {field}={column}: unknown field {field!r}; fields: {', '.join(FIELDS)}")
        if column not in df.columns:
            raise InputError(f"--map {field}={column}: {cfg.file} has no column {column!r} "
                             f"(columns: {', '.join(map(str, df.columns))})")
        df[field] = df[column]
    kind = cfg.kind if cfg.kind != "auto" else detect_kind(df, cfg.file)
    if "prompt_id" not in df.columns and "prompt" not in df.columns:
        raise InputError(f"{cfg.file}: needs a prompt_id or a prompt column (or --map prompt=COLUMN)")
    default_annotator = cfg.annotator or cfg.file.name.split(".")[0]

    # 2. Normalize every row into a human_labels row.
    rows, prompts = [], {}
    seen: Counter = Counter()
    records = df.to_dict("records")
    for i, rec in enumerate(records):
        where = f"{cfg.file}: row {i + 1}"
        prompt = _text(rec.get("prompt"))
        pid = _text(rec.get("prompt_id")) or (tables.prompt_id(cfg.suite, prompt) if prompt else None)
        if pid is None:
            raise InputError(f"{where}: no prompt_id and no prompt")
        if prompt and pid not in prompts:
            prompts[pid] = {"prompt_id": pid, "prompt": prompt, "suite": cfg.suite,
                            "category": _text(rec.get("category")), "metadata": "{}", "split": None}
        row = {"annotator": _text(rec.get("annotator")) or default_annotator, "mode": MODES[kind],
               "prompt_id": pid, "category": _text(rec.get("category"))}
        row.update(_ROW[kind](rec, where))
        ident = (row["annotator"], row["mode"], pid, row["image_ids"], _text(rec.get("item_id")))
        row["label_id"] = tables.content_id("human", *ident, seen[json.dumps(ident)])
        seen[json.dumps(ident)] += 1
        rows.append(row)
    if not rows:
        raise InputError(f"{cfg.file}: no rows")

    # 3. Append what is new (or changed) to human_labels, and new prompts to prompts.
    summary = {"file": str(cfg.file), "kind": kind, "mode": MODES[kind], "rows": len(rows),
               "annotators": dict(Counter(r["annotator"] for r in rows)), **_checks(rows, kind, cfg.run_dir)}
    with tables.run_lock(cfg.run_dir):
        path = tables.table_path(cfg.run_dir, "human_labels")
        tables.clean_temp(path)
        old = {r["label_id"]: r for r in tables.read(path, "human_labels", required=False).to_pylist()}
        now = tables.now()
        new = [{**r, "created_at": now} for r in rows if _changed(old.get(r["label_id"]), r)]
        tables.append(path, new, "human_labels", tag="import")
        tables.compact(path, "human_labels")
        summary["written"] = len(new)
        summary["prompts_added"] = 0
        if cfg.prompts and prompts:
            ppath = tables.table_path(cfg.run_dir, "prompts")
            have = tables.read_keys(ppath, "prompts")
            add = [p for k, p in prompts.items() if k not in have]
            tables.append(ppath, add, "prompts", tag="import")
            summary["prompts_added"] = len(add)
    return summary


# ========================================================================================= reading
def read_file(path: Path):
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if path.is_dir() or suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            data = json.loads(path.read_text())
            return pd.DataFrame(data if isinstance(data, list) else data.get("data", data))
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: could not read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    except Exception as exc:  # pyarrow/pandas raise many types for unreadable files
        raise InputError(f"{path}: could not read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    raise InputError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv, .jsonl, .json or .parquet")


def detect_kind(df, where) -> str:
    cols = set(df.columns)
    if cols & {"ranks", "ranking"}:
        return "rankings"
    if "choice" in cols or {"label_0", "label_1"} <= cols:
        return "choices"
    if cols & {"label", "score"}:
        return "ratings"
    raise InputError(f"{where}: can't tell ratings, choices or rankings from the columns "
                     f"({', '.join(map(str, df.columns))}); expected label/score, choice (or label_0+label_1), "
                     f"or ranks/ranking; use --map FIELD=COLUMN or --kind")


# ================================================================================== normalization
def _ratings(rec: dict, where: str) -> dict:
    ids = _image_ids(rec, where)
    if len(ids) != 1:
        raise InputError(f"{where}: a rating is about one image, got image_ids {ids}")
    label = _bool(rec.get("label"), where) if "label" in rec else None
    score = _number(rec.get("score"), where, "score") if "score" in rec else None
    if label is None and score is None:
        raise InputError(f"{where}: no label and no score")
    return {"image_ids": ids, "label": label, "score": score}


def _choices(rec: dict, where: str) -> dict:
    ids = _image_ids(rec, where)
    if len(ids) != 2 or ids[0] == ids[1]:
        raise InputError(f"{where}: a choice needs two different images, got {ids}")
    if _present(rec.get("choice")):
        raw = rec["choice"]
        s = str(raw).strip()
        if s in ids:
            choice = s
        elif s.lower() in TIE or (isinstance(raw, float) and raw == 0.5):
            choice = "tie"
        elif s.lower() in FIRST or s.lower().removesuffix(".0") == "0":
            choice = ids[0]
        elif s.lower() in SECOND or s.lower().removesuffix(".0") == "1":
            choice = ids[1]
        else:
            raise InputError(f"{where}: choice {raw!r} is neither image ({ids[0]!r}, {ids[1]!r}) nor A/B, "
                             f"first/second, 0/1 or tie")
    elif _present(rec.get("label_0")) and _present(rec.get("label_1")):
        l0 = _number(rec["label_0"], where, "label_0")
        l1 = _number(rec["label_1"], where, "label_1")
        choice = "tie" if l0 == l1 else ids[0] if l0 > l1 else ids[1]
    else:
        raise InputError(f"{where}: no choice (or label_0 + label_1)")
    return {"image_ids": ids, "choice": choice}


def _rankings(rec: dict, where: str) -> dict:
    ranks = rec.get("ranks") if _present_list(rec.get("ranks")) else None
    ranking = _as_list(rec.get("ranking")) if _present_list(rec.get("ranking")) else None
    if ranks is None and ranking is not None and all(_is_number(x) for x in ranking):
        ranks, ranking = ranking, None  # ImageReward: "ranking" holds ranks aligned with the images
    ids = _image_ids(rec, where, required=ranking is None)
    if ranks is not None:
        ranks = [_number(x, where, "ranks") for x in _as_list(ranks)]
        if len(ranks) != len(ids):
            raise InputError(f"{where}: {len(ranks)} ranks for {len(ids)} images")
        if len(ids) < 2 or len(set(ids)) != len(ids):
            raise InputError(f"{where}: a ranking needs two or more different images, got {ids}")
        groups = [[i for _, i in grp] for _, grp in
                  itertools.groupby(sorted(zip(ranks, ids), key=lambda x: x[0]), key=lambda x: x[0])]
    elif ranking is not None:
        groups = [str(x).split("=") for x in ranking]
        flat = [i for g in groups for i in g]
        if not ids:
            ids = flat
        if sorted(flat) != sorted(ids) or len(set(flat)) != len(flat):
            raise InputError(f"{where}: ranking {ranking} is not a permutation of image_ids {ids}")
    else:
        raise InputError(f"{where}: no ranks or ranking")
    for i in ids:
        if "=" in i:
            raise InputError(f"{where}: image id {i!r} contains '=', which marks ties in rankings")
    return {"image_ids": ids, "ranking": ["=".join(g) for g in groups]}


_ROW = {"ratings": _ratings, "choices": _choices, "rankings": _rankings}


def _image_ids(rec: dict, where: str, required: bool = True) -> list[str]:
    if _present_list(rec.get("image_ids")):
        ids = [str(x) for x in _as_list(rec["image_ids"])]
    elif _present(rec.get("image_0")) and _present(rec.get("image_1")):
        ids = [str(rec["image_0"]), str(rec["image_1"])]
    elif _present(rec.get("image_id")):
        ids = [str(rec["image_id"])]
    elif required:
        raise InputError(f"{where}: no image_ids (or image_id, or image_0 + image_1); use --map image_ids=COLUMN")
    else:
        ids = []
    return ids


def _as_list(v) -> list:
    if hasattr(v, "tolist") and not isinstance(v, str):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    s = str(v).strip()
    if s.startswith("["):
        try:
            return list(json.loads(s))
        except json.JSONDecodeError:
            pass
    return [x.strip() for x in s.split("|")] if "|" in s else [s]


def _present(v) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and math.isnan(v):
        return False
    return not (isinstance(v, str) and not v.strip())


def _present_list(v) -> bool:
    if hasattr(v, "__len__") and not isinstance(v, str):
        return len(v) > 0
    return _present(v)


def _text(v) -> str | None:
    return str(v) if _present(v) else None


def _is_number(x) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, float)):
        return True
    try:
        float(str(x))
        return True
    except ValueError:
        return False


def _number(v, where: str, field: str) -> float | None:
    if not _present(v):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {field} {v!r} is not a number") from None


def _bool(v, where: str) -> bool | None:
    if not _present(v):
        return None
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in YES:
        return True
    if s in NO:
        return False
    raise InputError(f"{where}: label {v!r} is not yes/no, true/false, 1/0, aligned/misaligned")


def _changed(old: dict | None, new: dict) -> bool:
    if old is None:
        return True
    return any(old.get(k) != new.get(k) for k in ("annotator", "mode", "prompt_id", "image_ids", "label", "score",
                                                   "choice", "ranking", "category"))


def _checks(rows: list[dict], kind: str, run_dir) -> dict:
    """What the labels hold: contradictions, pairs a ranking gives, images the run does not have."""
    out: dict = {}
    if kind == "ratings":
        by = {}
        for r in rows:
            if r["label"] is not None:
                by.setdefault((r["annotator"], r["image_ids"][0]), set()).add(r["label"])
        out["contradictory"] = sum(len(v) > 1 for v in by.values())
    elif kind == "choices":
        by = {}
        for r in rows:
            a, b = sorted(r["image_ids"])
            by.setdefault((r["annotator"], a, b), set()).add(r["choice"])
        out["contradictory"] = sum(len(v - {"tie"}) > 1 for v in by.values())
        out["ties"] = sum(r["choice"] == "tie" for r in rows)
    else:
        strict = ties = 0
        for r in rows:
            sizes = [len(g.split("=")) for g in r["ranking"]]
            n = sum(sizes)
            t = sum(s * (s - 1) // 2 for s in sizes)
            ties += t
            strict += n * (n - 1) // 2 - t
        out["strict_pairs"], out["tied_pairs"] = strict, ties
    images = tables.table_path(run_dir, "images")
    if tables.exists(images):
        have = tables.read_keys(images, "images")
        out["images_not_in_run"] = len({i for r in rows for i in r["image_ids"]} - have)
    return out


def format_summary(s: dict, cfg: ImportLabelsConfig | None = None) -> str:
    lines = [f"imported {s['rows']} {s['kind']} from {s['file']} (mode {s['mode']}): {s['written']} new or changed "
             f"rows, {s['prompts_added']} new prompts"]
    lines.append("  annotators: " + ", ".join(f"{k} ({v})" for k, v in sorted(s["annotators"].items())))
    if "strict_pairs" in s:
        lines.append(f"  rankings give {s['strict_pairs']} strict pairs and {s['tied_pairs']} tied pairs")
    if s.get("ties"):
        lines.append(f"  ties: {s['ties']}")
    if s.get("contradictory"):
        lines.append(f"  contradictory: {s['contradictory']} items labeled both ways by one annotator "
                     f"(kept here; `pairs` drops them)")
    if s.get("images_not_in_run"):
        lines.append(f"  {s['images_not_in_run']} images are not in the run's images table (pairs work; export "
                     f"needs the images)")
    return "\n".join(lines)

"""Load text-to-image prompts from a file (jsonl / txt / csv / parquet) or a built-in suite.

jsonl: one object per line with "prompt" and optionally "suite", "category", "metadata", "split".
txt:   one prompt per line (blank lines and lines starting with # are skipped).
csv:   a "prompt" column, the others as above; metadata may be a JSON string.
Built-in suites: "shapes" (the embedded default world).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa

from . import tables
from .errors import InputError

BUILTIN_SUITES = ("shapes",)


def _record(obj: dict, where: str, default_suite: str) -> dict:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object with a 'prompt' field, got {type(obj).__name__}")
    text = obj.get("prompt")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: missing or empty 'prompt' field")
    meta = obj.get("metadata") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta.strip() else {}
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: 'metadata' is not valid JSON ({exc.msg})") from None
    suite = str(obj.get("suite") or default_suite)
    text = text.strip()
    return {
        "prompt_id": tables.prompt_id(suite, text),
        "prompt": text,
        "suite": suite,
        "category": None if obj.get("category") in (None, "") else str(obj["category"]),
        "metadata": json.dumps(meta, sort_keys=True),
        "split": None if obj.get("split") in (None, "") else str(obj["split"]),
    }


def load(source: str | Path, split: str | None = None, limit: int | None = None) -> pa.Table:
    """Prompts as a validated prompts table (one row per distinct prompt, file order kept)."""
    source_str = str(source)
    if source_str in BUILTIN_SUITES:
        from .shapes.suite import suite_records

        rows = [_record(r, f"suite {source_str}", source_str) for r in suite_records()]
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"prompts file not found: {path} (or use a built-in suite: {', '.join(BUILTIN_SUITES)})")
        if path.is_dir() or path.suffix == ".parquet":
            rows = tables.read(path, "prompts").to_pylist()
        else:
            rows = _read_text_file(path)
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise InputError(f"{source}: no prompts with split {split!r}")
    seen: set[str] = set()
    rows = [r for r in rows if not (r["prompt_id"] in seen or seen.add(r["prompt_id"]))]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise InputError(f"{source}: no prompts in it (the file is empty)")
    return tables.to_table(rows, "prompts")


def _read_text_file(path: Path) -> list[dict]:
    suite = path.stem
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            rows.append(_record(obj, f"{path}:{n}", suite))
        return rows
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None:
            return []
        if "prompt" not in reader.fieldnames:
            raise InputError(f"{path}: missing column 'prompt' (columns: {', '.join(reader.fieldnames)})")
        return [_record(row, f"{path}:{n}", suite) for n, row in enumerate(reader, start=2)]
    if path.suffix in (".txt", ""):
        return [
            _record({"prompt": line}, f"{path}:{n}", suite)
            for n, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    raise InputError(f"{path}: unknown prompts format {path.suffix!r}; use .jsonl, .txt, .csv or .parquet")


def metadata(row: dict) -> dict:
    raw = row.get("metadata")
    return json.loads(raw) if raw else {}

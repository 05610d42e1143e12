"""Every Parquet table of a run: schemas, content-hash IDs, validated reads, atomic append-only writes.

A run directory holds one table per stage. A table is a folder of Parquet shards, named like a file
(`images.parquet/part-*.parquet`) so that pandas, pyarrow and `datasets` read it as one table:

    pd.read_parquet("runs/x/images.parquet")

Writes never modify a shard: each append writes a new shard to a temporary name and renames it into
place, so a killed process leaves either the whole shard or nothing. Reads keep one row per key, the
newest by created_at: a crash between writing a compacted shard and deleting the old ones leaves
duplicates that nobody sees, and a retried request's row supersedes its api_error row. A stage that
supersedes rows compacts the table when it finishes (`compact`), so a plain `pd.read_parquet` sees each
key once too. A single-file Parquet table is read the same way, so users' own files work too.

A few rows by key (`read_ids`, `images_by_id`) read every shard's key column, then only the Parquet row
groups that hold a wanted key. Images shards are written in row groups of about ROW_GROUP_BYTES, so looking
up a few images reads those images' pixels (and at most their row groups' neighbours'), not the table's.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import InputError

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # the Hugging Face `Image` layout
ANSWER = pa.struct([
    ("question", pa.string()), ("expected", pa.string()), ("answer", pa.string()), ("correct", pa.bool_()),
])
TIMESTAMP = pa.timestamp("us", tz="UTC")
# Row groups of a table with an image column hold about this many bytes: the unit a lookup by key reads.
ROW_GROUP_BYTES = 4 << 20

SCHEMAS: dict[str, pa.Schema] = {
    # One row per text-to-image prompt. metadata is a JSON object (counts, colors, questions...).
    "prompts": pa.schema([
        ("prompt_id", pa.string()), ("prompt", pa.string()), ("suite", pa.string()),
        ("category", pa.string()), ("metadata", pa.string()), ("split", pa.string()),
    ]),
    # One row per generated image.
    "images": pa.schema([
        ("image_id", pa.string()), ("prompt_id", pa.string()), ("prompt", pa.string()), ("model", pa.string()),
        ("seed", pa.int64()), ("steps", pa.int32()), ("guidance", pa.float32()), ("height", pa.int32()),
        ("width", pa.int32()), ("sampler", pa.string()), ("lora", pa.string()), ("image", IMAGE),
        ("created_at", TIMESTAMP),
    ]),
    # One row per judge request (one image for pointwise, two for pairwise, N for listwise).
    # choice: the preferred image_id, or "tie". ranking: image_ids best first.
    "judgments": pa.schema([
        ("request_id", pa.string()), ("judge", pa.string()), ("mode", pa.string()), ("template", pa.string()),
        ("prompt_id", pa.string()), ("image_ids", pa.list_(pa.string())), ("label", pa.bool_()),
        ("score", pa.float64()), ("choice", pa.string()), ("ranking", pa.list_(pa.string())),
        ("caption", pa.string()), ("answers", pa.list_(ANSWER)), ("rationale", pa.string()),
        ("raw_response", pa.string()), ("status", pa.string()), ("error", pa.string()),
        ("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("cost_usd", pa.float64()),
        ("latency_s", pa.float64()), ("details", pa.string()), ("created_at", TIMESTAMP),
    ]),
    # One row per (chosen, rejected) pair.
    "preferences": pa.schema([
        ("pair_id", pa.string()), ("prompt_id", pa.string()), ("prompt", pa.string()),
        ("chosen_image_id", pa.string()), ("rejected_image_id", pa.string()), ("margin", pa.float64()),
        ("agreement", pa.float64()), ("source", pa.string()), ("created_at", TIMESTAMP),
    ]),
    # Human (or external) labels: the shapes of judgments plus the annotator.
    # ranking: image_ids best first; images tied in a human ranking share one entry, joined by "=" ("a=b").
    "human_labels": pa.schema([
        ("label_id", pa.string()), ("annotator", pa.string()), ("mode", pa.string()), ("prompt_id", pa.string()),
        ("image_ids", pa.list_(pa.string())), ("label", pa.bool_()), ("score", pa.float64()),
        ("choice", pa.string()), ("ranking", pa.list_(pa.string())), ("category", pa.string()),
        ("created_at", TIMESTAMP),
    ]),
    # One row per image: its pointwise label/score for reward training, combined over judges (autofeedback pairs).
    # judges: who labeled it; agreement: share of them agreeing with the label.
    "labels": pa.schema([
        ("label_id", pa.string()), ("image_id", pa.string()), ("prompt_id", pa.string()), ("prompt", pa.string()),
        ("label", pa.bool_()), ("score", pa.float64()), ("agreement", pa.float64()),
        ("judges", pa.list_(pa.string())), ("source", pa.string()), ("created_at", TIMESTAMP),
    ]),
    # One row per image: N-1 prompts with one metadata field changed (Lee et al.'s prompt classification).
    # changed[i]: the field changed in perturbed[i].
    "augmentations": pa.schema([
        ("aug_id", pa.string()), ("image_id", pa.string()), ("prompt_id", pa.string()), ("prompt", pa.string()),
        ("perturbed", pa.list_(pa.string())), ("changed", pa.list_(pa.string())), ("created_at", TIMESTAMP),
    ]),
    # One row per (CLIP model, image or text): a cached embedding (autofeedback embed / train reward).
    # model: the CLIP's content identity; kind: image | text; key: image_id, or the text's content hash.
    "embeddings": pa.schema([
        ("emb_id", pa.string()), ("model", pa.string()), ("kind", pa.string()), ("key", pa.string()),
        ("text", pa.string()), ("vector", pa.list_(pa.float32())), ("created_at", TIMESTAMP),
    ]),
}
KEYS = {"prompts": "prompt_id", "images": "image_id", "judgments": "request_id", "preferences": "pair_id",
        "human_labels": "label_id", "labels": "label_id", "augmentations": "aug_id",
        "embeddings": "emb_id"}
STATUSES = ("ok", "parse_error", "refused", "truncated", "api_error", "budget", "error")


# ----------------------------------------------------------------------------------------------- IDs
def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write a small file (report, metrics, image) whole or not at all: a temp file, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def content_id(*parts: object) -> str:
    """A stable ID from JSON-able parts: the same work gets the same ID on every machine."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def prompt_id(suite: str, text: str) -> str:
    return content_id("prompt", suite, text)


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


# ------------------------------------------------------------------------------------------ paths
def table_path(run_dir: str | Path, table: str) -> Path:
    if table not in SCHEMAS:
        raise InputError(f"unknown table {table!r}; known tables: {', '.join(SCHEMAS)}")
    return Path(run_dir) / f"{table}.parquet"


def _shards(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    return [path] if path.exists() else []


def exists(path: str | Path) -> bool:
    return bool(_shards(Path(path)))


# ---------------------------------------------------------------------------------- validation
def _type_name(t: pa.DataType) -> str:
    return str(t).replace("large_", "")


def conform(table: pa.Table, table_name: str, source: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Check `table` against the schema of `table_name`; return it cast to the exact schema.

    Extra columns are kept at the end. A missing column, or one that can't be cast safely,
    raises InputError naming the file, the column and the expected type.
    """
    schema = SCHEMAS[table_name]
    wanted = list(columns) if columns is not None else schema.names
    arrays, fields = [], []
    for name in wanted:
        expected = schema.field(name).type
        if name not in table.column_names:
            raise InputError(
                f"{source}: missing column {name!r} (expected {_type_name(expected)}) in the {table_name} table; "
                f"it has: {', '.join(table.column_names) or 'no columns'}")
        col = table.column(name)
        if col.type != expected:
            if not _same_kind(col.type, expected):
                raise InputError(
                    f"{source}: column {name!r} has type {_type_name(col.type)}, expected {_type_name(expected)}")
            try:
                col = col.cast(expected, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise InputError(
                    f"{source}: column {name!r} has type {_type_name(col.type)}, expected {_type_name(expected)}"
                ) from None
        arrays.append(col)
        fields.append(schema.field(name))
    for name in table.column_names:
        if name not in wanted:
            arrays.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _same_kind(got: pa.DataType, want: pa.DataType) -> bool:
    """Casts allowed on read: int32 -> int64, large_string -> string... never number -> string."""
    t = pa.types
    if t.is_null(got):
        return True
    kinds = (
        lambda x: t.is_string(x) or t.is_large_string(x),
        lambda x: t.is_binary(x) or t.is_large_binary(x),
        lambda x: t.is_integer(x) or t.is_floating(x),
        t.is_boolean,
        t.is_timestamp,
        lambda x: t.is_list(x) or t.is_large_list(x),
        t.is_struct,
    )
    return any(k(got) and k(want) for k in kinds)


def read(path: str | Path, table_name: str, columns: Sequence[str] | None = None,
         required: bool = True) -> pa.Table:
    """Read and validate a table (a shard folder or one Parquet file); duplicate keys are dropped."""
    path = Path(path)
    shards = _shards(path)
    if not shards:
        if required:
            raise InputError(f"{path}: no {table_name} table here (file or folder not found)")
        return empty(table_name)
    key = KEYS[table_name]
    read_cols = None if columns is None else list(dict.fromkeys([key, *columns]))
    # created_at picks the newest row of a key, so it is read even when not asked for (and dropped after)
    extra = read_cols is not None and "created_at" not in read_cols and "created_at" in SCHEMAS[table_name].names
    parts = []
    for shard in shards:
        try:
            names = set(pq.read_schema(shard).names)
            cols = read_cols
            if extra and "created_at" in names:
                cols = [*read_cols, "created_at"]
            # a shard missing a column is read whole, so that conform() names what is missing
            t = pq.read_table(shard, columns=cols if cols and names.issuperset(cols) else None)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{shard}: not a readable Parquet file ({exc})") from None
        parts.append(conform(t, table_name, shard, cols))
    if len(parts) == 1:
        table = parts[0]
    else:
        table = pa.concat_tables(parts, promote_options="permissive")
    table = _dedupe(table, key)
    if extra and "created_at" in table.column_names:
        table = table.drop_columns(["created_at"])
    return table


def _dedupe(table: pa.Table, key: str) -> pa.Table:
    """One row per key: the newest by created_at (a retried request supersedes its api_error row)."""
    import numpy as np

    keys = table.column(key).to_numpy(zero_copy_only=False)
    if len(np.unique(keys)) == len(keys):
        return table
    if "created_at" in table.column_names:
        created = table.column("created_at").cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
    else:
        created = np.arange(len(keys))
    order = np.lexsort((np.arange(len(keys)), created, keys))  # by key, then time, then position
    sorted_keys = keys[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_keys[:-1] != sorted_keys[1:]
    return table.take(pa.array(np.sort(order[last])))


def read_ids(path: str | Path, table_name: str, ids: Iterable[str], columns: Sequence[str] | None = None,
             required: bool = True) -> pa.Table:
    """The rows whose key is in `ids`, validated and deduplicated as `read` does (newest by created_at).

    Each shard's key column is read first; a shard with none of the keys is not read further, and in the
    others only the row groups holding a wanted key are scanned, with a pyarrow dataset filter on the key.
    So the other rows' large values (an image's pixels) are never materialized: at most those sharing a row
    group with a wanted row are decoded (see ROW_GROUP_BYTES). Keys not in the table are simply absent.
    """
    import numpy as np
    import pyarrow.dataset as ds

    path = Path(path)
    shards = _shards(path)
    if not shards and required:
        raise InputError(f"{path}: no {table_name} table here (file or folder not found)")
    key = KEYS[table_name]
    cols = list(dict.fromkeys([key, *(columns if columns is not None else SCHEMAS[table_name].names)]))
    extra = "created_at" not in cols and "created_at" in SCHEMAS[table_name].names
    wanted = pa.array(sorted({i for i in ids if i is not None}), pa.string())
    parts = []
    for shard in shards if len(wanted) else []:
        try:
            with pq.ParquetFile(shard) as pf:
                schema = pf.schema_arrow
                shard_cols = [*cols, "created_at"] if extra and "created_at" in schema.names else cols
                conform(schema.empty_table(), table_name, shard, shard_cols)  # names a missing or mistyped column
                keys = pf.read(columns=[key]).column(key)
                meta = pf.metadata
            if not pa.types.is_string(keys.type):
                keys = keys.cast(pa.string())
            rows = pc.indices_nonzero(pc.is_in(keys, value_set=wanted)).to_numpy()
            if not len(rows):
                continue
            ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
            groups = np.unique(np.searchsorted(ends, rows, side="right")).tolist()
            fragment = ds.ParquetFileFormat().make_fragment(str(shard.resolve()), _local_fs(), row_groups=groups)
            value_set = wanted.cast(pa.large_string()) if pa.types.is_large_string(schema.field(key).type) else wanted
            t = fragment.to_table(columns=shard_cols, filter=pc.field(key).isin(value_set))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise InputError(f"{shard}: not a readable Parquet file ({exc})") from None
        parts.append(conform(t, table_name, shard, shard_cols))
    if not parts:
        return empty(table_name).select(cols)
    table = parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="permissive")
    table = _dedupe(table, key)
    if extra and "created_at" in table.column_names:
        table = table.drop_columns(["created_at"])
    return table


def _local_fs():
    import pyarrow.fs

    return pyarrow.fs.LocalFileSystem()


def images_by_id(run_dir_or_images_path: str | Path, ids: Iterable[str], what: str = "requested",
                 strict: bool = True) -> dict[str, bytes]:
    """image_id -> encoded image bytes (PNG...), for these ids only: `read_ids`, so the other rows' pixels are
    not read (beyond those sharing a Parquet row group with a wanted image; none in other shards).

    The argument is a run directory (its images.parquet) or an images table (a shard folder or one file).
    strict: every id must be in the table with image bytes, else one InputError (how many, an example, the
    table), before any work is done; not strict: the ids that are absent or have no bytes are left out.
    """
    path = _images_table(run_dir_or_images_path)
    wanted = {i for i in ids if i is not None}
    t = read_ids(path, "images", wanted, columns=["image_id", "image"])
    found, no_bytes = {}, []
    for image_id, image in zip(t.column("image_id").to_pylist(), t.column("image").to_pylist()):
        data = (image or {}).get("bytes")
        if data is None:
            no_bytes.append(image_id)
        else:
            found[image_id] = data
    if strict:
        what = f"{what} " if what else ""
        missing = wanted - set(found) - set(no_bytes)
        if missing:
            raise InputError(f"{len(missing)} {what}images are not in {path} (e.g. {sorted(missing)[0]})")
        if no_bytes:
            raise InputError(f"{path}: {len(no_bytes)} {what}images have no image bytes (e.g. {sorted(no_bytes)[0]})")
    return found


def _images_table(path: str | Path) -> Path:
    """A run directory -> its images table; an images table (a .parquet file or folder, or a shard folder) as is."""
    p = Path(path)
    if p.suffix == ".parquet" or p.is_file():
        return p
    if p.is_dir() and not (p / "images.parquet").exists() and any(s.is_file() for s in _shards(p)):
        return p
    return table_path(p, "images")


def read_keys(path: str | Path, table_name: str) -> set[str]:
    t = read(path, table_name, columns=[KEYS[table_name]], required=False)
    return set(t.column(KEYS[table_name]).to_pylist())


def empty(table_name: str) -> pa.Table:
    return SCHEMAS[table_name].empty_table()


def to_table(rows: Iterable[Mapping] | pa.Table, table_name: str) -> pa.Table:
    """Rows (dicts) -> a table of the exact schema; missing optional fields become nulls."""
    if isinstance(rows, pa.Table):
        return conform(rows, table_name, "<in memory>")
    schema = SCHEMAS[table_name]
    rows = list(rows)
    for i, row in enumerate(rows):
        unknown = set(row) - set(schema.names)
        if unknown:
            raise ValueError(f"{table_name} row {i} has unknown fields {sorted(unknown)}")
    return pa.Table.from_pylist(rows, schema=schema)


# -------------------------------------------------------------------------------------- writes
def append(path: str | Path, rows: Iterable[Mapping] | pa.Table, table_name: str, tag: str = "") -> Path | None:
    """Write rows as one new shard, atomically (temp file + rename). Returns the shard path."""
    table = to_table(rows, table_name)
    if table.num_rows == 0:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a single file; appending needs a table folder")
    path.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"part-{stamp}-{tag or 'r0'}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = path / f".{name}.tmp"
    pq.write_table(table, tmp, row_group_size=_row_group_size(table, table_name))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path / name)
    return path / name


def _row_group_size(table: pa.Table, table_name: str) -> int | None:
    """Rows per row group: pyarrow's default, except about ROW_GROUP_BYTES for a table with an image column,
    so that `read_ids` reads a few images' row groups and not the pixels of the whole shard."""
    if not any(f.type == IMAGE for f in SCHEMAS[table_name]):
        return None
    per_row = max(1, table.nbytes // max(1, table.num_rows))
    return max(1, min(table.num_rows, ROW_GROUP_BYTES // per_row))


def compact(path: str | Path, table_name: str, min_shards: int = 8) -> None:
    """Merge the shards into one, newest row per key (new shard first, then delete the old ones): when there
    are min_shards or more, or when a row is superseded (a retried request), so that readers that don't dedupe
    (`pd.read_parquet`) see each key once after every stage."""
    path = Path(path)
    shards = _shards(path)
    if len(shards) < 2 or not path.is_dir():
        return
    if len(shards) < min_shards and not _has_superseded(shards, table_name):
        return
    table = read(path, table_name)
    new = append(path, table, table_name, tag="compact")
    for shard in shards:
        if shard != new:
            shard.unlink(missing_ok=True)


def _has_superseded(shards: list[Path], table_name: str) -> bool:
    key = KEYS[table_name]
    keys = pa.chunked_array([pq.read_table(s, columns=[key]).column(key).cast(pa.string()) for s in shards])
    return pc.count_distinct(keys).as_py() < len(keys)


def clean_temp(path: str | Path) -> int:
    """Remove temp files a killed writer left behind."""
    path = Path(path)
    n = 0
    if path.is_dir():
        for tmp in path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            n += 1
    return n


# ------------------------------------------------------------------------------------ run lock
class RunLocked(InputError):
    pass


@contextmanager
def run_lock(run_dir: str | Path, wait: bool = False, hint: str = "run this again when it has finished"):
    """Hold an exclusive lock on a run directory while a stage writes to it.

    An OS lock (flock): the kernel releases it when its holder dies, so a lock left by a killed
    process is never stale. A second writer waits (wait=True) or fails with who holds it and `hint`
    (a command with a --wait flag says so).
    """
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_file = run_dir / ".lock"
    fh = open(lock_file, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RunLocked(f"{run_dir} is being written by {holder}; {hint}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {now():%Y-%m-%d %H:%M:%S} UTC")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the flock

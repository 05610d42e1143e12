"""tables.images_by_id / read_ids: a few images by id from a sharded images table, without the others' pixels."""

import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from autofeedback import tables
from autofeedback.errors import InputError
from autofeedback.images import decode_image

REPO = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _row(image_id: str, data: bytes | None, minutes: int = 0) -> dict:
    return {"image_id": image_id, "prompt_id": "p", "prompt": "a prompt", "model": "m",
            "image": None if data is None else {"bytes": data, "path": f"{image_id}.png"},
            "created_at": T0 + dt.timedelta(minutes=minutes)}


def _png(color=(255, 0, 0), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


def test_returns_exactly_the_requested_images_across_shards(tmp_path):
    path = tables.table_path(tmp_path, "images")
    tables.append(path, [_row(f"a{i}", f"A{i}".encode()) for i in range(5)], "images")
    tables.append(path, [_row(f"b{i}", f"B{i}".encode()) for i in range(5)], "images")
    assert len(tables._shards(path)) == 2
    want = {"a1": b"A1", "a4": b"A4", "b0": b"B0"}
    assert tables.images_by_id(tmp_path, want) == want  # a run directory
    assert tables.images_by_id(path, ["b0"]) == {"b0": b"B0"}  # the table itself
    assert tables.images_by_id(tmp_path, []) == {}
    t = tables.read_ids(path, "images", ["a4", "b3"], columns=["image_id", "model"])
    assert sorted(t.column("image_id").to_pylist()) == ["a4", "b3"] and t.column_names == ["image_id", "model"]
    # a user's single-file table (one row group, written by someone else) reads the same way
    single = tmp_path / "mine.parquet"
    pq.write_table(tables.read(path, "images"), single)
    assert tables.images_by_id(single, want) == want


def test_same_image_in_several_shards_is_one_image_the_newest(tmp_path):
    path = tables.table_path(tmp_path, "images")
    tables.append(path, [_row("x", b"new", minutes=5), _row("y", b"Y")], "images")
    tables.append(path, [_row("x", b"old", minutes=1), _row("z", b"Z")], "images")  # a later shard, an older row
    assert tables.images_by_id(tmp_path, ["x", "z"]) == {"x": b"new", "z": b"Z"}
    rows = tables.read_ids(path, "images", ["x"])
    assert rows.num_rows == 1 and "created_at" in rows.column_names
    assert rows.to_pylist() == tables.read(path, "images").filter(pa.compute.equal(
        tables.read(path, "images").column("image_id"), "x")).to_pylist()  # the row tables.read keeps


def test_missing_ids_are_one_clear_error(tmp_path):
    path = tables.table_path(tmp_path, "images")
    tables.append(path, [_row("a", b"A"), _row("nobytes", None)], "images")
    with pytest.raises(InputError) as err:
        tables.images_by_id(tmp_path, ["a", "gone1", "gone2"], "preference")
    assert str(err.value) == f"2 preference images are not in {path} (e.g. gone1)"
    with pytest.raises(InputError, match=r"1 rewarded images have no image bytes \(e.g. nobytes\)"):
        tables.images_by_id(tmp_path, ["a", "nobytes"], "rewarded")
    assert tables.images_by_id(tmp_path, ["a", "gone1", "nobytes"], strict=False) == {"a": b"A"}
    with pytest.raises(InputError, match="no images table here"):
        tables.images_by_id(tmp_path / "elsewhere", ["a"])


# Run in a fresh interpreter: Arrow's peak-allocation counter (max_memory) then starts from nothing.
PROBE = """
import json, sys
import pyarrow as pa
from autofeedback import tables
pool = pa.default_memory_pool()
base = pool.max_memory()
ids = sys.argv[2].split(",")
got = tables.images_by_id(sys.argv[1], ids)
lookup = pool.max_memory() - base
rows = tables.read_ids(sys.argv[1], "images", ids, columns=["image_id", "image"]).column("image_id").to_pylist()
tables.read(sys.argv[1], "images", columns=["image_id", "image"])  # the old way: every row's pixels
whole = pool.max_memory() - base
print(json.dumps({"lookup": lookup, "whole": whole, "sizes": {k: len(v) for k, v in got.items()}, "rows": rows}))
"""


def test_other_rows_pixels_are_not_read(tmp_path):
    big = 3 << 20  # the unrequested images: 3 MB of incompressible bytes each, 8 of them
    path = tables.table_path(tmp_path, "images")
    tables.append(path, [_row("h0", os.urandom(big)), _row("h1", os.urandom(big)), _row("want1", b"small one"),
                         _row("h2", os.urandom(big)), _row("h3", os.urandom(big))], "images")
    tables.append(path, [_row(f"h{i}", os.urandom(big)) for i in range(4, 8)] + [_row("want2", b"small two")],
                  "images")
    unrequested = 8 * big
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), "want1,want2"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["sizes"] == {"want1": 9, "want2": 9}
    assert sorted(r["rows"]) == ["want1", "want2"]  # the dataset scan's table holds the requested rows only
    assert r["whole"] > unrequested  # the probe sees pixels when they are read...
    assert r["lookup"] < unrequested / 16, r  # ...and the lookup read well under one unrequested image


def test_decode_image_is_rgb_and_loaded():
    for mode, color in (("RGB", (1, 2, 3)), ("RGBA", (1, 2, 3, 4)), ("L", 7), ("P", 3)):
        img = decode_image(_png(color, mode))
        assert img.mode == "RGB" and img.size == (4, 4)
        img.getpixel((0, 0))  # pixels are there (the source buffer is closed)
    with pytest.raises(OSError):  # PIL's UnidentifiedImageError
        decode_image(b"not an image")

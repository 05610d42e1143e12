import multiprocessing as mp
import os
import signal
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autofeedback import tables
from autofeedback.errors import InputError


def _prompt_rows(n, start=0):
    return [{"prompt_id": f"p{i}", "prompt": f"prompt {i}", "suite": "t", "category": None, "metadata": "{}",
             "split": "train"} for i in range(start, start + n)]


def test_content_ids_are_stable_and_distinct():
    assert tables.content_id("a", 1, {"x": [1, 2]}) == tables.content_id("a", 1, {"x": [1, 2]})
    assert tables.content_id("a", 1) != tables.content_id("a", 2)
    assert tables.prompt_id("shapes", "one red circle") == tables.prompt_id("shapes", "one red circle")
    assert len(tables.prompt_id("s", "t")) == 16


def test_append_read_and_dedupe(tmp_path):
    path = tables.table_path(tmp_path, "prompts")
    tables.append(path, _prompt_rows(3), "prompts")
    tables.append(path, _prompt_rows(3, start=2), "prompts")  # p2 twice
    t = tables.read(path, "prompts")
    assert sorted(t.column("prompt_id").to_pylist()) == ["p0", "p1", "p2", "p3", "p4"]
    assert tables.read_keys(path, "prompts") == {"p0", "p1", "p2", "p3", "p4"}


def test_missing_column_names_file_column_and_type(tmp_path):
    f = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image_id": ["a"], "prompt_id": ["p"]}), f)
    with pytest.raises(InputError) as err:
        tables.read(f, "images")
    msg = str(err.value)
    assert str(f) in msg and "'prompt'" in msg and "expected string" in msg


def test_mistyped_column_is_an_error_but_safe_casts_pass(tmp_path):
    f = tmp_path / "p.parquet"
    rows = {c: [str(i) for i in range(2)] for c in tables.SCHEMAS["prompts"].names}
    pq.write_table(pa.table({**rows, "prompt_id": [1.5, 2.5]}), f)
    with pytest.raises(InputError, match=r"column 'prompt_id' has type double, expected string"):
        tables.read(f, "prompts")
    g = tmp_path / "pref.parquet"
    pref = {"pair_id": ["x"], "prompt_id": ["p"], "prompt": ["t"], "chosen_image_id": ["a"],
            "rejected_image_id": ["b"], "margin": pa.array([1], pa.int32()), "agreement": [1.0],
            "source": ["s"], "created_at": pa.array([tables.now()], tables.TIMESTAMP)}
    pq.write_table(pa.table(pref), g)
    assert tables.read(g, "preferences").schema.field("margin").type == pa.float64()


def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tables.table_path(tmp_path, "prompts")
    tables.append(path, _prompt_rows(2), "prompts")
    (path / "part-zzz-broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        tables.read(path, "prompts")


def test_missing_table_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no images table here"):
        tables.read(tmp_path / "images.parquet", "images")
    assert tables.read(tmp_path / "images.parquet", "images", required=False).num_rows == 0


def test_temp_files_of_a_killed_writer_are_ignored_and_cleaned(tmp_path):
    path = tables.table_path(tmp_path, "prompts")
    tables.append(path, _prompt_rows(2), "prompts")
    (path / ".part-x.parquet.tmp").write_bytes(b"half a file")
    assert tables.read(path, "prompts").num_rows == 2
    assert tables.clean_temp(path) == 1


def test_compact_keeps_every_row_once(tmp_path):
    path = tables.table_path(tmp_path, "prompts")
    for i in range(10):
        tables.append(path, _prompt_rows(2, start=i), "prompts")
    before = sorted(tables.read(path, "prompts").column("prompt_id").to_pylist())
    tables.compact(path, "prompts", min_shards=2)
    assert len(list(path.glob("*.parquet"))) == 1
    assert sorted(pq.read_table(next(path.glob("*.parquet"))).column("prompt_id").to_pylist()) == before


def test_unknown_fields_are_rejected():
    with pytest.raises(ValueError, match="unknown fields"):
        tables.to_table([{"prompt_id": "a", "oops": 1}], "prompts")


def _hold_lock(run_dir, ready):
    with tables.run_lock(run_dir):
        ready.set()
        time.sleep(60)


def test_run_lock_blocks_a_second_writer_and_survives_kill_9(tmp_path):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(tables.RunLocked, match=f"pid {holder.pid}"):
            with tables.run_lock(tmp_path):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    # the kernel released the dead holder's lock: no stale lock
    with tables.run_lock(tmp_path):
        assert "pid" in (tmp_path / ".lock").read_text()

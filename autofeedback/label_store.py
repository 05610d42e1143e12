"""The label page's items, per-annotator queues and writes (label_server.py serves them; label_studio.py
exports and imports them).

Items:   pointwise  one per image;  pairwise  one per unordered pair of images of the same prompt (all pairs, or a
         seeded sample of --max-pairs-per-prompt), shown left/right in an order drawn per annotator (and recorded in
         image_ids as shown).
Keys:    label_id = content_id("label", annotator, mode, sorted(image_ids)): a re-label of the same item by the same
         annotator has the same key, and tables.read keeps the newest row per key (the store makes created_at
         strictly increasing), so the table holds the annotator's final answer.
Undo:    writes a tombstone: the same label_id with label, score, choice and ranking all null. A reader that drops
         rows without a value (`eval` does; `live_labels` here does) gets exactly the final answers; the undone item
         goes back to the annotator's queue. Skip is not written: a skipped item comes back after the others, and
         again in the next session.
Order:   random (seeded, the same for every annotator so their labels overlap early), disagreements (items whose
         judges disagree first: different pointwise labels for an image, different choices for a pair, including
         one judge's two orders; then the rest at random), stratified (round-robin over prompts.category).
Images:  served from their bytes, or from a path only inside the run directory (or --image-root): anything else is
         not found, with a one-line warning.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import itertools
import json
import sys
import threading
from collections import OrderedDict
from pathlib import Path

import pyarrow.dataset as pads

from . import tables
from .config import LabelConfig
from .errors import InputError
from .labels import NO, YES

GOOD = YES | {"g"}  # the page's keys (G/B) on top of the shared label vocabulary
BAD = NO | {"b"}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ============================================================================================ items
def _hash_int(*parts: object) -> int:
    return int(hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:15], 16)


def item_key(mode: str, image_ids) -> str:
    return tables.content_id("label-item", mode, sorted(image_ids))


def label_id(annotator: str, mode: str, image_ids) -> str:
    return tables.content_id("label", annotator, mode, sorted(image_ids))


def live_labels(run_dir: str | Path, annotator: str | None = None):
    """The final answers in RUN/human_labels.parquet: newest row per label_id, tombstones (undo) dropped."""
    t = tables.read(tables.table_path(run_dir, "human_labels"), "human_labels", required=False)
    rows = [r for r in t.to_pylist() if not _is_tombstone(r)]
    return [r for r in rows if annotator is None or r["annotator"] == annotator]


def _is_tombstone(row: dict) -> bool:
    return all(row.get(k) is None for k in ("label", "score", "choice", "ranking"))


class Store:
    """Items, per-annotator queues and the human_labels writer. Thread-safe (one lock)."""

    compact_every = 1  # merge shards after every N answers (when the run lock is free)

    def __init__(self, cfg: LabelConfig) -> None:
        # 1. Check inputs: the images (without pixels) and prompts.
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.mode = cfg.mode
        ipath = tables.table_path(self.run_dir, "images")
        images = tables.read(ipath, "images", columns=["image_id", "prompt_id", "prompt"]).to_pylist()
        if not images:
            raise InputError(f"{ipath}: no images to label")
        self.images_path = ipath
        ppath = tables.table_path(self.run_dir, "prompts")
        prompts = {r["prompt_id"]: r for r in
                   tables.read(ppath, "prompts", columns=["prompt_id", "prompt", "category"], required=False)
                   .to_pylist()}
        by_prompt: dict[str, list[str]] = {}
        self.prompt_text: dict[str, str] = {}
        for r in sorted(images, key=lambda r: (r["prompt_id"] or "", r["image_id"])):
            by_prompt.setdefault(r["prompt_id"], []).append(r["image_id"])
            self.prompt_text[r["prompt_id"]] = r["prompt"] or (prompts.get(r["prompt_id"]) or {}).get("prompt") or ""
        self.image_ids = {r["image_id"] for r in images}

        # 2. Items: one per image (pointwise) or per unordered pair of a prompt's images (pairwise).
        self.items: dict[str, dict] = {}
        for pid, ids in by_prompt.items():
            cat = (prompts.get(pid) or {}).get("category")
            if self.mode == "pointwise":
                groups = [[i] for i in ids]
            else:
                groups = [list(p) for p in itertools.combinations(ids, 2)]
                if cfg.max_pairs_per_prompt is not None:
                    groups.sort(key=lambda g: _hash_int(cfg.seed, "pair", g))
                    groups = groups[:cfg.max_pairs_per_prompt]
            for g in groups:
                key = item_key(self.mode, g)
                self.items[key] = {"item_id": key, "prompt_id": pid, "image_ids": g, "category": cat}
        if not self.items:
            raise InputError(f"{ipath}: no {self.mode} items (pairwise needs two or more images of one prompt)")
        self.order = self._order()

        # 3. What is already labeled (resume): annotator -> {item_id: row}.
        self.lock = threading.Lock()
        self.done: dict[str, dict[str, dict]] = {}
        self.skipped: dict[str, list[str]] = {}
        self.history: dict[str, list[tuple[str, str]]] = {}
        self.labels_path = tables.table_path(self.run_dir, "human_labels")
        self._last_time = tables.now()
        self._shards_written = 0
        self.merge(clean=True)
        existing = tables.read(self.labels_path, "human_labels", required=False).to_pylist()
        for r in existing:
            if r["mode"] != self.mode or _is_tombstone(r):
                continue
            key = item_key(self.mode, r["image_ids"] or [])
            if key in self.items:
                self.done.setdefault(r["annotator"], {})[key] = r
            if r["created_at"] is not None and r["created_at"] > self._last_time:
                self._last_time = r["created_at"]
        self._png_cache: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._image_roots = [self.run_dir.resolve()] + ([Path(cfg.image_root).resolve()] if cfg.image_root else [])
        self._refused: set[str] = set()  # images whose path was refused (warned once each)

    # ------------------------------------------------------------------------------------ order
    def _order(self) -> list[str]:
        keys = sorted(self.items, key=lambda k: _hash_int(self.cfg.seed, "order", k))  # seeded random
        if self.cfg.order == "random":
            return keys
        if self.cfg.order == "stratified":
            by_cat: dict[str, list[str]] = {}
            for k in keys:
                by_cat.setdefault(self.items[k]["category"] or "", []).append(k)
            cats = sorted(by_cat, key=lambda c: _hash_int(self.cfg.seed, "cat", c))
            out = []
            for rnd in itertools.zip_longest(*(by_cat[c] for c in cats)):
                out.extend(k for k in rnd if k is not None)
            return out
        strength = self.disagreements()
        return sorted(keys, key=lambda k: -strength.get(k, 0.0))  # stable: the rest keep the random order

    def disagreements(self) -> dict[str, float]:
        """item_id -> share of the minority verdict (0 < x <= 0.5) for items whose judges disagree."""
        jpath = tables.table_path(self.run_dir, "judgments")
        if not tables.exists(jpath):
            return {}
        cols = ["judge", "mode", "image_ids", "label", "choice", "status"]
        verdicts: dict[str, list] = {}
        for r in tables.read(jpath, "judgments", columns=cols).select(cols).to_pylist():
            ids = r["image_ids"] or []
            if r["status"] != "ok" or r["mode"] != self.mode:
                continue
            if self.mode == "pointwise" and len(ids) == 1 and r["label"] is not None:
                verdicts.setdefault(item_key(self.mode, ids), []).append(bool(r["label"]))
            elif self.mode == "pairwise" and len(ids) == 2 and r["choice"] is not None:
                verdicts.setdefault(item_key(self.mode, ids), []).append(r["choice"])  # an image id or "tie"
        out = {}
        for key, v in verdicts.items():
            if key in self.items and len(set(v)) > 1:
                top = max(v.count(x) for x in set(v))
                out[key] = 1.0 - top / len(v)
        return out

    # ------------------------------------------------------------------------------------ queues
    def shown(self, annotator: str, key: str) -> dict:
        """The item as this annotator sees it: pairwise left/right drawn per annotator."""
        item = self.items[key]
        ids = list(item["image_ids"])
        if self.mode == "pairwise" and _hash_int(self.cfg.seed, "side", annotator, key) % 2:
            ids.reverse()
        return {**item, "image_ids": ids, "prompt": self.prompt_text.get(item["prompt_id"], ""),
                "images": [f"/img/{i}" for i in ids]}

    def progress(self, annotator: str | None) -> dict:
        with self.lock:
            return self._progress(annotator)

    def _progress(self, annotator: str | None) -> dict:
        out = {"total": len(self.items), "mode": self.mode,
               "annotators": {a: len(d) for a, d in sorted(self.done.items()) if d}}
        if annotator:
            out.update(annotator=annotator, labeled=len(self.done.get(annotator, {})),
                       skipped=len(self.skipped.get(annotator, [])))
            out["remaining"] = out["total"] - out["labeled"]
        return out

    def next_item(self, annotator: str) -> dict | None:
        with self.lock:
            done = self.done.get(annotator, {})
            skipped = self.skipped.get(annotator, [])
            skipped_set = set(skipped)
            for key in self.order:
                if key not in done and key not in skipped_set:
                    return self.shown(annotator, key)
            for key in skipped:  # skipped ones come back after the rest, oldest skip first
                if key not in done:
                    return self.shown(annotator, key)
            return None

    # ------------------------------------------------------------------------------------ writes
    def _stamp(self) -> _dt.datetime:
        t = tables.now()
        if t <= self._last_time:  # strictly increasing: the newest row per key is the last answer
            t = self._last_time + _dt.timedelta(microseconds=1)
        self._last_time = t
        return t

    def merge(self, clean: bool = False) -> bool:
        """Merge the label shards into one (newest row per key) if no other command holds the run lock."""
        try:
            with _try_lock(self.run_dir) as locked:
                if locked:
                    if clean:  # no other writer: temp files left by a killed one can go
                        tables.clean_temp(self.labels_path)
                    tables.compact(self.labels_path, "human_labels", min_shards=2)
                return locked
        except (OSError, InputError):  # answers are saved either way; merging waits for the next chance
            return False

    def _write(self, row: dict) -> None:
        # An append is one atomic shard and needs no lock: labeling goes on while `judge` or `generate` hold the
        # run lock for hours. Then the shards are merged (newest row per key) when nobody else writes, so that
        # the folder stays one file and readers that skip tables.read (pd.read_parquet) see no superseded rows.
        tables.append(self.labels_path, [row], "human_labels", tag="label")
        self._shards_written += 1
        if self._shards_written % self.compact_every == 0:
            self.merge()

    def label(self, annotator: str, key: str, body: dict) -> dict:
        item = self.items[key]
        with self.lock:
            shown = self.shown(annotator, key)
            row = {"label_id": label_id(annotator, self.mode, item["image_ids"]), "annotator": annotator,
                   "mode": self.mode, "prompt_id": item["prompt_id"], "image_ids": shown["image_ids"],
                   "category": item["category"], **self._answer(body, shown["image_ids"])}
            row["created_at"] = self._stamp()
            self._write(row)  # on disk (fsync + rename) before the response goes out
            self.done.setdefault(annotator, {})[key] = row
            sk = self.skipped.get(annotator, [])
            if key in sk:
                sk.remove(key)
            self.history.setdefault(annotator, []).append(("label", key))
            return {"ok": True, "label_id": row["label_id"], "progress": self._progress(annotator)}

    def _answer(self, body: dict, ids: list[str]) -> dict:
        if self.mode == "pointwise":
            v = body.get("label")
            if isinstance(v, bool):
                return {"label": v}
            s = str(v).strip().lower() if isinstance(v, (str, int)) else None
            if s in GOOD:
                return {"label": True}
            if s in BAD:
                return {"label": False}
            raise BadRequest(400, f"label must be good or bad (or true/false), got {v!r}")
        v = body.get("choice")
        if not isinstance(v, str):
            raise BadRequest(400, f"choice must be an image id of the pair, A, B or tie, got {v!r}")
        s = v.strip()
        if s in ids:
            return {"choice": s}
        if s.lower() in ("a", "left"):
            return {"choice": ids[0]}
        if s.lower() in ("b", "right"):
            return {"choice": ids[1]}
        if s.lower() == "tie":
            return {"choice": "tie"}
        raise BadRequest(400, f"choice must be an image id of the pair ({ids[0]}, {ids[1]}), A, B or tie, got {v!r}")

    def skip(self, annotator: str, key: str) -> dict:
        with self.lock:
            sk = self.skipped.setdefault(annotator, [])
            if key in sk:
                sk.remove(key)
            sk.append(key)
            self.history.setdefault(annotator, []).append(("skip", key))
            return {"ok": True, "progress": self._progress(annotator)}

    def undo(self, annotator: str) -> dict:
        """Undo this session's last skip or label; with none, the annotator's newest label in the table."""
        with self.lock:
            hist = self.history.get(annotator, [])
            done = self.done.get(annotator, {})
            while hist:
                kind, key = hist.pop()
                if kind == "skip" and key in self.skipped.get(annotator, []):
                    self.skipped[annotator].remove(key)
                    return {"ok": True, "undone": key, "kind": "skip", "item": self.shown(annotator, key),
                            "progress": self._progress(annotator)}
                if kind == "label" and key in done:
                    return self._tombstone(annotator, key)
            if done:  # nothing in this session: the newest label of an earlier session
                key = max(done, key=lambda k: done[k]["created_at"])
                return self._tombstone(annotator, key)
            return {"ok": True, "undone": None, "kind": None, "item": None, "progress": self._progress(annotator)}

    def _tombstone(self, annotator: str, key: str) -> dict:
        old = self.done[annotator][key]
        row = {"label_id": old["label_id"], "annotator": annotator, "mode": self.mode, "prompt_id": old["prompt_id"],
               "image_ids": old["image_ids"], "category": old["category"], "created_at": self._stamp()}
        self._write(row)
        del self.done[annotator][key]
        return {"ok": True, "undone": key, "kind": "label", "item": self.shown(annotator, key),
                "progress": self._progress(annotator)}

    # ------------------------------------------------------------------------------------ images
    def png(self, image_id: str) -> tuple[bytes, str] | None:
        with self.lock:
            if image_id in self._png_cache:
                self._png_cache.move_to_end(image_id)
                return self._png_cache[image_id]
        if image_id not in self.image_ids:
            return None
        ds = pads.dataset([str(p) for p in tables._shards(self.images_path)], format="parquet")
        t = ds.to_table(columns=["image"], filter=pads.field("image_id") == image_id)
        if t.num_rows == 0:
            return None
        img = t.column("image")[t.num_rows - 1].as_py() or {}
        data = img.get("bytes")
        if data is None and img.get("path"):
            data = self._image_file(image_id, img["path"])
        if data is None:
            return None
        ctype = ("image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg" if data[:2] == b"\xff\xd8"
                 else "image/webp" if data[8:12] == b"WEBP" else "application/octet-stream")
        with self.lock:
            self._png_cache[image_id] = (data, ctype)
            while len(self._png_cache) > 512:
                self._png_cache.popitem(last=False)
        return data, ctype

    def _image_file(self, image_id: str, path: str) -> bytes | None:
        """An image stored as a path: read only when it resolves (links followed) inside the run directory or
        --image-root, so the images table can't make the page serve any other file of this machine."""
        try:
            p = Path(path)
            p = (p if p.is_absolute() else self.run_dir / p).resolve()
        except (OSError, ValueError, RuntimeError):  # a NUL byte, a loop of links...
            return None
        if not any(p.is_relative_to(root) for root in self._image_roots):
            if image_id not in self._refused:
                self._refused.add(image_id)
                print(f"warning: not serving image {image_id}: its path {path!r} is outside "
                      f"{' and '.join(map(str, self._image_roots))} (--image-root DIR serves a folder)",
                      file=sys.stderr, flush=True)
            return None
        try:
            return p.read_bytes() if p.is_file() else None
        except OSError:  # unreadable (permissions...): not found, as far as the page is concerned
            return None


@contextlib.contextmanager
def _try_lock(run_dir: Path):
    """The run lock if it is free (yields True), else yields False at once."""
    try:
        with tables.run_lock(run_dir, wait=False):
            yield True
    except tables.RunLocked:
        yield False

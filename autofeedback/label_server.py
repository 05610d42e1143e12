"""label: a small local web page to collect human labels -> RUN/human_labels.parquet.

Reads:   RUN/images.parquet      image_id, prompt_id, prompt, image (PNG bytes, served at /img/IMAGE_ID)
         RUN/prompts.parquet     category (stratified order; recorded with every label), optional
         RUN/judgments.parquet   judge verdicts (--order disagreements), optional
         RUN/human_labels.parquet  what each annotator already labeled (resume), optional
Writes:  RUN/human_labels.parquet  one atomic shard per answer, written before the answer's HTTP response returns:
                                   label_id, annotator, mode, prompt_id, image_ids (in the order shown), label
                                   (pointwise: true = good/aligned), choice (pairwise: the chosen image_id or "tie"),
                                   category, created_at

Items:   pointwise  one per image;  pairwise  one per unordered pair of images of the same prompt (all pairs, or a
         seeded sample of --max-pairs-per-prompt), shown left/right in an order drawn per annotator (and recorded in
         image_ids as shown).
Keys:    label_id = content_id("label", annotator, mode, sorted(image_ids)): a re-label of the same item by the same
         annotator has the same key, and tables.read keeps the newest row per key (the server makes created_at
         strictly increasing), so the table holds the annotator's final answer.
Undo:    writes a tombstone: the same label_id with label, score, choice and ranking all null. A reader that drops
         rows without a value (`eval` does; `live_labels` here does) gets exactly the final answers; the undone item
         goes back to the annotator's queue. Skip is not written: a skipped item comes back after the others, and
         again in the next session.
Order:   random (seeded, the same for every annotator so their labels overlap early), disagreements (items whose
         judges disagree first: different pointwise labels for an image, different choices for a pair, including
         one judge's two orders; then the rest at random), stratified (round-robin over prompts.category).
API:     GET  /                        the page
         GET  /api/next?annotator=A     {"item": {...} | null, "progress": {...}}
         POST /api/label   {"annotator", "item_id", "label": "good"|"bad"  or  "choice": IMAGE_ID|"A"|"B"|"tie",
                            "token"}   -> {"ok", "label_id", "progress"}
         POST /api/skip    {"annotator", "item_id", "token"}
         POST /api/undo    {"annotator", "token"}  -> {"undone": ITEM_ID | null, "item": {...} | null}
         GET  /api/progress?annotator=A
         GET  /img/IMAGE_ID
         POST bodies are JSON and carry the per-server token (shown in the page; --token sets it), so another web
         page can't post labels. A bad request gets a 4xx JSON {"error": "..."} and writes nothing.
Safety:  images are served from their bytes, or from a path only inside the run directory (or --image-root):
         anything else is a 404 and a one-line warning. A request whose Host is not this server (an IP address,
         localhost, this machine's name or the bound address) is refused (DNS rebinding), and so is a POST from
         another origin. A connection silent for READ_TIMEOUT_S is closed; a client that goes away is no error.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import html
import ipaddress
import itertools
import json
import re
import secrets
import socket
import sys
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.dataset as pads

from . import tables
from .config import LabelConfig
from .errors import InputError
from .labels import NO, YES

ANNOTATOR_RE = re.compile(r"^[\w.@+ -]{1,64}$")
MAX_BODY = 64 * 1024
READ_TIMEOUT_S = 30.0  # a connection that sends nothing for this long is closed (slow clients can't pile up)
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


# ============================================================================================ server
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen() backlog: must be set before the socket listens
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no Nagle delay
    store: Store
    token: str
    default_annotator: str
    allowed_hosts: frozenset[str]  # host names (besides IP addresses) a request's Host may name

    def log_message(self, *args) -> None:  # quiet
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):  # the client went away or stalled: nobody to answer
            self.close_connection = True

    def _check_host(self, post: bool = False) -> None:
        """DNS rebinding: a page of another domain that resolves here sends its own name as Host. And a POST
        from a page of another origin (with the token or not) is refused."""
        host = self.headers.get("Host") or ""
        name = urlsplit("//" + host).hostname or ""
        if not (_is_ip(name) or name in self.allowed_hosts):
            raise BadRequest(403, f"Host {host!r} is not this server; open it by its address, e.g. "
                                  f"http://127.0.0.1:{self.server.server_address[1]}/")
        origin = self.headers.get("Origin")
        if post and origin is not None and origin.lower() != f"http://{host}".lower():
            raise BadRequest(403, f"a POST from another origin ({origin}) is refused")

    def _send(self, status: int, payload, ctype: str = "application/json", cache: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message, "status": status})

    def _annotator(self, value) -> str:
        if not isinstance(value, str) or not ANNOTATOR_RE.match(value.strip()):
            raise BadRequest(400, f"annotator must be a name of 1-64 letters, digits, spaces or . @ + - _, "
                                  f"got {value!r}")
        return value.strip()

    def _item(self, value) -> str:
        if not isinstance(value, str) or value not in self.store.items:
            raise BadRequest(404, f"unknown item {value!r}")
        return value

    def do_GET(self) -> None:
        try:
            self._check_host()
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path in ("/", "/index.html"):
                return self._send(200, page(self.store, self.token, q.get("annotator") or self.default_annotator)
                                  .encode(), "text/html; charset=utf-8")
            if url.path == "/api/next":
                a = self._annotator(q.get("annotator"))
                return self._send(200, {"item": self.store.next_item(a), "progress": self.store.progress(a)})
            if url.path == "/api/progress":
                a = self._annotator(q["annotator"]) if q.get("annotator") else None
                return self._send(200, self.store.progress(a))
            if m := re.fullmatch(r"/img/([\w.-]+?)(?:\.png)?", url.path):
                got = self.store.png(m.group(1))
                if got is None:
                    return self._error(404, f"unknown image {m.group(1)!r}")
                return self._send(200, got[0], got[1], cache=True)
            return self._error(404, f"unknown endpoint GET {url.path}")
        except BadRequest as exc:
            return self._error(exc.status, str(exc))

    def do_POST(self) -> None:
        try:
            self._check_host(post=True)
            url = urlsplit(self.path)
            if url.path not in ("/api/label", "/api/skip", "/api/undo"):
                raise BadRequest(404, f"unknown endpoint POST {url.path}")
            body = self._json_body()
            if not secrets.compare_digest(str(body.get("token", "")), self.token):
                raise BadRequest(403, "wrong or missing token (reload the page)")
            a = self._annotator(body.get("annotator"))
            if url.path == "/api/undo":
                return self._send(200, self.store.undo(a))
            key = self._item(body.get("item_id"))
            if url.path == "/api/skip":
                return self._send(200, self.store.skip(a, key))
            return self._send(200, self.store.label(a, key, body))
        except BadRequest as exc:
            return self._error(exc.status, str(exc))
        except (ConnectionError, TimeoutError):  # the client, not the disk: handle_one_request closes quietly
            raise
        except (OSError, InputError) as exc:  # the write failed (disk full...): nothing was recorded
            return self._error(500, f"could not save: {exc}")

    def _json_body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise BadRequest(411, "a JSON body with Content-Length is required")
        n = int(length)
        if n > MAX_BODY:
            self.close_connection = True
            raise BadRequest(413, f"body too large ({n} bytes; at most {MAX_BODY})")
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(400, f"malformed JSON body ({exc})") from None
        if not isinstance(body, dict):
            raise BadRequest(400, f"the body must be a JSON object, got {type(body).__name__}")
        return body


class LabelServer:
    """The label page and its API on a background thread: `with LabelServer(cfg) as s: s.url`."""

    def __init__(self, cfg: LabelConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg)
        self.token = cfg.token or secrets.token_urlsafe(16)

        class Handler(_Handler):
            store = self.store
            token = self.token
            default_annotator = cfg.annotator or ""
            allowed_hosts = frozenset({"localhost", cfg.host.lower(), socket.gethostname().lower()})
            timeout = READ_TIMEOUT_S

        try:
            self.httpd = _Server((cfg.host, cfg.port), Handler)
        except OSError as exc:
            raise InputError(f"can't listen on {cfg.host}:{cfg.port} ({exc.strerror or exc})") from None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> "LabelServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                       name="label-server")
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "LabelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def run(cfg: LabelConfig, echo=print) -> dict:
    """Serve the page until Ctrl-C. Every answer is already on disk, so stopping loses nothing."""
    server = LabelServer(cfg)
    p = server.store.progress(cfg.annotator)
    echo(f"labeling {len(server.store.items)} {cfg.mode} items of {cfg.run_dir} (order: {cfg.order}); "
         f"open {server.url}" + (f"?annotator={cfg.annotator}" if cfg.annotator else "")
         + (f"  [{p['labeled']} already labeled by {cfg.annotator}]" if cfg.annotator else ""))
    echo("labels go to " + str(server.store.labels_path) + " as they arrive; Ctrl-C to stop")
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"warning: listening on {cfg.host}: anyone who can reach this port can see the images and label")
    try:
        server.httpd.serve_forever()
    finally:
        server.httpd.server_close()
        server.store.merge()
    return server.store.progress(None)


# ============================================================================================ Label Studio
LS_CONFIG = {
    "pointwise": """<View>
  <Header value="$prompt"/>
  <Image name="image" value="$image" zoom="true"/>
  <Choices name="verdict" toName="image" choice="single" showInline="true" required="true">
    <Choice value="good" hotkey="g"/>
    <Choice value="bad" hotkey="b"/>
  </Choices>
</View>
""",
    "pairwise": """<View>
  <Header value="$prompt"/>
  <View style="display: flex; gap: 1em">
    <Image name="image_a" value="$image_a"/>
    <Image name="image_b" value="$image_b"/>
  </View>
  <Choices name="verdict" toName="image_a" choice="single" showInline="true" required="true">
    <Choice value="A" hotkey="a"/>
    <Choice value="B" hotkey="b"/>
    <Choice value="tie" hotkey="t"/>
  </Choices>
</View>
""",
}


def export_label_studio(cfg: LabelConfig, out: Path) -> dict:
    """Every item as a Label Studio task (images as data URLs), with the run's labels as annotations.

    Writes OUT (a JSON list of tasks, for Label Studio's import) and OUT with .xml: the labeling config."""
    import base64

    store = Store(cfg)
    by_item: dict[str, list[dict]] = {}
    for r in live_labels(store.run_dir):
        if r["mode"] == store.mode and r["image_ids"]:
            by_item.setdefault(item_key(store.mode, r["image_ids"]), []).append(r)
    tasks, n_ann = [], 0
    for n, key in enumerate(store.order, start=1):
        item = store.shown(cfg.annotator or "", key)
        urls = []
        for iid in item["image_ids"]:
            data, ctype = store.png(iid) or (b"", "image/png")
            urls.append(f"data:{ctype};base64,{base64.b64encode(data).decode()}")
        data = {"prompt": item["prompt"], "item_id": key, "prompt_id": item["prompt_id"],
                "category": item["category"], "image_ids": item["image_ids"]}
        if store.mode == "pointwise":
            data["image"] = urls[0]
        else:
            data["image_a"], data["image_b"] = urls
        anns = []
        for r in by_item.get(key, []):
            if store.mode == "pointwise":
                if r["label"] is None:
                    continue
                value = "good" if r["label"] else "bad"
            else:
                value = ("tie" if r["choice"] == "tie" else "A" if r["choice"] == item["image_ids"][0] else "B")
            anns.append({"completed_by": {"email": r["annotator"]}, "was_cancelled": False,
                         "created_at": r["created_at"].isoformat() if r["created_at"] else None,
                         "result": [{"from_name": "verdict", "to_name": "image" if store.mode == "pointwise"
                                     else "image_a", "type": "choices", "value": {"choices": [value]}}]})
        n_ann += len(anns)
        tasks.append({"id": n, "data": data, "annotations": anns})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks))
    out.with_suffix(".xml").write_text(LS_CONFIG[store.mode])
    return {"tasks": len(tasks), "annotations": n_ann, "file": str(out), "config": str(out.with_suffix(".xml"))}


def import_label_studio(cfg: LabelConfig, path: Path) -> dict:
    """A Label Studio JSON export of tasks made by export_label_studio -> RUN/human_labels.parquet.

    Annotator: --annotator, else the annotation's completed_by (email, username or user id). Cancelled
    (skipped) annotations are left out; with several annotations of one item by one annotator, the last counts."""
    store = Store(cfg)
    path = Path(path)
    try:
        tasks = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a readable Label Studio JSON export ({exc})") from None
    if not isinstance(tasks, list):
        raise InputError(f"{path}: a Label Studio JSON export is a list of tasks, got {type(tasks).__name__}")
    rows: dict[str, dict] = {}
    cancelled = 0
    for i, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', i + 1) if isinstance(task, dict) else i + 1}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            raise InputError(f"{where}: no data object")
        ids = data.get("image_ids")
        key = data.get("item_id") or (item_key(store.mode, ids) if isinstance(ids, list) else None)
        if key not in store.items:
            raise InputError(f"{where}: item {key!r} is not a {store.mode} item of {store.run_dir} "
                             f"(export the tasks with --export-label-studio from this run and mode)")
        shown = ids if isinstance(ids, list) and sorted(ids) == sorted(store.items[key]["image_ids"]) \
            else store.items[key]["image_ids"]
        for ann in task.get("annotations") or []:
            if ann.get("was_cancelled"):
                cancelled += 1
                continue
            values = [c for res in ann.get("result") or [] if res.get("type") == "choices"
                      for c in (res.get("value") or {}).get("choices") or []]
            if not values:
                continue
            who = cfg.annotator or _ls_user(ann.get("completed_by"))
            try:
                answer = store._answer({"label": values[0]} if store.mode == "pointwise" else {"choice": values[0]},
                                       list(shown))
            except BadRequest as exc:
                raise InputError(f"{where}: {exc}") from None
            item = store.items[key]
            row = {"label_id": label_id(who, store.mode, shown), "annotator": who, "mode": store.mode,
                   "prompt_id": item["prompt_id"], "image_ids": list(shown), "category": item["category"],
                   **answer}
            rows[row["label_id"]] = row
    new = []
    for r in rows.values():
        old = store.done.get(r["annotator"], {}).get(item_key(store.mode, r["image_ids"]))
        if old is None or old.get("label") != r.get("label") or old.get("choice") != r.get("choice"):
            new.append({**r, "created_at": store._stamp()})
    with tables.run_lock(store.run_dir):
        tables.append(store.labels_path, new, "human_labels", tag="labelstudio")
        tables.compact(store.labels_path, "human_labels", min_shards=2)
    return {"tasks": len(tasks), "labels": len(rows), "written": len(new), "cancelled": cancelled,
            "annotators": sorted({r["annotator"] for r in rows.values()})}


def _ls_user(v) -> str:
    if isinstance(v, dict):
        v = v.get("email") or v.get("username") or v.get("id")
    if isinstance(v, int):
        return f"labelstudio-user-{v}"
    if isinstance(v, str) and v.strip():
        return v.strip()
    return "labelstudio"


# ============================================================================================ page
def page(store: Store, token: str, annotator: str) -> str:
    conf = {"mode": store.mode, "token": token, "annotator": annotator}
    return (_PAGE.replace("__CONF__", json.dumps(conf).replace("</", "<\\/"))
            .replace("__TITLE__", html.escape(f"label {store.run_dir.name} ({store.mode})")))


_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 :root { font-family: system-ui, sans-serif; color: #222; background: #f6f6f4; }
 body { margin: 0; }
 header { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.2rem; background: #fff;
          border-bottom: 1px solid #ddd; flex-wrap: wrap; }
 header h1 { font-size: 1.05rem; margin: 0; }
 #progress { font-variant-numeric: tabular-nums; }
 #bar { width: 220px; height: 8px; background: #e4e4e0; border-radius: 4px; overflow: hidden; }
 #bar > div { height: 100%; background: #3a7d44; width: 0; }
 main { max-width: 1180px; margin: 0 auto; padding: 1rem 1.2rem; }
 #prompt { font-size: 1.5rem; margin: .4rem 0 1rem; min-height: 2rem; }
 #meta { color: #777; font-size: .85rem; }
 #images { display: flex; gap: 2rem; justify-content: center; }
 figure { margin: 0; text-align: center; }
 figure img { width: 320px; height: 320px; image-rendering: pixelated; border: 1px solid #bbb;
              background: #fff; display: block; }
 figcaption { font-weight: bold; margin-top: .3rem; }
 #buttons { display: flex; gap: .8rem; justify-content: center; margin: 1.2rem 0 .6rem; flex-wrap: wrap; }
 button { font-size: 1rem; padding: .5rem 1.1rem; border-radius: 6px; border: 1px solid #999; background: #fff;
          cursor: pointer; }
 button.good { border-color: #3a7d44; } button.bad { border-color: #b03a2e; }
 kbd { border: 1px solid #aaa; border-bottom-width: 2px; border-radius: 3px; padding: 0 .3rem;
       font-family: ui-monospace, monospace; background: #fafafa; }
 #keys { text-align: center; color: #555; font-size: .9rem; }
 #status { text-align: center; min-height: 1.4rem; color: #555; margin-top: .6rem; }
 #status.error { color: #b03a2e; }
 #done { display: none; text-align: center; font-size: 1.3rem; margin: 3rem; }
 input { font-size: 1rem; padding: .2rem .4rem; width: 10rem; }
</style></head>
<body>
<header>
 <h1>__TITLE__</h1>
 <label>annotator <input id="annotator" autocomplete="username" placeholder="your name"></label>
 <span id="progress">–</span><div id="bar"><div></div></div>
</header>
<main>
 <div id="meta"></div>
 <div id="prompt"></div>
 <div id="images"></div>
 <div id="buttons"></div>
 <div id="keys"></div>
 <div id="status"></div>
 <div id="done">All items are labeled. Thank you! (<kbd>U</kbd> undoes the last one)</div>
</main>
<script>
const CONF = __CONF__;
const KEYS = CONF.mode === "pointwise"
  ? [["G", "good / aligned", {label: "good"}, "good"], ["B", "bad / not aligned", {label: "bad"}, "bad"]]
  : [["A", "left is better", {choice: "A"}, ""], ["B", "right is better", {choice: "B"}, ""],
     ["T", "tie", {choice: "tie"}, ""]];
let item = null, busy = false;
const $ = (id) => document.getElementById(id);
const who = () => $("annotator").value.trim();

function status(msg, err) { $("status").textContent = msg || ""; $("status").className = err ? "error" : ""; }

function showProgress(p) {
  if (!p || p.labeled === undefined) return;
  $("progress").textContent = `${p.labeled} / ${p.total} labeled` + (p.skipped ? ` (${p.skipped} skipped)` : "");
  $("bar").firstElementChild.style.width = (100 * p.labeled / Math.max(1, p.total)) + "%";
}

function show(it) {
  item = it;
  $("done").style.display = it ? "none" : "block";
  $("images").innerHTML = ""; $("prompt").textContent = it ? it.prompt : ""; $("meta").textContent = "";
  if (!it) return;
  $("meta").textContent = (it.category ? "category: " + it.category + " · " : "") + "item " + it.item_id;
  it.images.forEach((src, i) => {
    const f = document.createElement("figure"), img = document.createElement("img");
    img.src = src; img.alt = it.image_ids[i]; img.dataset.imageId = it.image_ids[i];
    f.appendChild(img);
    if (CONF.mode === "pairwise") {
      const c = document.createElement("figcaption"); c.textContent = i ? "B (right)" : "A (left)"; f.appendChild(c);
    }
    $("images").appendChild(f);
  });
}

async function api(method, path, body) {
  const opt = {method, headers: {"Content-Type": "application/json"}};
  if (body) opt.body = JSON.stringify({...body, token: CONF.token, annotator: who()});
  const r = await fetch(path, opt);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.status);
  return data;
}

async function next() {
  if (!who()) {
    status("type your name (annotator) to start", true); show(null); $("done").style.display = "none"; return;
  }
  const d = await api("GET", "/api/next?annotator=" + encodeURIComponent(who()));
  show(d.item); showProgress(d.progress);
}

async function act(path, extra) {
  if (busy || !who()) return;
  if (path !== "/api/undo" && !item) return;
  busy = true;
  try {
    const d = await api("POST", path, path === "/api/undo" ? {} : {item_id: item.item_id, ...extra});
    if (path === "/api/undo") {
      status(d.undone ? "undone" : "nothing to undo");
      if (d.item) { show(d.item); showProgress(d.progress); } else await next();
    } else { status(path === "/api/skip" ? "skipped" : "saved"); await next(); }
  } catch (e) { status(String(e.message || e), true); }
  finally { busy = false; }
}

function setup() {
  const bar = $("buttons");
  for (const [k, text, body, cls] of KEYS) {
    const b = document.createElement("button"); b.className = cls; b.innerHTML = `<kbd>${k}</kbd> ${text}`;
    b.onclick = () => act("/api/label", body); bar.appendChild(b);
  }
  const s = document.createElement("button"); s.innerHTML = "<kbd>S</kbd> skip"; s.onclick = () => act("/api/skip", {});
  const u = document.createElement("button"); u.innerHTML = "<kbd>U</kbd> undo"; u.onclick = () => act("/api/undo");
  bar.append(s, u);
  $("keys").innerHTML = "Keys: " + KEYS.map(([k, t]) => `<kbd>${k}</kbd> ${t}`).join(" · ")
    + " · <kbd>S</kbd> skip · <kbd>U</kbd> or <kbd>Backspace</kbd> undo";
  const saved = new URLSearchParams(location.search).get("annotator") || CONF.annotator
    || localStorage.getItem("autofeedback-annotator") || "";
  $("annotator").value = saved;
  $("annotator").addEventListener("change", () => {
    localStorage.setItem("autofeedback-annotator", who()); status(""); next().catch(e => status(e.message, true));
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key.toUpperCase();
    const hit = KEYS.find(([key]) => key === k);
    if (hit) { e.preventDefault(); act("/api/label", hit[2]); }
    else if (k === "S") { e.preventDefault(); act("/api/skip", {}); }
    else if (k === "U" || e.key === "Backspace") { e.preventDefault(); act("/api/undo"); }
  });
  next().catch(e => status(e.message, true));
}
setup();
</script></body></html>
"""

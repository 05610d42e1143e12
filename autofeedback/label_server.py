"""label: a small local web page to collect human labels -> RUN/human_labels.parquet.

Reads:   RUN/images.parquet      image_id, prompt_id, prompt, image (PNG bytes, served at /img/IMAGE_ID)
         RUN/prompts.parquet     category (stratified order; recorded with every label), optional
         RUN/judgments.parquet   judge verdicts (--order disagreements), optional
         RUN/human_labels.parquet  what each annotator already labeled (resume), optional
Writes:  RUN/human_labels.parquet  one atomic shard per answer, written before the answer's HTTP response returns:
                                   label_id, annotator, mode, prompt_id, image_ids (in the order shown), label
                                   (pointwise: true = good/aligned), choice (pairwise: the chosen image_id or "tie"),
                                   category, created_at

Items, keys (a re-label replaces the annotator's answer), undo (a tombstone row), skip and order (random,
disagreements, stratified): label_store.py. Label Studio export/import: label_studio.py. The page itself is
autofeedback/templates/label/ (index.html.j2, label.css, label.js; package data).

API:     GET  /                        the page (its settings, with the token, in a JSON block)
         GET  /static/label.css, /static/label.js   its style and script
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

import functools
import ipaddress
import json
import re
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from .config import LabelConfig
from .errors import InputError
from .label_store import BadRequest, Store, item_key, label_id, live_labels  # noqa: F401 (the label API, as before)

ANNOTATOR_RE = re.compile(r"^[\w.@+ -]{1,64}$")
MAX_BODY = 64 * 1024
READ_TIMEOUT_S = 30.0  # a connection that sends nothing for this long is closed (slow clients can't pile up)
# the page's static files (autofeedback/templates/label/, package data), served at /static/NAME
# The page runs only its own static script and style (no inline script, no other origin); a hostile string that
# reached the HTML anyway could not run. Images are same-origin (/img/ID).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = {"label.css": "text/css; charset=utf-8", "label.js": "text/javascript; charset=utf-8"}


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
        self.send_header("Content-Security-Policy", CSP)
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
            if url.path.startswith("/static/") and url.path[len("/static/"):] in STATIC:
                name = url.path[len("/static/"):]
                return self._send(200, static_file(name), STATIC[name])
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


# ============================================================================================ page
@functools.cache
def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("autofeedback", "templates/label"), autoescape=True,
                              undefined=jinja2.StrictUndefined)


def page(store: Store, token: str, annotator: str) -> str:
    """The page (templates/label/index.html.j2): its title, and its settings as a JSON block for label.js."""
    conf = {"mode": store.mode, "token": token, "annotator": annotator}
    return _environment().get_template("index.html.j2").render(
        title=f"label {store.run_dir.name} ({store.mode})", conf=conf)


@functools.cache
def static_file(name: str) -> bytes:
    """One of the page's static files (STATIC), from the installed package."""
    return (resources.files("autofeedback") / "templates" / "label" / name).read_bytes()

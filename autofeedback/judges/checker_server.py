"""A local OpenAI-protocol server whose "VLM" is the exact shapes checker, with switchable faults.

It speaks enough of the OpenAI API for the real `openai` client: chat completions with images as
data URLs, structured output (response_format json_schema), usage, and the Files + Batches
endpoints for `--batch`. Its answers are meaningful because the checker reads the images, so the
whole judge path (templates, parsing, pairwise order swaps, listwise permutations, VQA) is tested
end to end. Loopback only (127.0.0.1).

Faults, for tests and demos (`inject(name, times)` queues them for the next chat requests, or
`fault_rate(name, p)` makes them random):
    401         Unauthorized, the message repeating the Authorization header (as some servers do)
    429         Too Many Requests with Retry-After
    500         internal server error
    hang        no answer until past the client's timeout, then the connection closes
    reset       the TCP connection is reset (RST) without an answer
    bad_body    HTTP 200 whose body is not JSON
    malformed   a well-formed completion whose answer text is not parseable
    refusal     the model refuses (message.refusal set, content null)
    truncated   finish_reason "length", the answer cut mid-JSON
Counters: `requests` (all chat requests received), `answered` (per request body: times answered
with 200). `repeats()` = answers given more than once for the same body.
Gate: `hold_after(n)` holds every chat request after the n-th answer until `release()`.
The answers themselves (the checker reading the images): judges/checker_model.py.

    autofeedback serve-checker --port 8000 --latency 0.2 --fault-rate 429=0.1
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .checker_model import answer, request_key

FAULTS = ("401", "429", "500", "hang", "reset", "bad_body", "malformed", "refusal", "truncated")


class _State:
    def __init__(self, latency: float, seed: int, hang_s: float, retry_after: float) -> None:
        self.lock = threading.Lock()
        self.latency = latency
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.queue: deque[str] = deque()
        self.rates: dict[str, float] = {}
        self.rng = random.Random(seed)
        self.requests = 0
        self.faults_served: Counter = Counter()
        self.answered: Counter = Counter()
        self.answered_total = 0
        self.admitted = 0
        self.hold_after: int | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.position_bias = 0.0

    def next_fault(self) -> str | None:
        with self.lock:
            self.requests += 1
            if self.queue:
                fault = self.queue.popleft()
            else:
                fault = next((f for f, p in self.rates.items() if self.rng.random() < p), None)
            if fault:
                self.faults_served[fault] += 1
            return fault


class LoopbackServer:
    """A ThreadingHTTPServer on a loopback address, run in a daemon thread: `with Server(...) as s: s.base_url`.
    Subclasses set self.httpd (and self.thread = None) in __init__ and may extend stop() and close()."""

    httpd: "_Server"
    thread: threading.Thread | None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.close()

    def close(self) -> None:
        self.httpd.server_close()

    def serve_until_interrupted(self) -> None:  # pragma: no cover - interactive (`autofeedback serve-*`)
        try:
            self.httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class CheckerServer(LoopbackServer):
    """Start with `with CheckerServer() as server:`; `server.base_url` is the OpenAI base URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0, seed: int = 0,
                 hang_s: float = 3.0, retry_after: float = 0.05) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the checker server binds to loopback only")
        self.state = _State(latency, seed, hang_s, retry_after)
        state = self.state

        class Handler(_Handler):
            pass

        Handler.state = state
        self.httpd = _Server((host, port), Handler)
        self.thread: threading.Thread | None = None

    # ---------------------------------------------------------------- control
    def stop(self) -> None:
        self.state.gate.set()  # release requests held by a "hang" fault first
        super().stop()

    def inject(self, fault: str, times: int = 1) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        with self.state.lock:
            self.state.queue.extend([fault] * times)

    def fault_rate(self, fault: str, p: float) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        with self.state.lock:
            self.state.rates[fault] = p

    def set_latency(self, seconds: float) -> None:
        self.state.latency = seconds

    def set_position_bias(self, p: float) -> None:
        """With probability p a pairwise answer is "A" whatever the images (a first-position bias)."""
        self.state.position_bias = p

    def hold_after(self, n: int) -> None:
        with self.state.lock:
            self.state.hold_after = n

    def release(self) -> None:
        with self.state.lock:
            self.state.hold_after = None
        self.state.gate.set()

    @property
    def requests(self) -> int:
        return self.state.requests

    @property
    def answered_total(self) -> int:
        return self.state.answered_total

    def repeats(self) -> int:
        with self.state.lock:
            return sum(n - 1 for n in self.state.answered.values() if n > 1)

    def faults_served(self) -> dict[str, int]:
        with self.state.lock:
            return dict(self.state.faults_served)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen() backlog: must be set before the socket listens
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: without TCP_NODELAY, Nagle + the client's delayed ACK
    # add ~40 ms to every answer
    disable_nagle_algorithm = True
    state: _State

    def log_message(self, *args) -> None:  # quiet
        pass

    # ---------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, payload: dict | bytes, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, status: int, message: str, kind: str = "invalid_request_error", headers=None) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": None}}, headers)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if m := re.fullmatch(r"/v1/files/([\w-]+)/content", path):
            data = self.state.files.get(m.group(1))
            if data is None:
                return self._error(404, f"no file {m.group(1)}")
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if m := re.fullmatch(r"/v1/batches/([\w-]+)", path):
            batch = self.state.batches.get(m.group(1))
            if batch is None:
                return self._error(404, f"no batch {m.group(1)}")
            return self._send(200, _poll_batch(self.state, batch))
        if path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": "shapes-checker", "object": "model"}]})
        return self._error(404, f"unknown endpoint GET {path}")

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        body = self._body()
        if path == "/v1/chat/completions":
            return self._chat(body)
        if path == "/v1/files":
            return self._upload(body)
        if path == "/v1/batches":
            return self._create_batch(body)
        if m := re.fullmatch(r"/v1/batches/([\w-]+)/cancel", path):
            batch = self.state.batches.get(m.group(1))
            if batch is None:
                return self._error(404, f"no batch {m.group(1)}")
            batch["status"] = "cancelled"
            return self._send(200, batch)
        return self._error(404, f"unknown endpoint POST {path}")

    # ---------------------------------------------------------------- chat
    def _chat(self, body: bytes) -> None:
        st = self.state
        try:
            req = json.loads(body)
        except json.JSONDecodeError:
            return self._error(400, "request body is not JSON")
        fault = st.next_fault()
        if st.latency:
            time.sleep(st.latency)
        if fault == "401":
            return self._error(401, f"Incorrect API key provided: {self.headers.get('Authorization')}")
        if fault == "429":
            return self._error(429, "Rate limit reached (injected)", "rate_limit_error",
                               {"Retry-After": f"{st.retry_after:g}"})
        if fault == "500":
            return self._error(500, "The server had an error (injected)", "server_error")
        if fault == "hang":
            time.sleep(st.hang_s)
            self.close_connection = True
            return None
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return None
        if fault == "bad_body":
            return self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"message": ')
        # the gate: admit n requests, hold the rest (to kill a client at a known point)
        while True:
            with st.lock:
                if st.hold_after is None or st.admitted < st.hold_after:
                    st.admitted += 1
                    break
            st.gate.clear()
            st.gate.wait(0.05)
        try:
            completion = answer(req, fault, st)
        except ValueError as exc:
            return self._error(400, str(exc))
        try:
            self._send(200, completion)
        except (BrokenPipeError, ConnectionResetError):  # the client is gone: not answered
            self.close_connection = True
            return None
        with st.lock:  # counted only once the answer is written
            st.answered[request_key(req)] += 1
            st.answered_total += 1
        return None

    # ---------------------------------------------------------------- files + batches
    def _upload(self, body: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
        fields = {}
        for part in msg.iter_parts():
            fields[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True)
        if "file" not in fields:
            return self._error(400, "multipart body has no 'file' part")
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        self.state.files[file_id] = fields["file"]
        return self._send(200, {"id": file_id, "object": "file", "bytes": len(fields["file"]),
                                "created_at": int(time.time()), "filename": "input.jsonl",
                                "purpose": (fields.get("purpose") or b"batch").decode(), "status": "processed"})

    def _create_batch(self, body: bytes) -> None:
        req = json.loads(body)
        if req.get("input_file_id") not in self.state.files:
            return self._error(400, f"no file {req.get('input_file_id')}")
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        batch = {
            "id": batch_id, "object": "batch", "endpoint": req.get("endpoint", "/v1/chat/completions"),
            "input_file_id": req["input_file_id"], "completion_window": req.get("completion_window", "24h"),
            "status": "validating", "created_at": int(time.time()), "output_file_id": None, "error_file_id": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": req.get("metadata"),
            "_polls": 0,
        }
        self.state.batches[batch_id] = batch
        return self._send(200, {k: v for k, v in batch.items() if not k.startswith("_")})


def _poll_batch(st: _State, batch: dict) -> dict:
    """A batch is in progress at the first poll and completed at the second."""
    batch["_polls"] += 1
    if batch["status"] in ("validating", "in_progress") and batch["_polls"] >= 2:
        lines_out = []
        raw = st.files[batch["input_file_id"]].decode()
        total = completed = 0
        for line in raw.splitlines():
            if not line.strip():
                continue
            total += 1
            item = json.loads(line)
            try:
                body = answer(item["body"], None, st)
                completed += 1
                key = request_key(item["body"])
                with st.lock:
                    st.answered[key] += 1
                    st.answered_total += 1
                lines_out.append({"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": item["custom_id"],
                                  "response": {"status_code": 200, "request_id": uuid.uuid4().hex, "body": body},
                                  "error": None})
            except (ValueError, KeyError) as exc:
                lines_out.append({"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": item.get("custom_id"),
                                  "response": None, "error": {"code": "invalid_request", "message": str(exc)}})
        out_id = f"file-{uuid.uuid4().hex[:24]}"
        st.files[out_id] = "".join(json.dumps(x) + "\n" for x in lines_out).encode()
        batch.update(status="completed", output_file_id=out_id, completed_at=int(time.time()),
                     request_counts={"total": total, "completed": completed, "failed": total - completed})
    elif batch["status"] == "validating":
        batch["status"] = "in_progress"
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def serve(host: str = "127.0.0.1", port: int = 8000, latency: float = 0.0, rates: dict[str, float] | None = None,
          position_bias: float = 0.0) -> None:  # pragma: no cover - interactive
    server = CheckerServer(host, port, latency=latency)
    for fault, p in (rates or {}).items():
        server.fault_rate(fault, p)
    server.set_position_bias(position_bias)
    print(f"shapes-checker OpenAI server on {server.base_url} (Ctrl-C to stop)", flush=True)
    server.serve_until_interrupted()

"""The OpenAI judge's reliability parts (judges/vlm.py uses them):

    ResponseCache      write-ahead SQLite cache of raw replies, keyed by request_id (a reply is on disk once put()
                       returns: a re-run, or a run resumed after kill -9, never pays twice)
    RateLimiter        client-side requests/min and tokens/min (token buckets)
    Budget             --max-cost: requests in flight reserve their worst case, replies settle the real cost
    DrainOnInterrupt   Ctrl-C: start no new request, wait for those on the wire (their answers are paid for)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path

from ..errors import InputError


# ---------------------------------------------------------------------------------------- cache
class ResponseCache:
    """request_id -> the raw replies (JSON), in SQLite (WAL): survives a killed process once put() returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        with self._readable():
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS replies (request_id TEXT PRIMARY KEY, reply TEXT NOT NULL, "
                            "created_at REAL NOT NULL)")

    def get_many(self, ids: list[str]) -> dict[str, dict]:
        out = {}
        with self._readable():
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                q = f"SELECT request_id, reply FROM replies WHERE request_id IN ({','.join('?' * len(chunk))})"
                out.update({rid: json.loads(reply) for rid, reply in self.db.execute(q, chunk)})
        return out

    @contextlib.contextmanager
    def _readable(self):
        """A cache file that is not a database (overwritten, truncated) is a one-line error saying what to do."""
        try:
            yield
        except sqlite3.OperationalError:  # locked, no permission...: not corruption, the message says what
            raise
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise InputError(f"{self.path}: the judge's reply cache is damaged ({exc}); move it aside "
                             f"(mv {self.path} {self.path}.damaged) and run again: the judgments table keeps every "
                             f"answer already written, nothing else is lost") from None

    def put(self, request_id: str, reply: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)", (request_id, json.dumps(reply), time.time()))

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------------------------- limiters
class RateLimiter:
    """Client-side requests/min and tokens/min (token buckets), so a run stays under the account's limits."""

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.req_tokens = rpm or 0.0
        self.tok_tokens = tpm or 0.0
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                dt, self.t = now - self.t, now
                if self.rpm:
                    self.req_tokens = min(self.rpm, self.req_tokens + dt * self.rpm / 60)
                if self.tpm:
                    self.tok_tokens = min(self.tpm, self.tok_tokens + dt * self.tpm / 60)
                need_t = min(tokens, self.tpm) if self.tpm else 0
                if (not self.rpm or self.req_tokens >= 1) and (not self.tpm or self.tok_tokens >= need_t):
                    if self.rpm:
                        self.req_tokens -= 1
                    if self.tpm:
                        self.tok_tokens -= need_t
                    return
                waits = []
                if self.rpm and self.req_tokens < 1:
                    waits.append((1 - self.req_tokens) * 60 / self.rpm)
                if self.tpm and self.tok_tokens < need_t:
                    waits.append((need_t - self.tok_tokens) * 60 / self.tpm)
                await asyncio.sleep(max(waits))


class Budget:
    """--max-cost: a request in flight reserves its worst-case cost; its reply settles it with the real cost.

    Only requests in flight hold reservations, so the budget is spent to within one request's worst case: a
    request that does not fit waits for those in flight to settle, and is refused only when it would not fit
    with none in flight. From then on every request is refused (the run stops sending cleanly).
    """

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0
        self.in_flight = 0
        self.exhausted = False
        self.settled = asyncio.Event()

    async def reserve(self, amount: float) -> bool:
        if self.limit is None:
            return True
        while not self.exhausted and self.spent + self.reserved + amount > self.limit:
            if self.in_flight == 0:
                self.exhausted = True
                break
            self.settled.clear()
            await self.settled.wait()
        if self.exhausted:
            return False
        self.reserved += amount
        self.in_flight += 1
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.spent += actual
        if self.limit is not None:
            self.reserved -= reserved
            self.in_flight -= 1
            self.settled.set()


class DrainOnInterrupt:
    """Ctrl-C while requests are in flight: start no new one, wait (at most `timeout` s) for those on the wire,
    so that their answers, paid for, are cached; a second Ctrl-C abandons them. `interrupted` says if it came."""

    def __init__(self, tasks: list[asyncio.Task], sending: set[asyncio.Task], timeout: float) -> None:
        self.tasks, self.sending, self.timeout = tasks, sending, timeout
        self.loop = asyncio.get_running_loop()
        self.interrupted = False
        self.installed = False

    def __enter__(self) -> "DrainOnInterrupt":
        try:
            self.loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            self.installed = True
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:
            self.loop.remove_signal_handler(signal.SIGINT)

    def _on_sigint(self) -> None:
        if self.interrupted:  # the second Ctrl-C
            self._cancel(self.tasks)
            return
        self.interrupted = True
        self._cancel([t for t in self.tasks if t not in self.sending])
        print(f"interrupted: waiting for {len(self.sending)} requests in flight (at most {self.timeout:g} s) so "
              f"that their answers are kept; Ctrl-C again to abandon them", file=sys.stderr, flush=True)
        self.loop.call_later(self.timeout, self._cancel, self.tasks)

    @staticmethod
    def _cancel(tasks) -> None:
        for task in tasks:
            task.cancel()

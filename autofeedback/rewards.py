"""The rewards of `train grpo`: the project's judges, unchanged, asked while the next batch is being sampled.

Each reward judge (shapes, shapes:graded, clip:PATH, reward:PATH, openai:MODEL) gets a worker thread. The sampler
hands over each batch's images as it decodes them (`submit`); a worker asks its judge for everything waiting at
once, so a slow server gets ever larger calls and its concurrency bound stays full while the model samples. Every
answer is a judgments row (the judge stage's contract and request_id, so `judge`, `pairs`, `eval` and `export`
read them as their own), appended in shards as answers arrive. An OpenAI-protocol judge keeps all of its
reliability: its write-ahead reply cache, the SDK's retries, parse re-asks; and a request whose final row is
already in RUN/judgments.parquet is not asked again, so a resumed epoch pays for nothing twice.
Across calls --max-cost is the run's (each call gets what is left) and --rpm/--tpm hold on average (a call
starts only when the previous one's requests fit the rate).
"""

from __future__ import annotations

import json
import queue
import threading
import time

from . import judge as judge_stage
from . import judges, tables
from .config import JudgeConfig
from .config_grpo import JUDGE_FIELDS
from .errors import InputError

FLUSH_ROWS, FLUSH_SECONDS = 256, 5.0


def judge_config(cfg, spec: str, mode: str | None = None) -> JudgeConfig:
    """The judge stage's config of one reward (or gold) judge: OpenAI-protocol judges take the run's mode,
    template and transport settings; the local judges are pointwise."""
    remote = spec.partition(":")[0] == "openai"
    return JudgeConfig(run_dir=cfg.run_dir, judge=spec, mode=(mode or cfg.reward_mode) if remote else "pointwise",
                       template=cfg.reward_template if remote else None,
                       **{f: getattr(cfg, f) for f in JUDGE_FIELDS})


def reward_value(row: dict, kind: str) -> float | None:
    """A judgments row -> its reward: the score (a label as 1/0 when there is none) or the label; None unless ok."""
    if row.get("status") != "ok":
        return None
    if kind == "label" or row.get("score") is None:
        return None if row.get("label") is None else float(row["label"])
    return float(row["score"])


class RewardJudges:
    """The run's reward judges and their workers. submit() images as they are drawn; collect() waits for every
    answer and returns {judge: {image_id: row}}."""

    def __init__(self, cfg, meta: dict, suite: dict, write: bool = True) -> None:
        self.cfg, self.meta, self.suite, self.write = cfg, meta, suite, write
        self.path = tables.table_path(cfg.run_dir, "judgments")
        self.lock = threading.Lock()
        self.spent = 0.0
        final = tables.read(self.path, "judgments", columns=["request_id", "status", "label", "score", "cost_usd"],
                            required=False).to_pylist()
        self.known = {r["request_id"]: r for r in final if r["status"] in judge_stage.FINAL}
        self.workers = [_Worker(self, spec, judge_config(cfg, spec)) for spec in cfg.reward]
        self.buffer: list[dict] = []
        self.last_flush = time.monotonic()

    def submit(self, images: list[dict]) -> None:
        for w in self.workers:
            w.submit(images)

    def collect(self) -> dict[str, dict[str, dict]]:
        """Wait for every submitted request (api_error ones asked once more), write the rows; the epoch's rows
        by judge and image_id. Clears them for the next epoch."""
        for w in self.workers:
            w.join()
        for w in self.workers:
            w.retry_failed()
        for w in self.workers:
            w.join()
        self.flush()
        out = {w.spec: w.take() for w in self.workers}
        for spec, rows in out.items():
            ok = [r for r in rows.values() if r["status"] == "ok"]
            if ok and all(reward_value(r, self.cfg.reward_value) is None for r in ok):
                raise InputError(f"reward {spec}: its judgments have no {self.cfg.reward_value}; use --reward-value "
                                 f"{'score' if self.cfg.reward_value == 'label' else 'label'}")
        return out

    def stats(self) -> dict:
        return {w.spec: w.stats() for w in self.workers}

    def emit(self, row: dict) -> None:
        with self.lock:
            self.spent += row.get("cost_usd") or 0.0
            if self.write:
                self.buffer.append(row)
                if len(self.buffer) >= FLUSH_ROWS or time.monotonic() - self.last_flush > FLUSH_SECONDS:
                    self._flush_locked()

    def flush(self) -> None:
        with self.lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self.buffer:
            tables.append(self.path, self.buffer, "judgments", tag=f"grpo{threading.get_ident() % 1000}")
        self.buffer = []
        self.last_flush = time.monotonic()

    def close(self, timeout: float | None = None) -> None:
        """Stop the workers (after the call in flight: its answers are paid for, so they are written)."""
        for w in self.workers:
            if w.thread.is_alive():
                w.stop(timeout)
        self.flush()


class _Worker:
    def __init__(self, owner: RewardJudges, spec: str, jcfg: JudgeConfig) -> None:
        self.owner, self.spec, self.jcfg = owner, spec, jcfg
        self.backend = judges.get(spec, cfg=jcfg, run_dir=jcfg.run_dir)
        if jcfg.mode not in self.backend.modes:
            raise InputError(f"reward {spec!r} does not judge mode {jcfg.mode!r} (it does: "
                             f"{', '.join(self.backend.modes)})")
        self.remote = spec.partition(":")[0] == "openai"
        self.q: queue.Queue = queue.Queue()
        self.rows: dict[str, dict] = {}  # image_id -> row (lite), this epoch
        self.units: dict[str, dict] = {}  # request_id -> unit, this epoch
        self.error: BaseException | None = None
        self.next_call = 0.0
        self.call_tokens = 0
        self.seen = (0, 0)  # the backend's sent / cached counters at the last stats()
        self.stopping = False
        self.t_first = self.t_last = None
        self.busy = 0.0
        self.calls = 0
        self.fresh = self.reused = 0
        self.thread = threading.Thread(target=self._run, name=f"reward-{spec}", daemon=True)
        self.thread.start()

    # -------------------------------------------------------------- main thread
    def submit(self, images: list[dict]) -> None:
        self._raise()
        units = judge_stage.build_units(self.jcfg, images, self.owner.meta, self.backend, self.owner.suite)
        todo = []
        for u in units:
            self.units[u["request_id"]] = u
            done = self.owner.known.get(u["request_id"])
            if done is not None:  # answered by an earlier (killed) run of this epoch: no request
                self.rows[u["image_ids"][0]] = {**done, "reused": True}
                self.reused += 1
            else:
                todo.append(u)
        if todo:
            if self.t_first is None:
                self.t_first = time.perf_counter()
            self.q.put(todo)

    def join(self) -> None:
        self.q.join()
        self._raise()

    def retry_failed(self) -> None:
        failed = [self.units[r["request_id"]] for r in self.rows.values() if r["status"] == "api_error"]
        if failed:
            self.q.put(failed)

    def take(self) -> dict[str, dict]:
        rows, self.rows, self.units = self.rows, {}, {}
        return rows

    def stats(self) -> dict:
        """Requests answered this epoch (fresh / reused from the table), busy seconds (sum of latencies) over
        wall seconds (first request to last answer) = the concurrency achieved."""
        wall = (self.t_last - self.t_first) if self.t_first is not None and self.t_last is not None else 0.0
        out = {"fresh": self.fresh, "reused": self.reused, "calls": self.calls, "wall_s": round(wall, 3),
               "busy_s": round(self.busy, 3),
               "concurrency": round(self.busy / wall, 2) if wall > 0 and self.busy else None}
        if self.remote:  # this epoch's: requests sent (retries of a parse error included), answers from the cache
            sent, cached = self.backend.stats.get("sent", 0), self.backend.stats.get("cached", 0)
            out.update(bound=self.jcfg.concurrency, sent=sent - self.seen[0], cached=cached - self.seen[1])
            self.seen = (sent, cached)
        self.t_first = self.t_last = None
        self.busy, self.calls, self.fresh, self.reused = 0.0, 0, 0, 0
        return out

    def stop(self, timeout: float | None) -> None:
        self.stopping = True  # what is still queued (Ctrl-C, an error) is not sent; the call in flight finishes
        self.q.put(None)
        self.thread.join(timeout)

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    # -------------------------------------------------------------- worker thread
    def _run(self) -> None:
        while True:
            batch = self.q.get()
            if batch is None:
                self.q.task_done()
                return
            units, n = list(batch), 1
            while True:  # everything waiting: one call
                try:
                    more = self.q.get_nowait()
                except queue.Empty:
                    break
                n += 1
                if more is None:
                    self.q.put(None)
                    self.q.task_done()
                    n -= 1
                    break
                units += more
            try:
                if self.error is None and not self.stopping:
                    self._call(units)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc
            finally:
                for _ in range(n):
                    self.q.task_done()

    def _call(self, units: list[dict]) -> None:
        cfg = self.jcfg
        wait = self.next_call - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if self.remote and cfg.max_cost is not None:  # the run's budget: this call gets what is left
            self.backend.cfg = cfg.model_copy(update={"max_cost": max(cfg.max_cost - self.owner.spent, 1e-12)})
        if cfg.mode == "vqa":
            for u in [u for u in units if not u.get("questions")]:
                self._emit(u, {"status": "error",
                               "error": "no VQA questions for this prompt (see autofeedback.suites)"})
            units = [u for u in units if u.get("questions")]
        t0, sent0 = time.monotonic(), self.backend.stats.get("sent", 0) if self.remote else 0
        self.calls += 1
        self.call_tokens = 0
        if units:
            self.backend.judge(units, self._emit)
        if self.remote and (cfg.rpm or cfg.tpm):  # the next call waits until this one's requests fit the rates
            sent = self.backend.stats.get("sent", 0) - sent0
            need = max(sent * 60 / cfg.rpm if cfg.rpm else 0.0, self.call_tokens * 60 / cfg.tpm if cfg.tpm else 0.0)
            self.next_call = t0 + need

    def _emit(self, unit: dict, answer: dict) -> None:
        row = {"request_id": unit["request_id"], "judge": self.spec, "mode": self.jcfg.mode,
               "prompt_id": unit["prompt_id"], "image_ids": unit["image_ids"], "created_at": tables.now(),
               "details": json.dumps(unit.get("details") or {}), **answer}
        row.setdefault("template", None)
        self.owner.emit(row)
        self.rows[unit["image_ids"][0]] = {k: row.get(k) for k in ("request_id", "status", "label", "score",
                                                                   "cost_usd", "latency_s")}
        self.fresh += 1
        self.call_tokens += (row.get("input_tokens") or 0) + (row.get("output_tokens") or 0)
        self.busy += row.get("latency_s") or 0.0
        self.t_last = time.perf_counter()


class GoldJudge:
    """The held-out gold judge: judges images now, in this thread, and writes nothing (its answers are the gold
    columns of metrics.jsonl; an OpenAI-protocol gold still caches its replies)."""

    def __init__(self, cfg, meta: dict, suite: dict) -> None:
        self.meta, self.suite = meta, suite
        self.jcfg = judge_config(cfg, cfg.gold, mode="pointwise")
        self.backend = judges.get(cfg.gold, cfg=self.jcfg, run_dir=self.jcfg.run_dir)

    def score(self, images: list[dict]) -> list[dict]:
        """Rows (the judge's answer fields) in the order of the images."""
        units = judge_stage.build_units(self.jcfg, images, self.meta, self.backend, self.suite)
        rows: dict[str, dict] = {}
        self.backend.judge(units, lambda u, a: rows.__setitem__(u["image_ids"][0], a))
        return [rows.get(im["image_id"], {"status": "error"}) for im in images]

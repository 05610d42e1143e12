"""judge: images -> judgments, by a judge backend (see autofeedback.judges).

Reads:   RUN/images.parquet (image_id, prompt_id, prompt, image), RUN/prompts.parquet (metadata)
Writes:  RUN/judgments.parquet  request_id, judge, mode, template, prompt_id, image_ids (order shown),
         label, score, choice, ranking, caption, answers, rationale, raw_response, status, error,
         input_tokens, output_tokens, cost_usd, latency_s, details, created_at
Modes:   pointwise  one request per image
         pairwise   every pair of a prompt's images (or --pairs-per-prompt), asked A|B and B|A;
                    details = {pair_key, order, position_choice}; see combine_orders()
         listwise   a prompt's images in groups of --list-size, in a shuffled (seeded) order;
                    ranking = image_ids best first, mapped back from the positions shown
         caption    one request per image; score = caption-prompt similarity
         vqa        one request per image, questions from the prompt's suite (autofeedback.suites; default:
                    the metadata's `questions` list, docs/suites.md); score = fraction right
Resume:  request_id = hash(judge, mode, template, image_ids in order, answer-changing params). A request
         with a final status (ok, parse_error, refused, truncated, error) is never sent again; api_error
         and budget rows are retried by the next run (the newest row per request_id wins).
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import time
from collections import Counter, defaultdict

from . import judges, suites, tables
from .config import JudgeConfig
from .errors import InputError

FINAL = ("ok", "parse_error", "refused", "truncated", "error")
FLUSH_ROWS = 256
FLUSH_SECONDS = 5.0


def request_id(identity: str, mode: str, template: str, image_ids: list[str], params: dict | None = None) -> str:
    return tables.content_id("request", identity, mode, template, list(image_ids), params or {})


def load_inputs(run_dir, with_suites: bool = False) -> tuple:
    """(images, prompt_id -> metadata), and prompt_id -> suite with `with_suites`."""
    images_path = tables.table_path(run_dir, "images")
    if not tables.exists(images_path):
        raise InputError(f"{images_path}: no images table; run `autofeedback generate` first")
    images = tables.read(images_path, "images", columns=["image_id", "prompt_id", "prompt", "image"])
    prompts_path = tables.table_path(run_dir, "prompts")
    meta, suite = {}, {}
    if tables.exists(prompts_path):
        for row in tables.read(prompts_path, "prompts", columns=["prompt_id", "suite", "metadata"]).to_pylist():
            meta[row["prompt_id"]] = json.loads(row["metadata"]) if row["metadata"] else {}
            suite[row["prompt_id"]] = row["suite"]
    return (images.to_pylist(), meta, suite) if with_suites else (images.to_pylist(), meta)


def vqa_questions(prompt: str, metadata: dict, suite: str | None = None) -> list[tuple[str, str]]:
    """(question, expected answer) pairs from the prompt's suite (autofeedback.suites): metadata["questions"]
    (TIFA/DSG style) by default; the shapes suite asks about its concepts."""
    return suites.vqa_questions(suite, prompt, metadata)


def build_units(cfg: JudgeConfig, images: list[dict], meta: dict[str, dict], backend,
                suite: dict[str, str] | None = None) -> list[dict]:
    """Every request this mode asks for, with its request_id and what is shown, in order."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for img in sorted(images, key=lambda r: r["image_id"]):
        by_prompt[img["prompt_id"]].append(img)
    template = backend.template.name if hasattr(backend.template, "name") else backend.template
    params = getattr(backend, "params", {})
    units = []

    def unit(shown: list[dict], details: dict | None = None, **extra) -> dict:
        ids = [s["image_id"] for s in shown]
        first = shown[0]
        return {"request_id": request_id(backend.identity, cfg.mode, template, ids, params),
                "prompt_id": first["prompt_id"], "prompt": first["prompt"], "image_ids": ids,
                "images": [s["image"]["bytes"] for s in shown], "metadata": meta.get(first["prompt_id"], {}),
                "details": details or {}, **extra}

    for prompt_id, imgs in by_prompt.items():
        if cfg.mode in ("pointwise", "caption"):
            units += [unit([img]) for img in imgs]
        elif cfg.mode == "vqa":
            questions = vqa_questions(imgs[0]["prompt"], meta.get(prompt_id, {}), (suite or {}).get(prompt_id))
            units += [unit([img], questions=questions) for img in imgs]
        elif cfg.mode == "pairwise":
            pairs = list(itertools.combinations(imgs, 2))
            if cfg.pairs_per_prompt and len(pairs) > cfg.pairs_per_prompt:
                rng = random.Random(tables.content_id("pairs", cfg.seed, prompt_id))
                pairs = rng.sample(pairs, cfg.pairs_per_prompt)
            for a, b in pairs:
                key = tables.content_id("pair", a["image_id"], b["image_id"])
                units.append(unit([a, b], {"pair_key": key, "order": "AB"}))
                if cfg.both_orders:
                    units.append(unit([b, a], {"pair_key": key, "order": "BA"}))
        elif cfg.mode == "listwise":
            for start in range(0, len(imgs), cfg.list_size):
                group = imgs[start:start + cfg.list_size]
                if len(group) < 2:
                    continue
                rng = random.Random(tables.content_id("shuffle", cfg.seed, [g["image_id"] for g in group]))
                shown = group[:]
                rng.shuffle(shown)
                units.append(unit(shown, {"list": [g["image_id"] for g in group]}))
    return units


def run(cfg: JudgeConfig) -> dict:
    """Judge what this judge has not judged yet in the run. Returns a summary."""
    # 1. Check inputs and the judge.
    backend = judges.get(cfg.judge, cfg=cfg, run_dir=cfg.run_dir)
    if cfg.mode not in backend.modes:
        raise InputError(f"judge {cfg.judge!r} does not support mode {cfg.mode!r} "
                         f"(it does: {', '.join(backend.modes)})")
    images, meta, suite = load_inputs(cfg.run_dir, with_suites=True)
    out_path = tables.table_path(cfg.run_dir, "judgments")
    with tables.run_lock(cfg.run_dir):
        tables.clean_temp(out_path)
        # 2. Requests without a final answer yet.
        units = build_units(cfg, images, meta, backend, suite)
        done = _final_ids(out_path)
        todo = [u for u in units if u["request_id"] not in done]
        n_done = len(units) - len(todo)
        if cfg.limit is not None:
            todo = todo[:cfg.limit]
        # 3. Judge; rows are written in shards as they arrive.
        writer = _Writer(out_path, cfg)
        t0 = time.perf_counter()
        missing = []
        if cfg.mode == "vqa":
            missing = [u for u in todo if not u.get("questions")]
            for u in missing:
                writer.emit(u, {"status": "error", "error": f"no VQA questions for this prompt (suite "
                                f"{suite.get(u['prompt_id'])!r}: its metadata has no `questions` list and no "
                                f"suite hook asks any; see autofeedback.suites)"})
            todo = [u for u in todo if u.get("questions")]
        try:
            if todo:
                backend.judge(todo, writer.emit)
        finally:
            writer.flush()  # what arrived is written, even when Ctrl-C stopped the backend
        # requests waiting in a submitted Batch API job have no row until a later run collects them
        unanswered = {u["request_id"] for u in todo} - writer.seen - getattr(backend, "waiting", set())
        if unanswered:  # a backend must answer every request; never drop one silently
            raise RuntimeError(f"judge {cfg.judge} returned no row for {len(unanswered)} requests")
        tables.compact(out_path, "judgments")
        counts = {"requests": len(todo) + len(missing), "already_done": n_done,
                  "left": len(units) - n_done - len(todo) - len(missing)}
        summary = _summary(cfg, counts, writer, backend, time.perf_counter() - t0)
    return summary


def _final_ids(path) -> set[str]:
    t = tables.read(path, "judgments", columns=["request_id", "status"], required=False)
    return {r for r, s in zip(t.column("request_id").to_pylist(), t.column("status").to_pylist()) if s in FINAL}


class _Writer:
    """Collects rows from a backend and appends them in shards (every FLUSH_ROWS rows or FLUSH_SECONDS)."""

    def __init__(self, path, cfg: JudgeConfig) -> None:
        self.path, self.cfg = path, cfg
        self.buffer: list[dict] = []
        self.rows: list[dict] = []
        self.seen: set[str] = set()
        self.last = time.monotonic()

    def emit(self, unit: dict, answer: dict) -> None:
        row = {
            "request_id": unit["request_id"], "judge": self.cfg.judge, "mode": self.cfg.mode,
            "prompt_id": unit["prompt_id"], "image_ids": unit["image_ids"], "created_at": tables.now(),
            "details": json.dumps(unit.get("details") or {}), **answer,
        }
        row.setdefault("template", None)
        if row["status"] not in tables.STATUSES:
            raise RuntimeError(f"judge {self.cfg.judge} returned unknown status {row['status']!r}")
        self.seen.add(unit["request_id"])
        self.buffer.append(row)
        self.rows.append({k: row.get(k) for k in ("status", "latency_s", "input_tokens", "output_tokens",
                                                  "cost_usd", "details", "choice", "image_ids")})
        if len(self.buffer) >= FLUSH_ROWS or time.monotonic() - self.last > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        tables.append(self.path, self.buffer, "judgments")
        self.buffer = []
        self.last = time.monotonic()


def combine_orders(rows: list[dict]) -> dict[str, dict]:
    """Pairwise rows asked in both orders -> one verdict per pair.

    A pair is position-consistent when both orders pick the same image (or both say tie); an
    inconsistent pair is a tie. Returns {pair_key: {choice, consistent, image_ids}} for pairs with
    both orders answered ok.
    """
    by_pair: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("status") != "ok":
            continue
        d = json.loads(r["details"]) if isinstance(r.get("details"), str) else (r.get("details") or {})
        if "pair_key" in d:
            by_pair[d["pair_key"]][d.get("order", "AB")] = r
    out = {}
    for key, orders in by_pair.items():
        if len(orders) < 2:
            continue
        ab, ba = orders["AB"], orders["BA"]
        consistent = ab["choice"] == ba["choice"]
        out[key] = {"choice": ab["choice"] if consistent else "tie", "consistent": consistent,
                    "image_ids": list(ab["image_ids"])}
    return out


def _summary(cfg, counts: dict, writer: _Writer, backend, seconds: float) -> dict:
    """counts: requests (asked this run), already_done (final before this run), left (not asked: --limit)."""
    rows = writer.rows
    statuses = Counter(r["status"] for r in rows)
    lat = [r["latency_s"] for r in rows if r["latency_s"] is not None and r["status"] != "budget"]
    summary = {
        "judge": cfg.judge, "mode": cfg.mode, **counts,
        "status": dict(statuses), "seconds": round(seconds, 2),
        "latency_s": {"p50": round(statistics.median(lat), 4), "p95": round(_pct(lat, 0.95), 4)} if lat else None,
        "input_tokens": sum(r["input_tokens"] or 0 for r in rows),
        "output_tokens": sum(r["output_tokens"] or 0 for r in rows),
        "cost_usd": round(sum(r["cost_usd"] or 0.0 for r in rows), 6),
    }
    stats = getattr(backend, "stats", None)
    if stats:
        summary["backend"] = dict(stats)
    if cfg.mode == "pairwise":
        all_rows = tables.read(tables.table_path(cfg.run_dir, "judgments"), "judgments",
                               columns=["request_id", "judge", "mode", "status", "choice", "details", "image_ids"])
        mine = [r for r in all_rows.to_pylist() if r["judge"] == cfg.judge and r["mode"] == "pairwise"]
        combined = combine_orders(mine)
        if combined:
            summary["pairs_both_orders"] = len(combined)
            summary["position_consistency"] = round(sum(c["consistent"] for c in combined.values()) / len(combined), 4)
            first = [json.loads(r["details"]).get("position_choice") for r in mine if r["status"] == "ok"]
            first = [c for c in first if c]
            if first:
                summary["chose_first_shown"] = round(sum(c == "A" for c in first) / len(first), 4)
    return summary


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def format_summary(s: dict, cfg: JudgeConfig | None = None) -> str:
    left = f", {s['left']} left" if s.get("left") else ""
    lines = [f"judge {s['judge']} ({s['mode']}): {s['requests']} requests this run, {s['already_done']} already done"
             f"{left}, {s['seconds']} s"]
    if s["status"]:
        lines.append("  status: " + ", ".join(f"{k}={v}" for k, v in sorted(s["status"].items())))
    if s.get("latency_s"):
        lines.append(f"  latency: p50 {s['latency_s']['p50']} s, p95 {s['latency_s']['p95']} s")
    if s["input_tokens"] or s["output_tokens"]:
        lines.append(f"  tokens: {s['input_tokens']} in, {s['output_tokens']} out; cost ${s['cost_usd']:.4f}")
    b = s.get("backend") or {}
    if b:
        lines.append(f"  requests sent {b.get('sent', 0)} (re-asked {b.get('reasked', 0)}), "
                     f"answers from cache {b.get('cached', 0)}")
        if b.get("batch"):
            bt = b["batch"]
            lines.append(f"  batch: submitted {bt['submitted']}, collected {bt['collected']}, "
                         f"waiting {bt['pending']} ({', '.join(x['id'] + ' ' + x['status'] for x in bt['batches'])})")
    if "position_consistency" in s:
        lines.append(f"  position consistency {100 * s['position_consistency']:.1f}% over {s['pairs_both_orders']} "
                     f"pairs; first-shown image chosen {100 * s.get('chose_first_shown', 0):.1f}%")
    return "\n".join(lines)

"""--batch: the OpenAI Batch API path of the OpenAI judge (judges/vlm.py).

Submit: the requests go up as one JSONL file; the batch id and its request_ids are persisted in RUN/batches/ID.json.
The next invocation polls: a completed batch's replies are cached (write-ahead, as on the synchronous path) and
emitted; a failed, expired or cancelled one makes its requests submittable again; requests waiting in a batch are
never submitted again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from . import parsing
from .replies import BadImage, attempt_from_body, describe_api_error

if TYPE_CHECKING:
    from .reliability import ResponseCache
    from .vlm import OpenAIJudge


def run_batch(judge: OpenAIJudge, units: list[dict], cache: ResponseCache, emit) -> None:
    """Poll and collect this run's earlier batches, then submit what is neither cached, collected nor waiting."""
    import openai

    client = openai.OpenAI(api_key=judge._key, base_url=judge.base_url, max_retries=judge.cfg.max_retries,
                           timeout=judge.cfg.timeout)
    state_dir = judge.run_dir / "batches"
    state_dir.mkdir(parents=True, exist_ok=True)
    pending_ids: set[str] = set()
    by_id = {u["request_id"]: u for u in units}
    report = {"collected": 0, "pending": 0, "submitted": 0, "batches": []}
    # 1. Poll the batches this run submitted earlier; collect the finished ones.
    for path in sorted(state_dir.glob("*.json")):
        st = json.loads(path.read_text())
        if st["state"] != "submitted":
            continue
        try:
            batch = client.batches.retrieve(st["batch_id"])
        except openai.APIError as exc:
            raise InputError(f"could not poll batch {st['batch_id']}: "
                             f"{judge._redact(describe_api_error(exc))}") from None
        report["batches"].append({"id": batch.id, "status": batch.status})
        if batch.status == "completed" and batch.output_file_id:
            text = client.files.content(batch.output_file_id).text
            for line in text.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                rid = item["custom_id"]
                body = (item.get("response") or {}).get("body")
                if body and (item.get("response") or {}).get("status_code") == 200:
                    att = attempt_from_body(body, judge, batch=True)
                    reply = judge._cache_put(cache, rid, {"attempts": [att], "model": judge.model,
                                                         "template": judge.template.name, "batch_id": batch.id})
                    if rid in by_id:
                        emit(by_id[rid], judge._row(by_id[rid], reply))
                        report["collected"] += 1
            st["state"] = "collected"
            _write_json(path, st)
        elif batch.status in ("failed", "expired", "cancelled"):
            st["state"] = batch.status  # its requests become submittable again
            _write_json(path, st)
        else:
            pending_ids.update(st["request_ids"])
    # 2. Submit what is neither cached, collected nor waiting in a batch.
    collected = set(cache.get_many(list(by_id)))
    todo = [u for u in units if u["request_id"] not in pending_ids and u["request_id"] not in collected]
    report["pending"] = len([u for u in units if u["request_id"] in pending_ids])
    requests = {}  # request_id -> messages, for the units whose images decode
    for u in todo:
        try:
            requests[u["request_id"]] = judge._messages(u)[0]
        except BadImage as exc:
            emit(u, judge._status_row(u, "error", str(exc)))
    if requests:
        lines = []
        for rid, messages in requests.items():
            body = {"model": judge.model, "messages": messages, "temperature": judge.cfg.temperature,
                    "max_tokens": judge.cfg.max_tokens}
            if judge.cfg.structured != "off":
                body["response_format"] = parsing.response_format(judge.task)
            lines.append(json.dumps({"custom_id": rid, "method": "POST", "url": "/v1/chat/completions",
                                     "body": body}))
        data = ("\n".join(lines) + "\n").encode()
        try:
            f = client.files.create(file=("autofeedback-batch.jsonl", data), purpose="batch")
            batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
        except openai.APIError as exc:
            raise InputError(f"could not submit the batch: {judge._redact(describe_api_error(exc))}") from None
        _write_json(state_dir / f"{batch.id}.json", {
            "batch_id": batch.id, "input_file_id": f.id, "state": "submitted", "submitted_at": time.time(),
            "request_ids": list(requests), "model": judge.model, "template": judge.template.name})
        report["submitted"] = len(requests)
        report["batches"].append({"id": batch.id, "status": batch.status})
    judge.waiting = pending_ids | set(requests)
    judge.stats["batch"] = report


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)

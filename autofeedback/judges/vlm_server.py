"""A local OpenAI-protocol chat-completions server running a transformers VLM (the shapes VLM, or any LLaVA-style
folder that LlavaForConditionalGeneration / AutoProcessor load, with a chat template).

    autofeedback serve-vlm --model data/models/shapes-vlm --port 8001
    autofeedback judge RUN --judge openai:shapes-vlm --base-url http://127.0.0.1:8001/v1 --mode pairwise

- POST /v1/chat/completions: messages with text parts and images as base64 data URLs (image_url parts), the
  model's chat template, greedy decoding at temperature 0 (sampling otherwise), `max_tokens` (finish_reason
  "length" when cut), usage tokens (prompt tokens include the image tokens). GET /v1/models.
- response_format: "text", "json_object" or "json_schema". JSON answers are honoured by *validated* decoding, not
  constrained decoding: the answer is checked against the schema with the jsonschema library (a schema that is
  not valid JSON Schema is a 400); an answer that
  fails is generated again once with sampling (T=0.7), and if that fails too it is returned as generated, with
  "x_schema_valid": false in the choice, so the client's parser decides (the judge records a parse_error row).
- Concurrency by batching: handler threads queue requests; one worker collects up to --max-batch requests (waiting
  at most --batch-wait-ms after the first) and runs one left-padded `generate` per temperature. `batch_sizes`
  counts the batches run, by size.
- Bad requests (body not JSON, no messages, an image that is not a decodable data URL, stream=true, n>1) get a 400
  with the reason. Loopback only. The HTTP plumbing is the checker server's (judges/checker_server.py).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from ..shapes.vlm_model import BadRequest, chat_messages
from .checker_server import LoopbackServer, _Handler, _Server

RETRY_TEMPERATURE = 0.7


# ------------------------------------------------------------------------------------------ schema check
def schema_errors(value, schema: dict) -> list[str]:
    """Why `value` does not fit the JSON Schema `schema` (jsonschema's validator for the schema's draft); [] when it
    fits. A schema that is itself invalid raises jsonschema.SchemaError (check_request turns it into a 400)."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"${''.join(f'[{p}]' if isinstance(p, int) else f'.{p}' for p in e.absolute_path)}: {e.message}"
            for e in validator.iter_errors(value)]


def answer_errors(text: str, response_format: dict | None) -> list[str]:
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return []
    try:
        value = json.loads(text)
    except ValueError as exc:
        return [f"not JSON ({exc})"]
    if kind == "json_object":
        return [] if isinstance(value, dict) else ["not a JSON object"]
    return schema_errors(value, ((response_format.get("json_schema") or {}).get("schema")) or {})


def check_request(req) -> dict:
    """The parts of a chat request the engine needs; BadRequest for what it can't do."""
    if not isinstance(req, dict):
        raise BadRequest("the request body must be a JSON object")
    if req.get("stream"):
        raise BadRequest("stream=true is not supported by this server")
    if (req.get("n") or 1) != 1:
        raise BadRequest("n must be 1")
    msgs, images = chat_messages(req.get("messages"))
    fmt = req.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema")):
        raise BadRequest("response_format.type must be text, json_object or json_schema")
    if fmt and fmt.get("type") == "json_schema" and not isinstance((fmt.get("json_schema") or {}).get("schema"), dict):
        raise BadRequest("response_format json_schema needs json_schema.schema (an object)")
    if fmt and fmt.get("type") == "json_schema":
        import jsonschema

        schema = fmt["json_schema"]["schema"]
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise BadRequest(f"response_format json_schema.schema is not a valid JSON Schema: {exc.message}") from None
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or 256
    temperature = req.get("temperature")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if temperature is not None and (not isinstance(temperature, (int, float)) or temperature < 0):
        raise BadRequest(f"temperature must be a number >= 0, got {temperature!r}")
    return {"messages": msgs, "images": images, "max_tokens": max_tokens, "temperature": float(temperature or 0.0),
            "response_format": fmt, "model": req.get("model")}


# ------------------------------------------------------------------------------------------ engine
class Engine:
    """The model, and one worker thread that runs the queued requests in batches."""

    def __init__(self, model_path: str | Path, max_batch: int = 32, batch_wait_ms: float = 10.0,
                 max_tokens_cap: int = 512, threads: int | None = None, seed: int = 0) -> None:
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        if threads:
            torch.set_num_threads(threads)
        path = Path(model_path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no model folder at {model_path} (config.json missing)")
        self.model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        self.processor = AutoProcessor.from_pretrained(path)
        self.processor.tokenizer.padding_side = "left"
        self.eos = self.model.generation_config.eos_token_id
        self.pad = self.processor.tokenizer.pad_token_id
        self.max_batch, self.wait = max_batch, batch_wait_ms / 1000
        self.cap = max_tokens_cap
        self.seed = seed
        self.jobs: queue.Queue = queue.Queue()
        self.batch_sizes: Counter = Counter()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.worker = threading.Thread(target=self._loop, daemon=True)
        self.worker.start()

    def submit(self, job: dict, timeout: float = 600.0) -> dict:
        job["done"] = threading.Event()
        self.jobs.put(job)
        if not job["done"].wait(timeout):
            raise TimeoutError("the model did not answer in time")
        if "error" in job:
            raise job["error"]
        return job["result"]

    def close(self) -> None:
        self._stop.set()
        self.jobs.put(None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            first = self.jobs.get()
            if first is None:
                break
            batch, deadline = [first], time.monotonic() + self.wait
            while len(batch) < self.max_batch:
                try:
                    job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._stop.set()
                    break
                batch.append(job)
            with self.lock:
                self.batch_sizes[len(batch)] += 1
            try:
                self._run(batch)
            except Exception as exc:  # the batch fails as a whole: every waiting request gets a 500
                for job in batch:
                    job.setdefault("error", RuntimeError(f"generation failed: {type(exc).__name__}: {exc}"))
            for job in batch:
                job["done"].set()

    def _run(self, batch: list[dict]) -> None:
        by_temp: dict[float, list[dict]] = {}
        for job in batch:
            by_temp.setdefault(job["temperature"], []).append(job)
        retry = []
        for temp, jobs in by_temp.items():
            for job, out in zip(jobs, self.generate(jobs, temp)):
                job["result"] = out
                if answer_errors(out["text"], job["response_format"]):
                    retry.append(job)
        if retry:  # validated decoding: one sampled retry for answers that do not fit the schema
            for job, out in zip(retry, self.generate(retry, RETRY_TEMPERATURE)):
                prev = job["result"]
                ok = not answer_errors(out["text"], job["response_format"])
                chosen = out if ok else prev
                job["result"] = {**chosen, "schema_valid": ok, "retried": True,
                                 "completion_tokens": prev["completion_tokens"] + out["completion_tokens"]}

    def generate(self, jobs: list[dict], temperature: float) -> list[dict]:
        import torch

        proc = self.processor
        texts = [proc.apply_chat_template(j["messages"], add_generation_prompt=True, tokenize=False) for j in jobs]
        images = [img for j in jobs for img in j["images"]]
        enc = proc(text=texts, images=images or None, return_tensors="pt", padding=True)
        limit = min(self.cap, max(j["max_tokens"] for j in jobs))
        kwargs = {"do_sample": False} if temperature <= 0 else {"do_sample": True, "temperature": temperature}
        if temperature > 0:
            torch.manual_seed(self.seed)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=limit, pad_token_id=self.pad, eos_token_id=self.eos,
                                      **kwargs)
        gen = out[:, enc["input_ids"].shape[1]:].tolist()
        results = []
        for j, row, mask in zip(jobs, gen, enc["attention_mask"].tolist()):
            own = min(j["max_tokens"], self.cap)
            ended = self.eos in row[:own]
            row = row[:row.index(self.eos)] if ended else row[:own]
            results.append({"text": proc.tokenizer.decode(row, skip_special_tokens=True),
                            "finish_reason": "stop" if ended else "length", "prompt_tokens": int(sum(mask)),
                            "completion_tokens": len(row) + int(ended)})
        return results


def completion(job: dict, out: dict, model_name: str) -> dict:
    choice = {"index": 0, "finish_reason": out["finish_reason"], "logprobs": None,
              "message": {"role": "assistant", "content": out["text"], "refusal": None}}
    if (job["response_format"] or {}).get("type", "text") != "text":
        choice["x_schema_valid"] = out.get("schema_valid", True)
        choice["x_retried"] = out.get("retried", False)
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:20]}", "object": "chat.completion", "created": int(time.time()),
            "model": job.get("model") or model_name, "choices": [choice],
            "usage": {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["completion_tokens"],
                      "total_tokens": out["prompt_tokens"] + out["completion_tokens"]}}


# ------------------------------------------------------------------------------------------ HTTP
class _VLMHandler(_Handler):
    engine: Engine
    model_name: str

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": self.model_name, "object": "model"}]})
        return self._error(404, f"unknown endpoint GET {path}")

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        body = self._body()
        if path != "/v1/chat/completions":
            return self._error(404, f"unknown endpoint POST {path}")
        try:
            job = check_request(json.loads(body))
        except json.JSONDecodeError:
            return self._error(400, "request body is not JSON")
        except BadRequest as exc:
            return self._error(400, str(exc))
        try:
            out = self.engine.submit(job)
        except Exception as exc:
            return self._error(500, str(exc), "server_error")
        try:
            self._send(200, completion(job, out, self.model_name))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return None


class VLMServer(LoopbackServer):
    """`with VLMServer("data/models/shapes-vlm") as server:`; `server.base_url` is the OpenAI base URL."""

    def __init__(self, model_path: str | Path, host: str = "127.0.0.1", port: int = 0, max_batch: int = 32,
                 batch_wait_ms: float = 10.0, model_name: str | None = None, threads: int | None = None) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the VLM server binds to loopback only")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.engine = Engine(model_path, max_batch=max_batch, batch_wait_ms=batch_wait_ms, threads=threads)

        class Handler(_VLMHandler):
            pass

        Handler.engine = self.engine
        Handler.model_name = model_name or Path(model_path).name
        self.httpd = _Server((host, port), Handler)
        self.thread: threading.Thread | None = None

    @property
    def batch_sizes(self) -> dict[int, int]:
        with self.engine.lock:
            return dict(self.engine.batch_sizes)

    def close(self) -> None:
        super().close()
        self.engine.close()


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 32, batch_wait_ms: float = 10.0,
          threads: int | None = None, model_name: str | None = None) -> None:  # pragma: no cover - interactive
    server = VLMServer(model, host, port, max_batch=max_batch, batch_wait_ms=batch_wait_ms, threads=threads,
                       model_name=model_name)
    print(f"{Path(model).name} OpenAI server on {server.base_url} (batches of up to {max_batch}; Ctrl-C to stop)",
          flush=True)
    server.serve_until_interrupted()

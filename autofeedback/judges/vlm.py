"""VLM / ChatGPT-style judges over the OpenAI protocol (OpenAI, Azure, vLLM, SGLang, Ollama...).

    --judge openai:gpt-4o [--base-url URL]      key from $OPENAI_API_KEY (or --api-key-env NAME)
    --judge openai:shapes-vlm --base-url serve:data/models/shapes-vlm
                                                the stage starts serve-vlm (judges/vlm_server.py) on that folder on
                                                a loopback port, asks it over HTTP like any server, and stops it

Transport and task are apart: templates (autofeedback/templates/judges/*.yaml, package data; judges/templates.py)
say what to ask and which answer model parses the reply (judges/parsing.py); this module only moves requests.
The cache, rate limits, budget and Ctrl-C drain are judges/reliability.py; the Batch API path judges/openai_batch.py.

Reliability:
- HTTP retries: only the SDK's (max_retries, honours Retry-After), with an explicit timeout.
- A reply that arrives but doesn't parse is asked again once (tenacity); then status=parse_error
  with the raw text. Refusals and truncated replies are recorded as such. Never a default answer.
- Write-ahead cache (SQLite in the run directory): every reply is stored the moment it arrives,
  keyed by request_id, before anything else happens. A re-run, or a run resumed after kill -9,
  never pays for the same request twice. What was paid for is cached as it came: a 200 whose body is
  not JSON is a parse_error row decided from the cached body, never asked again. API errors (no answer)
  are not cached, so they are retried next run.
- A concurrency bound, client-side requests/min and tokens/min limits, and a cost budget
  (--max-cost) that stops sending cleanly: a request in flight reserves its worst-case cost until it
  answers, unsent requests become status=budget rows, retried by a later run with a larger budget.
- Ctrl-C drains: no new request starts, the ones in flight are waited for (at most --timeout) and
  cached, then the run stops; a second Ctrl-C abandons them.
- An image that does not decode is an error row naming it; the other requests go on.
- The API key (and anything shaped like a credential) is redacted from every error, cached reply and row.
- --batch: the OpenAI Batch API. Submit (the batch id is persisted in RUN/batches/), and the next
  invocation polls and collects. Requests waiting in a batch are never submitted again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..redact import redact, redact_all
from . import parsing
from .replies import (APIFailure, BadImage, attempt_from_body, describe_api_error, is_loopback,
                      mentions_response_format, sum_or_none)
from .reliability import Budget, DrainOnInterrupt, RateLimiter, ResponseCache
from .templates import DEFAULT_TEMPLATES, TASK_MODE, Template, builtin_templates  # noqa: F401 (vlm's API, as before)

# USD per 1M tokens (input, output). Override with --price-input/--price-output.
PRICES = {
    "gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60), "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40), "gpt-5": (1.25, 10.00), "gpt-5-mini": (0.25, 2.00),
}
BATCH_DISCOUNT = 0.5


# -------------------------------------------------------------------------------------- images
def data_url(png: bytes, max_side: int | None = None, fmt: str = "png", quality: int = 90) -> tuple[str, int, int]:
    """Image bytes -> (data URL with the right MIME type, width, height), resized/re-encoded on request."""
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    img.load()  # decode now: a broken image fails here, not at the server
    src_format = (img.format or "PNG").upper()
    w, h = img.size
    if (max_side and max(w, h) > max_side) or fmt.upper() not in (src_format, "JPG" if src_format == "JPEG" else ""):
        img = img.convert("RGB")
        if max_side and max(w, h) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        if fmt.lower() in ("jpeg", "jpg"):
            img.save(buf, format="JPEG", quality=quality)
            mime = "image/jpeg"
        else:
            img.save(buf, format="PNG")
            mime = "image/png"
        data = buf.getvalue()
        w, h = img.size
    else:
        data = png
        mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}.get(
            src_format, "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}", w, h


def image_tokens(w: int, h: int, detail: str | None) -> int:
    """OpenAI's vision token count for one image (used for estimates and tokens/min limits)."""
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(w, h))
    w, h = w * scale, h * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


# ---------------------------------------------------------------------------------------- judge
class OpenAIJudge:
    """`--judge openai:MODEL`. See the module docstring."""

    name = "openai"
    modes = ("pointwise", "pairwise", "listwise", "caption", "vqa")

    def __init__(self, model: str | None, cfg=None, run_dir: Path | None = None, **_ignored) -> None:
        if not model:
            raise InputError("name the model: --judge openai:MODEL (e.g. openai:gpt-4o)")
        self.model = model
        self.cfg = cfg
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.run_dir)
        self.template = Template.load(cfg.template, cfg.mode)
        self.task = self.template.task
        self.identity = f"openai:{model}"
        self.params = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "detail": cfg.detail,
                       "image_max_side": cfg.image_max_side, "image_format": cfg.image_format}
        pin, pout = PRICES.get(model, (None, None))
        self.price_in = cfg.price_input if cfg.price_input is not None else pin
        self.price_out = cfg.price_output if cfg.price_output is not None else pout
        if cfg.max_cost is not None and (self.price_in is None or self.price_out is None):
            raise InputError(f"--max-cost needs prices for {model!r}: pass --price-input and --price-output "
                             f"(USD per 1M tokens)")
        self.base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
        self.serve_model = None  # --base-url serve:FOLDER: serve-vlm on FOLDER, in-process, for this stage
        if self.base_url and self.base_url.startswith("serve:"):
            self.serve_model = self.base_url.removeprefix("serve:")
            if not (Path(self.serve_model) / "config.json").exists():
                raise InputError(f"--base-url {self.base_url}: no model folder at {self.serve_model} (no config.json)")
            if cfg.batch:
                raise InputError("--batch needs a server with the Batch API; serve: runs serve-vlm, which has none")
            self.base_url = "http://127.0.0.1/v1"  # the port is known once the server runs
        key = os.environ.get(cfg.api_key_env)
        if not key:
            if self.base_url and is_loopback(self.base_url):
                key = "not-needed-for-a-local-server"
            else:
                raise InputError(f"set the API key in the environment variable {cfg.api_key_env} "
                                 f"(keys are read from the environment only)")
        self._key = key
        self.caption_scorer = None
        self.waiting: set[str] = set()  # request_ids submitted in a batch, not collected yet
        self.stats = {"sent": 0, "reasked": 0, "cached": 0, "spent_usd": 0.0, "structured": None,
                      "batch": None}

    # -------------------------------------------------------------- public entry point
    def judge(self, units: list[dict], emit: Callable[[dict, dict], None]) -> None:
        cache = ResponseCache(self.run_dir / "cache" / "judge-replies.sqlite")
        try:
            cached = cache.get_many([u["request_id"] for u in units])
            for u in units:
                if u["request_id"] in cached:
                    self.stats["cached"] += 1
                    emit(u, self._row(u, cached[u["request_id"]]))
            todo = [u for u in units if u["request_id"] not in cached]
            if self.cfg.batch:
                self._batch(todo, cache, emit)
            elif todo:
                with self._served():
                    if asyncio.run(self._run_all(todo, cache, emit)):
                        raise KeyboardInterrupt  # Ctrl-C, after the requests in flight were drained
        finally:
            cache.close()

    @contextlib.contextmanager
    def _served(self):
        """With --base-url serve:FOLDER, the model runs behind a loopback OpenAI server while the stage asks it."""
        if not self.serve_model:
            yield
            return
        from .vlm_server import VLMServer

        with VLMServer(self.serve_model, model_name=self.model, max_batch=self.cfg.concurrency) as server:
            self.base_url = server.base_url
            yield

    # -------------------------------------------------------------- synchronous API path
    def _client(self):
        import httpx2
        import openai

        http = openai.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency),
            timeout=self.cfg.timeout)
        return openai.AsyncOpenAI(api_key=self._key, base_url=self.base_url, max_retries=self.cfg.max_retries,
                                  timeout=self.cfg.timeout, http_client=http)

    async def _run_all(self, units: list[dict], cache: ResponseCache, emit) -> bool:
        """Ask every unit; returns True when Ctrl-C stopped the run (after draining the requests in flight)."""
        client = self._client()
        sem = asyncio.Semaphore(self.cfg.concurrency)
        limiter = RateLimiter(self.cfg.rpm, self.cfg.tpm)
        budget = Budget(self.cfg.max_cost)
        structured = {"on": True, "off": False}.get(self.cfg.structured, True)
        self.stats["structured"] = structured
        state = {"structured": structured}
        sending: set[asyncio.Task] = set()  # requests on the wire: paid for once answered, so drained on Ctrl-C

        async def one(unit: dict) -> None:
            # 1. The request; an image that does not decode is an error row, and the run goes on.
            try:
                messages, est_in = self._messages(unit)
            except BadImage as exc:
                emit(unit, self._status_row(unit, "error", str(exc)))
                return
            reserve = self._cost(est_in, self.cfg.max_tokens) or 0.0
            async with sem:
                # 2. Room in the budget (requests in flight release theirs as they answer), then the rate limits.
                if not await budget.reserve(reserve):
                    emit(unit, self._status_row(unit, "budget", f"--max-cost {self.cfg.max_cost} reached; not sent"))
                    return
                actual = 0.0
                try:
                    await limiter.acquire(est_in + self.cfg.max_tokens)
                    # 3. Send; the reply is cached (write-ahead) before anything else happens.
                    sending.add(asyncio.current_task())
                    reply = self._cache_put(cache, unit["request_id"], await self._ask(client, unit, messages, state))
                    actual = sum(a.get("cost_usd") or 0.0 for a in reply["attempts"])
                    emit(unit, self._row(unit, reply))
                except APIFailure as exc:
                    emit(unit, self._status_row(unit, "api_error", str(exc), latency=exc.latency))
                finally:
                    sending.discard(asyncio.current_task())
                    budget.settle(reserve, actual)
                    self.stats["spent_usd"] = round(budget.spent, 6)

        tasks = [asyncio.ensure_future(one(u)) for u in units]
        try:
            with DrainOnInterrupt(tasks, sending, self.cfg.timeout) as drain:
                await asyncio.wait(tasks)
        finally:
            await client.close()
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return drain.interrupted

    def _cache_put(self, cache: ResponseCache, request_id: str, reply: dict) -> dict:
        """Store a reply with every secret redacted; returns the stored (redacted) reply."""
        reply = redact_all(reply, [self._key])
        cache.put(request_id, reply)
        return reply

    def _redact(self, text: str | None) -> str | None:
        return redact(text, [self._key])

    async def _ask(self, client, unit: dict, messages: list[dict], state: dict) -> dict:
        """First attempt + at most one re-ask when the reply doesn't parse (tenacity)."""
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

        attempts: list[dict] = []
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(2), reraise=True,
                                               retry=retry_if_exception_type(parsing.ParseError)):
                with attempt:
                    msgs = messages
                    if attempts:
                        self.stats["reasked"] += 1
                        last = attempts[-1]
                        msgs = messages + [
                            {"role": "assistant", "content": last["content"] or ""},
                            {"role": "user", "content": f"Your answer could not be parsed ({last['parse_error']}). "
                                                        "Reply with only the JSON object asked for."},
                        ]
                    att = await self._send(client, msgs, state)
                    attempts.append(att)
                    if (att.get("unreadable") or att["finish_reason"] == "length" or att["refusal"]
                            or parsing.looks_like_refusal(att["content"])):
                        break  # unreadable / truncated / refused: asking again would pay for the same outcome
                    try:
                        self._parse(unit, att["content"])
                    except parsing.ParseError as exc:
                        att["parse_error"] = str(exc)
                        raise
        except parsing.ParseError:
            pass
        return {"attempts": attempts, "model": self.model, "template": self.template.name}

    async def _send(self, client, messages: list[dict], state: dict) -> dict:
        import openai

        kwargs = dict(model=self.model, messages=messages, temperature=self.cfg.temperature,
                      max_tokens=self.cfg.max_tokens)
        if state["structured"]:
            kwargs["response_format"] = parsing.response_format(self.task)
        t0 = time.perf_counter()
        self.stats["sent"] += 1
        try:  # the raw reply: what was paid for is kept even when its body is not a completion
            resp = await client.chat.completions.with_raw_response.create(**kwargs)
        except openai.BadRequestError as exc:
            if state["structured"] and self.cfg.structured == "auto" and mentions_response_format(exc):
                state["structured"] = False  # the server doesn't do structured output: plain text from now on
                self.stats["structured"] = False
                return await self._send(client, messages, state)
            raise APIFailure(describe_api_error(exc), time.perf_counter() - t0) from None
        except openai.APIError as exc:
            raise APIFailure(describe_api_error(exc), time.perf_counter() - t0) from None
        return {**attempt_from_body(resp.text, self, status=resp.status_code),
                "latency_s": round(time.perf_counter() - t0, 4)}

    # -------------------------------------------------------------- batch API path
    def _batch(self, units: list[dict], cache: ResponseCache, emit) -> None:
        from .openai_batch import run_batch

        run_batch(self, units, cache, emit)

    # -------------------------------------------------------------- messages, rows
    def _messages(self, unit: dict) -> tuple[list[dict], int]:
        text = self.template.render(unit)
        content: list[dict] = [{"type": "text", "text": text}]
        tokens = len(text) // 4 + 8
        for image_id, img in zip(unit["image_ids"], unit["images"]):
            try:
                url, w, h = data_url(img, self.cfg.image_max_side, self.cfg.image_format, self.cfg.jpeg_quality)
            except Exception as exc:  # PIL raises many kinds (OSError, SyntaxError, ValueError...) for bad bytes
                raise BadImage(f"image {image_id} does not decode ({type(exc).__name__}: {exc}); not sent") from None
            part = {"type": "image_url", "image_url": {"url": url}}
            if self.cfg.detail:
                part["image_url"]["detail"] = self.cfg.detail
            content.append(part)
            tokens += image_tokens(w, h, self.cfg.detail)
        messages = []
        if self.template.system:
            messages.append({"role": "system", "content": self.template.system})
            tokens += len(self.template.system) // 4
        messages.append({"role": "user", "content": content})
        return messages, tokens

    def _cost(self, tin: int | None, tout: int | None, batch: bool = False) -> float | None:
        if self.price_in is None or self.price_out is None or tin is None or tout is None:
            return None
        cost = (tin * self.price_in + tout * self.price_out) / 1e6
        return round(cost * (BATCH_DISCOUNT if batch else 1.0), 8)

    def _parse(self, unit: dict, content: str | None):
        return parsing.parse(self.task, content, n_images=len(unit["images"]),
                             n_questions=len(unit.get("questions") or []) or None)

    def _status_row(self, unit: dict, status: str, error: str, latency: float | None = None) -> dict:
        return {"status": status, "error": self._redact(error), "latency_s": latency, "template": self.template.name}

    def _row(self, unit: dict, reply: dict) -> dict:
        """A judgments row from the (cached) raw replies: parsing is re-run here, offline."""
        attempts = reply["attempts"]
        last = attempts[-1] if attempts else {}
        row = {
            "template": self.template.name,
            "raw_response": json.dumps([next((a[k] for k in ("content", "refusal", "body") if a.get(k) is not None),
                                             None) for a in attempts]),
            "input_tokens": sum_or_none(a.get("input_tokens") for a in attempts),
            "output_tokens": sum_or_none(a.get("output_tokens") for a in attempts),
            "cost_usd": sum_or_none(a.get("cost_usd") for a in attempts),
            "latency_s": sum_or_none(a.get("latency_s") for a in attempts),
            "details": json.dumps({**unit.get("details", {}), "attempts": len(attempts),
                                   **({"batch_id": reply["batch_id"]} if reply.get("batch_id") else {})}),
        }
        if not attempts:
            return {**row, "status": "api_error", "error": "no reply"}
        if last.get("unreadable"):
            return {**row, "status": "parse_error", "error": last["unreadable"]}
        if last.get("refusal") or parsing.looks_like_refusal(last.get("content")):
            return {**row, "status": "refused", "error": last.get("refusal") or "refusal"}
        if last.get("finish_reason") == "length":
            return {**row, "status": "truncated", "error": f"answer cut at max_tokens={self.cfg.max_tokens}"}
        try:
            ans = self._parse(unit, last.get("content"))
        except parsing.ParseError as exc:
            return {**row, "status": "parse_error", "error": str(exc)}
        return {**row, **self._result(unit, ans), "status": "ok", "error": None}

    def _result(self, unit: dict, ans) -> dict:
        ids = unit["image_ids"]
        if self.task == "pointwise_binary":
            return {"label": ans.aligned, "score": float(ans.aligned), "rationale": ans.rationale}
        if self.task == "pointwise_score":
            return {"score": float(ans.score), "rationale": ans.rationale}
        if self.task == "pairwise":
            choice = {"A": ids[0], "B": ids[1], "tie": "tie"}[ans.choice]
            details = {**unit.get("details", {}), "position_choice": ans.choice}
            return {"choice": choice, "rationale": ans.rationale, "details": json.dumps(details)}
        if self.task == "listwise":
            return {"ranking": [ids[p - 1] for p in ans.ranking], "rationale": ans.rationale}
        if self.task == "caption":
            score = self._caption_similarity(ans.caption, unit["prompt"])
            return {"caption": ans.caption, "score": score}
        # vqa
        answers = [
            {"question": q, "expected": e, "answer": a, "correct": parsing.answers_match(e, a)}
            for (q, e), a in zip(unit["questions"], ans.answers)
        ]
        return {"answers": answers, "score": sum(a["correct"] for a in answers) / len(answers),
                "label": all(a["correct"] for a in answers)}

    def _caption_similarity(self, caption: str, prompt: str) -> float | None:
        if self.caption_scorer is None:
            from .captions import CaptionScorer

            self.caption_scorer = CaptionScorer()
        return self.caption_scorer.similarity(caption, prompt)

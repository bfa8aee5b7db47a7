"""The teacher client: OpenAI-compatible chat completions over async httpx.

- bounded concurrency (a semaphore of `max_concurrency`, and as many pooled connections);
- retries with exponential backoff and jitter on 429, 5xx, timeouts, dropped connections and
  unparsable bodies, waiting at least what a `Retry-After` header asks;
- a per-request deadline (`timeout_s`, connect to last byte);
- structured output with `response_format: {type: json_schema}` (vLLM ignores `guided_json`);
- token accounting from `usage`, a request/token budget, and the SQLite response cache;
- several endpoints (`base_url` a list, e.g. one vLLM server per GPU box): each request goes to the
  endpoint with the fewest requests outstanding; after `eject_after` failures in a row an endpoint
  is taken out, and put back once its health check (`GET /health`, else `/v1/models`) answers.
  The cache is keyed by the request, not the endpoint, so it is shared by all of them.

The API key is read from the environment variable named by `api_key_env` when the client is
built; it only ever goes into the Authorization header (never the cache, logs or errors).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import itertools
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.errors import PondError
from curation.settings import DEFAULT_STUDENT, no_progress
from synthesis.budget import Budget, BudgetExceeded, call_tokens_upper
from synthesis.cache import ResponseCache, request_key

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 300.0


class ServeSpec(BaseModel):
    """Have pond start a local vLLM server for this teacher (`pond teacher serve`)."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="Hugging Face model folder to serve; default: the converted "
                                                "SmolLM2-135M-Instruct in $POND_CACHE_DIR/models.")
    port: int = Field(8000, ge=1, le=65535, description="Port on 127.0.0.1 to serve on.")
    cpu_cores: str | None = Field(None, pattern=r"^(all|\d+(-\d+)?(,\d+(-\d+)?)*)$",
                                  description="CPU build only: cores to pin the server's threads to, e.g. "
                                              "`0-3`; servers sharing a machine need disjoint cores "
                                              "(default: vLLM's own choice, the same for every server, "
                                              "which keeps one core for its front end); `all`: every core, "
                                              "for a server that runs alone")
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Weights' and activations' dtype. auto: bf16 only where the device computes it "
                            "natively (CUDA with bf16, a CPU with AVX-512 BF16/AMX), else float32 (emulated bf16 "
                            "measured 8.1x slower on an AVX2-only CPU). A forced bf16 runs and warns once.")
    max_model_len: int = Field(1024, ge=256, description="Context length the server holds per request (prompt + "
                                                         "reply); a judge that reads a question, a reference and "
                                                         "two answers needs 2048 or more.")


class TeacherConfig(BaseModel):
    """An OpenAI-compatible teacher endpoint (vLLM or any hosted API)."""

    model_config = ConfigDict(extra="forbid")
    base_url: str | list[str] = Field(
        "http://127.0.0.1:8000/v1", description="Base URL of the OpenAI-compatible API (ends in /v1); a list "
                                                "spreads requests over several servers of the same model.")
    model: str = Field(DEFAULT_STUDENT, description="Model name sent in each request; part of the "
                                                            "cache key.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key "
                                                      "(the key itself is never written anywhere).")
    max_concurrency: int = Field(16, ge=1, le=1024, description="Most requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="Deadline of one HTTP request, connect to last byte.")
    max_retries: int = Field(5, ge=0, description="Retries after the first attempt on 429/5xx/timeouts/"
                                                  "dropped connections/unparsable bodies.")
    backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each retry, with jitter.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest retry delay (a Retry-After header may ask "
                                                         "for more, up to 300 s).")
    max_requests: int | None = Field(None, ge=0, description="Budget: most calls sent per step (cache hits "
                                                             "are free; a retried call counts once).")
    max_tokens: int | None = Field(None, ge=0, description="Budget: most tokens (prompt + completion) per "
                                                           "step, checked against upper bounds before sending.")
    serve: ServeSpec | None = Field(None, description="If set, pond starts a local vLLM server for this "
                                                      "teacher when none answers at base_url.")
    eject_after: int = Field(3, ge=1, description="Several endpoints: failed attempts in a row (connection "
                                                  "errors, timeouts, 5xx) after which an endpoint is taken out.")
    health_interval_s: float = Field(5.0, gt=0, description="Several endpoints: seconds between health "
                                                            "checks of an endpoint that was taken out.")

    @model_validator(mode="after")
    def _served_url(self) -> TeacherConfig:
        # `serve: {port: 8123}` alone should point the client at that port.
        if self.serve is not None and "base_url" not in self.model_fields_set:
            self.base_url = f"http://127.0.0.1:{self.serve.port}/v1"
        if isinstance(self.base_url, list):
            if not self.base_url:
                raise ValueError("base_url: give at least one URL")
            if self.serve is not None and len(self.base_url) > 1:
                raise ValueError("serve: pond starts one local server; give a single base_url with it")
            if len(self.base_url) == 1:
                self.base_url = self.base_url[0]
        return self

    @property
    def urls(self) -> list[str]:
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise TeacherError(f"environment variable {self.api_key_env} (the teacher's api_key_env) is not set")
        return key


class TeacherError(PondError, RuntimeError):
    """A call that failed for good (after its retries, or on a non-retryable answer)."""


@dataclass
class ChatRequest:
    """One chat completion call."""

    messages: list[dict]
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    schema: dict | None = None  # JSON schema for structured output
    schema_name: str = "answer"
    extra: dict[str, Any] | None = None  # server-specific sampling fields (vLLM: ignore_eos, min_tokens, ...)
    # the served model to ask, if not the config's: one vLLM server may serve a base model and
    # LoRA adapters under their own names (evaluation.generation); part of the cache key like it
    model: str | None = None

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {**(self.extra or {}), "max_tokens": self.max_tokens, "temperature": self.temperature,
                             "top_p": self.top_p, "n": self.n}
        if self.seed is not None:
            p["seed"] = self.seed
        return p

    def key(self, model: str) -> str:
        """This call's cache key when sent to a teacher serving `model` (the request's own `model`, an
        adapter on that server, wins)."""
        return request_key(self.model or model, self.messages, self.params(), self.schema)


@dataclass
class Completion:
    """A teacher answer: one text per choice, its token usage, and whether it came from the cache."""

    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    key: str
    max_tokens: int = 0

    @property
    def text(self) -> str:
        return self.texts[0]

    def truncated(self, i: int = 0) -> bool:
        return self.finish_reasons[i] == "length"

    def json(self, i: int = 0) -> Any:
        """The i-th choice parsed as JSON; ValueError says why not (usually cut off at max_tokens)."""
        try:
            return json.loads(self.texts[i])
        except json.JSONDecodeError as e:
            why = f"cut off at max_tokens={self.max_tokens}" if self.truncated(i) else f"{e.msg} at char {e.pos}"
            raise ValueError(f"teacher reply is not valid JSON ({why}): {self.texts[i][:120]!r}") from None


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def _parse_completion(data: Any) -> tuple[list[str], list[str], int, int]:
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        raise ValueError("response has no choices")
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    texts = [(c.get("message") or {}).get("content") or "" for c in choices]
    reasons = [c.get("finish_reason") or "" for c in choices]
    usage = data.get("usage") or {}
    return texts, reasons, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def new_stats() -> Counter:
    return Counter()


@dataclass
class Endpoint:
    """One server of a teacher and what the client knows about it."""

    url: str
    outstanding: int = 0  # requests sent and not yet answered
    failures: int = 0  # failed attempts in a row
    ejected: bool = False
    checked_at: float = 0.0  # last health check while ejected
    ok: int = 0
    errors: int = 0
    ejections: int = 0
    readmissions: int = 0

    @property
    def root(self) -> str:
        return self.url.rstrip("/").removesuffix("/v1")


class EndpointPool:
    """Least-outstanding-requests balancing with ejection after repeated failures.

    Kept by a TeacherSession across batches, so an endpoint found dead stays out until its
    health check passes again."""

    def __init__(self, urls: Sequence[str], eject_after: int = 3, health_interval_s: float = 5.0):
        self.endpoints = [Endpoint(u.rstrip("/")) for u in urls]
        self.eject_after = eject_after
        self.health_interval_s = health_interval_s
        self._turn = 0

    def pick(self) -> Endpoint:
        live = [e for e in self.endpoints if not e.ejected]
        if not live:  # all out: try the one that has been out longest rather than stall
            return min(self.endpoints, key=lambda e: e.checked_at)
        low = min(e.outstanding for e in live)
        ties = [e for e in live if e.outstanding == low]
        self._turn += 1
        return ties[self._turn % len(ties)]

    def due_for_check(self, now: float) -> list[Endpoint]:
        due = [e for e in self.endpoints if e.ejected and now - e.checked_at >= self.health_interval_s]
        for e in due:
            e.checked_at = now
        return due

    def failed(self, ep: Endpoint, stats: Counter) -> None:
        ep.errors += 1
        ep.failures += 1
        if not ep.ejected and ep.failures >= self.eject_after and len(self.endpoints) > 1:
            ep.ejected, ep.checked_at = True, time.monotonic()
            ep.ejections += 1
            stats["endpoint_ejections"] += 1

    def succeeded(self, ep: Endpoint) -> None:
        ep.ok += 1
        ep.failures = 0
        if ep.ejected:
            self.readmit(ep)

    def readmit(self, ep: Endpoint) -> None:
        ep.ejected, ep.failures = False, 0
        ep.readmissions += 1

    def summary(self) -> dict[str, dict[str, int]]:
        return {e.url: {"ok": e.ok, "errors": e.errors, "ejections": e.ejections, "readmissions": e.readmissions,
                        "ejected": int(e.ejected)} for e in self.endpoints}


class TeacherClient:
    """Async client for one teacher. Use within one event loop; `async with` closes it."""

    def __init__(self, config: TeacherConfig, cache: ResponseCache | None = None, *, budget: Budget | None = None,
                 stats: Counter | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 pool: EndpointPool | None = None):
        self.config = config
        self.cache = cache
        self.budget = budget or Budget(config.max_requests, config.max_tokens)
        # sent: calls that reached the network; attempts: HTTP requests incl. retries
        self.stats = stats if stats is not None else new_stats()
        self._key = config.api_key()
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        n = config.max_concurrency
        self.pool = pool or EndpointPool(config.urls, config.eject_after, config.health_interval_s)
        self._https = {e.url: httpx.AsyncClient(
            base_url=e.url, headers=headers, transport=transport, timeout=httpx.Timeout(config.timeout_s),
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
        ) for e in self.pool.endpoints}
        self._http = self._https[self.pool.endpoints[0].url]
        self._probes: set[asyncio.Task] = set()
        self._sem = asyncio.Semaphore(n)
        self._inflight: dict[str, asyncio.Future] = {}
        self._rng = random.Random()

    async def __aenter__(self) -> TeacherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for t in list(self._probes):
            t.cancel()
        for http in self._https.values():
            await http.aclose()

    async def _probe(self, ep: Endpoint) -> None:
        """Health check of an ejected endpoint; a pass puts it back."""
        http = self._https[ep.url]
        for url in (ep.root + "/health", ep.url + "/models"):
            try:
                async with asyncio.timeout(min(5.0, self.config.timeout_s)):
                    resp = await http.get(url)
            except (TimeoutError, httpx.HTTPError):
                return
            if resp.status_code == 200:
                if ep.ejected:
                    self.pool.readmit(ep)
                    self.stats["endpoint_readmissions"] += 1
                return
            if resp.status_code != 404:
                return

    def _check_ejected(self) -> None:
        for ep in self.pool.due_for_check(time.monotonic()):
            task = asyncio.get_running_loop().create_task(self._probe(ep))
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def payload(self, req: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": req.model or self.config.model, "messages": req.messages, **req.params()}
        if req.schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": req.schema_name, "schema": req.schema, "strict": True}}
        return body

    async def chat(self, messages: list[dict] | ChatRequest, **kw: Any) -> Completion:
        """One chat completion (from the cache if this exact call was answered before)."""
        req = messages if isinstance(messages, ChatRequest) else ChatRequest(messages=messages, **kw)
        key = req.key(self.config.model)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            return self._cached(Completion(*_parse_completion(hit), True, key, req.max_tokens))
        if (twin := self._inflight.get(key)) is not None:
            # the same call is already on its way (duplicate rows): share its answer, send nothing
            return self._cached(dataclasses.replace(await asyncio.shield(twin), cached=True))
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved" noise
        self._inflight[key] = fut
        try:
            result = await self._fetch(req, key)
        except BaseException as e:
            fut.set_exception(e)
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            del self._inflight[key]

    def _cached(self, c: Completion) -> Completion:
        self.stats["cache_hits"] += 1
        self.stats["cached_prompt_tokens"] += c.prompt_tokens
        self.stats["cached_completion_tokens"] += c.completion_tokens
        return c

    async def _fetch(self, req: ChatRequest, key: str) -> Completion:
        async with self._sem:
            reservation = self.budget.acquire(call_tokens_upper(req.messages, req.max_tokens, req.n))
            data = None
            try:
                self.stats["sent"] += 1
                data = await self._send(self.payload(req))
            finally:
                usage = (data or {}).get("usage") or {}
                self.budget.settle(reservation, usage.get("total_tokens") or
                                   (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0))
        texts, reasons, pt, ct = _parse_completion(data)
        if self.cache is not None:
            self.cache.put(key, req.model or self.config.model, {"messages": req.messages, "params": req.params(),
                                                    "schema": req.schema}, data)
        self.stats["ok"] += 1
        self.stats["prompt_tokens"] += pt
        self.stats["completion_tokens"] += ct
        return Completion(texts, reasons, pt, ct, False, key, req.max_tokens)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.config.backoff_max_s, self.config.backoff_s * 2 ** attempt)
        delay = backoff * self._rng.uniform(0.5, 1.0)  # jitter: callers that failed together spread out
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
        return delay

    async def _send(self, body: dict[str, Any]) -> dict:
        attempt = 0
        while True:
            retry_after = None
            self.stats["attempts"] += 1
            if len(self.pool.endpoints) > 1:
                self._check_ejected()
            ep = self.pool.pick()
            ep.outstanding += 1
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    resp = await self._https[ep.url].post("/chat/completions", json=body)
            except (TimeoutError, httpx.TimeoutException):
                err, kind = f"timed out after {self.config.timeout_s:g}s", "timeout"
            except httpx.TransportError as e:
                err, kind = f"connection error: {type(e).__name__}: {e}", "connection"
            else:
                if resp.status_code == 200:
                    try:
                        data = resp.json()
                        _parse_completion(data)
                        self.pool.succeeded(ep)
                        return data
                    except ValueError as e:  # JSONDecodeError is a ValueError
                        err, kind = f"unparsable response body ({e}): {resp.text[:200]!r}", "bad_body"
                elif resp.status_code in RETRY_STATUS:
                    err, kind = f"HTTP {resp.status_code}: {resp.text[:300]}", f"http_{resp.status_code}"
                    retry_after = _retry_after(resp)
                else:
                    self.stats["failed"] += 1
                    self.stats[f"error_http_{resp.status_code}"] += 1
                    raise TeacherError(self._scrub(f"HTTP {resp.status_code}: {resp.text[:500]}"))
            finally:
                ep.outstanding -= 1
            if kind != "http_429":  # a busy server is not a broken one
                self.pool.failed(ep, self.stats)
            self.stats[f"error_{kind}"] += 1
            if attempt >= self.config.max_retries:
                self.stats["failed"] += 1
                raise TeacherError(self._scrub(f"{err} (gave up after {attempt + 1} attempts)"))
            self.stats["retries"] += 1
            await asyncio.sleep(self._delay(attempt, retry_after))
            attempt += 1

    async def chat_many(self, requests: Sequence[ChatRequest],
                        on_done: Callable[[int, Completion | BaseException], None] | None = None
                        ) -> list[Completion | BaseException]:
        """All calls concurrently (bounded); a failed call's slot holds its exception, in order."""
        out: list[Completion | BaseException] = [None] * len(requests)  # type: ignore[list-item]

        async def one(i: int, req: ChatRequest) -> None:
            try:
                out[i] = await self.chat(req)
            except (TeacherError, BudgetExceeded, ValueError) as e:
                out[i] = e
            if on_done is not None:
                on_done(i, out[i])

        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        return out


@dataclass
class TeacherSession:
    """A teacher for synchronous code (steps): one cache, one budget and one tally across batches."""

    config: TeacherConfig
    cache: ResponseCache | None = None
    budget: Budget | None = None
    stats: Counter = field(default_factory=new_stats)
    pool: EndpointPool | None = None

    def __post_init__(self) -> None:
        if self.budget is None:
            self.budget = Budget(self.config.max_requests, self.config.max_tokens)
        if self.pool is None:
            self.pool = EndpointPool(self.config.urls, self.config.eject_after, self.config.health_interval_s)

    def run(self, requests: Sequence[ChatRequest], track: Callable[..., Iterator[Any]] | None = None,
            description: str = "teacher calls") -> list[Completion | BaseException]:
        """Send a batch and wait. `track(iterable, description, total)` (a progress bar) advances
        once per finished call, driven from the event loop itself: no second thread, so no GIL
        hand-offs per call on a busy machine."""
        if not requests:
            return []
        ticks = iter((track or no_progress)(itertools.repeat(None, len(requests)), description, len(requests)))

        async def main() -> list[Completion | BaseException]:
            async with TeacherClient(self.config, self.cache, budget=self.budget, stats=self.stats,
                                     pool=self.pool) as client:
                return await client.chat_many(requests, on_done=lambda i, r: next(ticks, None))

        result = run_sync(main())
        for _ in ticks:  # let the progress bar finish
            pass
        return result

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.stats.items()))


def run_sync(coro: Any) -> Any:
    """Run a coroutine from synchronous code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[Any] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(coro))
        except BaseException as e:  # noqa: BLE001
            err.append(e)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if err:
        raise err[0]
    return box[0]

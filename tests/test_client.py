"""The teacher client against a scripted fake server: retries, timeouts, budget, cache, secrets."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests import limits

from synthesis.budget import Budget, BudgetExceeded, call_tokens_upper
from synthesis.cache import ResponseCache, request_key
from synthesis.client import ChatRequest, TeacherClient, TeacherConfig, TeacherError, TeacherSession


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def call(config: TeacherConfig, req: ChatRequest, cache: ResponseCache | None = None):
    async def main():
        async with TeacherClient(config, cache) as client:
            try:
                return await client.chat(req), client.stats
            except Exception as e:  # noqa: BLE001
                return e, client.stats

    return asyncio.run(main())


def test_chat_usage_and_payload(fake_teacher):
    result, stats = call(fake_teacher.config(), ChatRequest(msgs("hello there"), max_tokens=12, n=3, seed=7))
    assert len(result.texts) == 3 and all("hello there" in t for t in result.texts)
    assert result.prompt_tokens == 7 and result.completion_tokens == sum(len(t.split()) for t in result.texts)
    body = fake_teacher.bodies[0]
    assert body["model"] == "fake" and body["n"] == 3 and body["seed"] == 7 and body["max_tokens"] == 12
    assert "response_format" not in body and "guided_json" not in body
    assert stats["sent"] == 1 and stats["completion_tokens"] == result.completion_tokens


def test_json_schema_request(fake_teacher):
    schema = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
              "required": ["score"], "additionalProperties": False}
    result, _ = call(fake_teacher.config(), ChatRequest(msgs("rate"), schema=schema, schema_name="rating"))
    fmt = fake_teacher.bodies[0]["response_format"]
    assert fmt == {"type": "json_schema", "json_schema": {"name": "rating", "schema": schema, "strict": True}}
    assert 1 <= result.json()["score"] <= 10


@pytest.mark.parametrize("fault", ["500", "drop", "badjson", "429"])
def test_transient_faults_are_retried(fake_teacher, fault):
    fake_teacher.script = [fault, fault]
    fake_teacher.retry_after = "0"
    result, stats = call(fake_teacher.config(), ChatRequest(msgs("retry me")))
    assert not isinstance(result, Exception), result
    assert len(fake_teacher.bodies) == 3 and stats["retries"] == 2 and stats["sent"] == 1


def test_retry_after_is_honoured(fake_teacher):
    fake_teacher.script = ["429"]
    fake_teacher.retry_after = "1"
    result, _ = call(fake_teacher.config(backoff_s=0.01), ChatRequest(msgs("wait")))
    assert not isinstance(result, Exception)
    (_, t429), (_, t_ok) = fake_teacher.fault_times
    assert t_ok - t429 >= 0.95  # waited what the header asked, not the 10 ms backoff


def test_timeout_then_success(fake_teacher):
    fake_teacher.script = ["slow"]
    fake_teacher.slow_s = limits.FAKE_HELD_REPLY_S
    t0 = time.monotonic()
    result, stats = call(fake_teacher.config(timeout_s=limits.FAKE_CLIENT_DEADLINE_S), ChatRequest(msgs("slowly")))
    assert not isinstance(result, Exception)
    # the held reply was given up on (the retry answered), not waited for
    assert stats["error_timeout"] == 1 and time.monotonic() - t0 < limits.FAKE_HELD_REPLY_S


def test_gives_up_after_retries(fake_teacher):
    fake_teacher.rule = lambda body: "500"
    result, stats = call(fake_teacher.config(max_retries=2), ChatRequest(msgs("doomed")))
    assert isinstance(result, TeacherError) and "HTTP 500" in str(result) and "3 attempts" in str(result)
    assert len(fake_teacher.bodies) == 3 and stats["failed"] == 1


def test_client_errors_are_not_retried(fake_teacher):
    fake_teacher.rule = lambda body: "400"
    result, _ = call(fake_teacher.config(max_retries=5), ChatRequest(msgs("bad")))
    assert isinstance(result, TeacherError) and "HTTP 400" in str(result)
    assert len(fake_teacher.bodies) == 1


def test_concurrency_is_bounded(fake_teacher):
    fake_teacher.rule = lambda body: "sleep:0.15"
    session = TeacherSession(fake_teacher.config(max_concurrency=3))
    results = session.run([ChatRequest(msgs(f"q{i}")) for i in range(12)])
    assert all(not isinstance(r, Exception) for r in results)
    assert fake_teacher.max_in_flight == 3
    # results stay in request order
    assert [r.text for r in results] == [f"answer 0 to: q{i}" for i in range(12)]


def test_cache_makes_rerun_free(fake_teacher, tmp_path):
    reqs = [ChatRequest(msgs(f"question {i}"), seed=i) for i in range(5)]
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        first = TeacherSession(fake_teacher.config(), cache).run(reqs)
    assert len(fake_teacher.bodies) == 5 and not any(r.cached for r in first)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        session = TeacherSession(fake_teacher.config(), cache)
        again = session.run(reqs)
    assert len(fake_teacher.bodies) == 5  # nothing sent
    assert all(r.cached for r in again) and [r.texts for r in again] == [r.texts for r in first]
    assert session.stats["cache_hits"] == 5 and session.stats["sent"] == 0
    # any change in sampling parameters is a different call
    key = request_key("m", msgs("a"), {"temperature": 0.7}, None)
    assert key != request_key("m", msgs("a"), {"temperature": 0.8}, None)
    assert key != request_key("m", msgs("a"), {"temperature": 0.7}, {"type": "object"})
    assert key == request_key("m", msgs("a"), {"temperature": 0.7}, None)


def test_budget_max_requests(fake_teacher):
    session = TeacherSession(fake_teacher.config(max_requests=3, max_concurrency=1))
    results = session.run([ChatRequest(msgs(f"q{i}")) for i in range(5)])
    assert [isinstance(r, BudgetExceeded) for r in results] == [False, False, False, True, True]
    assert len(fake_teacher.bodies) == 3


def test_budget_max_tokens_is_never_exceeded(fake_teacher):
    reqs = [ChatRequest(msgs(f"question number {i}"), max_tokens=50) for i in range(10)]
    upper = call_tokens_upper(reqs[0].messages, 50)
    budget = upper * 3 + upper // 2
    session = TeacherSession(fake_teacher.config(max_tokens=budget, max_concurrency=4))
    results = session.run(reqs)
    ok = [r for r in results if not isinstance(r, Exception)]
    assert 3 <= len(ok) < 10 and len(fake_teacher.bodies) == len(ok)
    assert sum(r.prompt_tokens + r.completion_tokens for r in ok) <= budget
    assert all(isinstance(r, BudgetExceeded) for r in results[len(ok):])


def test_budget_unit():
    b = Budget(max_tokens=100)
    r = b.acquire(60)
    with pytest.raises(BudgetExceeded):
        b.acquire(60)  # 60 in flight + 60 > 100
    b.settle(r, 10)
    assert b.tokens == 10


def test_api_key_from_env_never_stored(fake_teacher, tmp_path, monkeypatch):
    secret = "sk-test-6c1f0e99d2"
    monkeypatch.setenv("POND_TEST_KEY", secret)
    config = fake_teacher.config(api_key_env="POND_TEST_KEY", max_retries=0)
    assert secret not in config.model_dump_json()
    fake_teacher.rule = lambda body: "400" if "bad" in body["messages"][0]["content"] else "ok"
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        results = TeacherSession(config, cache).run([ChatRequest(msgs("good")), ChatRequest(msgs("bad"))])
    assert fake_teacher.bodies[0]["_auth"] == f"Bearer {secret}"
    assert secret not in str(results[1])
    assert all(secret.encode() not in p.read_bytes() for p in tmp_path.iterdir())
    monkeypatch.delenv("POND_TEST_KEY")
    with pytest.raises(TeacherError, match="POND_TEST_KEY"):
        TeacherSession(config).run([ChatRequest(msgs("x"))])


def test_server_killed_mid_run_then_restarted(fake_teacher, tmp_path):
    """Half the calls are answered, the server dies; the rerun after a restart sends only the rest."""
    fake_teacher.rule = lambda body: "sleep:0.05"
    reqs = [ChatRequest(msgs(f"item {i}"), seed=i) for i in range(16)]
    config = fake_teacher.config(max_concurrency=2, max_retries=1, timeout_s=limits.FAKE_REQUEST_S)
    done: list = []

    def killer(items, description, total):
        for i in items:
            done.append(i)
            if len(done) == 6:
                fake_teacher.stop()
            yield i

    with ResponseCache(tmp_path / "c.sqlite") as cache:
        first = TeacherSession(config, cache).run(reqs, track=killer)
    ok_first = [i for i, r in enumerate(first) if not isinstance(r, Exception)]
    assert 6 <= len(ok_first) < 16
    assert all(isinstance(first[i], TeacherError) for i in range(16) if i not in ok_first)

    fake_teacher.start()
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        session = TeacherSession(config, cache)
        second = session.run(reqs)
    assert all(not isinstance(r, Exception) for r in second)
    assert session.stats["cache_hits"] == len(ok_first)
    assert max(fake_teacher.served.values()) == 1 and len(fake_teacher.served) == 16  # no call answered twice
    assert [second[i].texts for i in ok_first] == [first[i].texts for i in ok_first]


def test_serve_spec_points_the_client_at_its_port():
    assert TeacherConfig(serve={"port": 8123}).base_url == "http://127.0.0.1:8123/v1"
    assert TeacherConfig(base_url="http://gpu:9000/v1", serve={"port": 8123}).base_url == "http://gpu:9000/v1"
    with pytest.raises(ValueError, match="api_keyenv"):
        TeacherConfig(api_keyenv="X")  # unknown keys are errors


def test_server_refuses_a_busy_port_and_a_missing_model(fake_teacher, tmp_path):
    from synthesis import server

    model = tmp_path / "model"
    with pytest.raises(server.TeacherServerError, match="not a model folder"):
        server.serve(model, fake_teacher.port, tmp_path)
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(server.TeacherServerError, match="already in use"):
        server.serve(model, fake_teacher.port, tmp_path)
    assert server.stop(fake_teacher.port, tmp_path) is False  # nothing of ours runs there
    cmd = server.server_command(server.Path("/py"), model, 8001, "m")
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and "--enforce-eager" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--max-model-len") + 1] == "1024"
    env = server.server_env(cpu=True)
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["HF_HUB_OFFLINE"] == "1"
    assert server.server_env(cpu=True, cpu_cores="2-3")["VLLM_CPU_OMP_THREADS_BIND"] == "2-3"


def test_serve_spec_cpu_cores():
    from pydantic import ValidationError

    from synthesis.client import ServeSpec

    assert ServeSpec(cpu_cores="0-3,8").cpu_cores == "0-3,8" and ServeSpec().cpu_cores is None
    assert ServeSpec(cpu_cores="all").cpu_cores == "all"
    for bad in ("every", "0-", "a,1"):
        with pytest.raises(ValidationError):
            ServeSpec(cpu_cores=bad)


def test_cpu_cores_all_binds_every_core_of_this_process():
    import os

    from synthesis.server import server_env

    env = server_env(cpu=True, cpu_cores="all")
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    assert "VLLM_CPU_OMP_THREADS_BIND" not in server_env(cpu=True, cpu_cores=None) or \
        os.environ.get("VLLM_CPU_OMP_THREADS_BIND")


def test_model_names_resolve_in_the_cache(tmp_path):
    from synthesis import server

    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text("{}")
    assert server.resolve_model("tiny", tmp_path) == tmp_path / "models" / "tiny"
    assert server.resolve_model(None, tmp_path) == tmp_path / "models" / "smollm2-135m-instruct"
    assert server.resolve_model(str(tmp_path / "models" / "tiny"), None) == tmp_path / "models" / "tiny"
    with pytest.raises(server.TeacherServerError, match="not a model folder"):
        server.serve("missing-model", 1, tmp_path, cache_dir=tmp_path)


def test_identical_calls_in_flight_are_sent_once(fake_teacher):
    fake_teacher.rule = lambda body: "sleep:0.1"
    session = TeacherSession(fake_teacher.config(max_concurrency=4))
    results = session.run([ChatRequest(msgs("hi"), seed=0)] * 3 + [ChatRequest(msgs("hi"), seed=1)])
    assert len(fake_teacher.bodies) == 2  # three identical calls, one sent; a different seed is another call
    assert [r.cached for r in results] == [False, True, True, False]
    assert results[0].texts == results[1].texts and session.stats["cache_hits"] == 2


def test_progress_ticks_once_per_call(fake_teacher):
    seen: dict = {"ticks": 0}

    def track(items, description, total):
        seen.update(description=description, total=total)
        for item in items:
            seen["ticks"] += 1
            yield item
        seen["finished"] = True

    TeacherSession(fake_teacher.config()).run([ChatRequest(msgs(f"q{i}")) for i in range(7)], track, "writing")
    assert seen == {"ticks": 7, "description": "writing", "total": 7, "finished": True}


def _dummy_server(tmp_path, port: int, owner: str):
    """A process that looks like our vLLM server (its command line names the entry point) and the
    PID file a server pond started would leave."""
    import json as _json
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "vllm.entrypoints.openai.api_server"],
                            start_new_session=True)
    # Popen may return (vfork) before the kernel has set the new program's argv: /proc/PID/cmdline reads
    # empty for that moment, which a busy machine stretches. A real leftover server is long past it.
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + limits.FAKE_REQUEST_S
    while b"vllm.entrypoints" not in cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "teacher").mkdir(exist_ok=True)
    (tmp_path / "teacher" / f"{port}.pid").write_text(_json.dumps({"pid": proc.pid, "port": port, "model": "fake",
                                                                    "owner": owner, "dtype": "float32"}))
    return proc


@pytest.mark.parametrize("owner, adopted", [("run", True), ("cli", False)])
def test_a_rerun_adopts_the_server_a_killed_run_started(fake_teacher, tmp_path, owner, adopted):
    """`pond run` killed with SIGKILL leaves its vLLM server running; the rerun must use it and stop
    it at the end, but never stop one a user started with `pond teacher serve`."""
    from synthesis import server
    from synthesis.client import TeacherConfig

    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "config.json").write_text("{}")
    proc = _dummy_server(tmp_path, fake_teacher.port, owner)
    try:
        config = TeacherConfig(model="fake", serve={"port": fake_teacher.port, "model": str(tmp_path / "models" / "m")})
        assert server.adoptable(fake_teacher.port, "fake", cache_dir=tmp_path) is adopted
        with server.running_teacher(config, cache_dir=tmp_path, log=lambda m: None) as handle:
            assert (handle is not None) is adopted
            if adopted:
                assert handle.pid == proc.pid and handle.dtype == "float32"
        proc.wait(timeout=limits.FAKE_REQUEST_S) if adopted else None
        assert (proc.poll() is not None) is adopted
        assert (tmp_path / "teacher" / f"{fake_teacher.port}.pid").exists() is not adopted
    finally:
        proc.kill()
        proc.wait()

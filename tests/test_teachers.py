"""synthesis.teachers: one handle gives steps and evaluation a ready teacher, served exactly while
something needs it."""
from __future__ import annotations

import contextlib

import pytest

from curation.errors import ConfigError, PondError
from synthesis.client import ChatRequest, TeacherConfig
from synthesis.teachers import Teachers


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


def _configs(remote_url: str = "http://127.0.0.1:9/v1"):
    return {"writer": {"model": "writer", "serve": {"port": 8101}},
            "judge": {"model": "judge", "serve": {"port": 8102}},
            "remote": {"model": "remote", "base_url": remote_url}}


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


def test_a_session_is_a_ready_client_and_stops_what_it_started(events, fake_teacher, tmp_path):
    t = Teachers({**_configs(), "fake": fake_teacher.config()}, tmp_path)
    with t.session("fake", tmp_path / "cache.sqlite") as teacher:
        [reply] = teacher.run([ChatRequest([{"role": "user", "content": "hello there"}], max_tokens=8)])
    assert "hello there" in reply.texts[0] and fake_teacher.chat_requests() == 1
    with t.session("fake", tmp_path / "cache.sqlite") as teacher:  # the same call again: from the cache
        teacher.run([ChatRequest([{"role": "user", "content": "hello there"}], max_tokens=8)])
    assert fake_teacher.chat_requests() == 1
    with t.session("judge"):
        assert events == ["start judge"]
    assert events == ["start judge", "stop judge"]


def test_a_teacher_the_recipe_does_not_define_is_one_line_naming_those_it_does(tmp_path):
    t = Teachers(_configs(), tmp_path)
    with pytest.raises(ConfigError, match=r"'nope' is not defined .*\(defined: judge, remote, writer\)") as err:
        with t.session("nope"):
            pass
    assert isinstance(err.value, PondError)
    assert isinstance(t.config("writer"), TeacherConfig)

"""docs/architecture.md's worked examples: a new row-wise step is one file plus one line in the
step table, and it runs on both executors with the same rows and reasons (tests/test_ray_executor.py); a new step that asks a
teacher is one file plus one line too, and the recipe checks its teacher and the runner serves it."""
from __future__ import annotations

import contextlib
import json

import polars as pl
import pytest

from curation.errors import PondError
from curation.step import StepContext
from pond.recipe import RecipeError, parse_recipe
from pond.runner import Runner
from pond.steps import ROWWISE, STEPS, StepSpec
from tests.example_step import MaxCharsOptions, max_chars

# the one line a new step adds to pond.steps.STEPS
MAX_CHARS = StepSpec("tests.example_step", "max_chars", "MaxCharsOptions",
                     "drop rows whose text is longer than max_chars", ROWWISE)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(STEPS, "max_chars", MAX_CHARS)


def test_the_step_function_alone():
    df = pl.DataFrame({"id": ["a", "b", "c"], "text": ["short", "x" * 50, None]})
    kept, rejected = max_chars(df, MaxCharsOptions(max_chars=10), ctx := StepContext())
    assert kept["id"].to_list() == ["a", "c"]
    assert rejected.select("id", "stage", "reason").rows() == [("b", "max_chars", "too_long")]
    assert ctx.stats == {"too_long": 1}


# its run on both executors is in tests/test_ray_executor.py (one Ray cluster for the session's Ray tests)


# -- a step that asks a teacher: one file (tests/example_step.py's `title`) and one line -------------------

# the one line it adds to pond.steps.STEPS: local (its rows go to the teacher together), no trait needed
TITLE = StepSpec("tests.example_step", "title", "TitleOptions", "the teacher writes a short title for each row")


@pytest.fixture
def title_registered(monkeypatch):
    monkeypatch.setitem(STEPS, "title", TITLE)


def _title_recipe(teacher: str, port: int) -> str:
    # `serve:` makes the teacher one pond runs while a step needs it; here the fake already answers on
    # that port, so pond uses it as it would a server someone else started
    return (f"name: titles\ninput: {{path: rows.jsonl}}\nsteps:\n  - title: {{teacher: {teacher}}}\n"
            f"teachers:\n  writer: {{model: fake, serve: {{port: {port}}}, max_retries: 0}}\n")


def test_the_recipe_checks_the_teacher_a_new_step_names(title_registered):
    with pytest.raises(RecipeError, match=r"r.yaml:4: steps\[0\]\.title\.teacher: unknown teacher 'editor'"):
        parse_recipe(_title_recipe("editor", 8000), "r.yaml")
    assert parse_recipe(_title_recipe("writer", 8000), "r.yaml").steps[0].options.teacher_needed() == "writer"


def test_the_runner_serves_the_teacher_while_the_new_step_asks_it(tmp_path, title_registered, fake_teacher,
                                                                    short_chats, monkeypatch):
    from synthesis import server

    events, running = [], server.running_teacher

    @contextlib.contextmanager
    def watched(config, **kw):
        events.append(("start", config.model, len(fake_teacher.bodies)))
        with running(config, **kw) as handle:
            yield handle
        events.append(("stop", config.model, len(fake_teacher.bodies)))

    monkeypatch.setattr(server, "running_teacher", watched)
    short_chats.select("messages").write_ndjson(tmp_path / "rows.jsonl")
    runner = Runner(parse_recipe(_title_recipe("writer", fake_teacher.port), "r.yaml"), tmp_path / "run", tmp_path,
                    cache_dir=tmp_path / "cache")
    runner.curate()
    kept = pl.read_parquet(tmp_path / "run" / "steps" / "01-title" / "kept.parquet")
    assert events == [("start", "fake", 0), ("stop", "fake", len(short_chats))]  # up for the step, then stopped
    assert len(kept) == len(short_chats) and all(t.startswith("answer 0 to: A title") for t in kept["title"])
    stats = json.loads((tmp_path / "run" / "steps" / "01-title" / "stats.json").read_text())
    assert stats["titled"] == len(short_chats) and stats["teacher"]["sent"] == len(short_chats)


def test_the_runner_starts_a_served_teacher_before_ingest_and_a_rerun_starts_none(tmp_path, title_registered,
                                                                                   fake_teacher, short_chats,
                                                                                   monkeypatch):
    """The first step still to run that needs a served teacher has it started (without waiting) before ingest,
    so that its start-up overlaps the steps before it; the step then adopts it. A rerun, the step done, starts
    nothing ahead; a run that fails before the step stops the server it started."""
    from synthesis import server

    events, out = [], {"run": tmp_path / "run"}

    class Handle:
        def stop(self):
            events.append("stopped early start")

    def prestart(config, **kw):
        events.append(("prestart", config.model, (out["run"] / "steps" / "00-ingest").exists()))
        return Handle()

    monkeypatch.setattr(server, "prestart", prestart)
    short_chats.select("messages").write_ndjson(tmp_path / "rows.jsonl")
    recipe = parse_recipe(_title_recipe("writer", fake_teacher.port), "r.yaml")
    Runner(recipe, tmp_path / "run", tmp_path, cache_dir=tmp_path / "cache").curate()
    assert events == [("prestart", "fake", False)]  # before ingest; the step took it over (not stopped early)
    Runner(recipe, tmp_path / "run", tmp_path, cache_dir=tmp_path / "cache").curate()
    assert events == [("prestart", "fake", False)]  # the rerun: the step is done, nothing started ahead
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    broken = parse_recipe(_title_recipe("writer", fake_teacher.port).replace("rows.jsonl", "broken.jsonl"), "r.yaml")
    out["run"] = tmp_path / "broken-run"
    with pytest.raises(PondError, match="broken.jsonl"):
        Runner(broken, out["run"], tmp_path, cache_dir=tmp_path / "cache").curate()
    assert events[1:] == [("prestart", "fake", False), "stopped early start"]

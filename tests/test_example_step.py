"""docs/architecture.md's worked example: a new row-wise step is one file plus one line in the
step table, and it runs on both executors with the same rows and reasons."""
from __future__ import annotations

import json

import polars as pl
import pytest

from curation.step import StepContext
from pond.steps import ROWWISE, STEPS, StepSpec
from tests import limits
from tests.example_step import MaxCharsOptions, max_chars
from tests.test_ray_executor import assert_same, ray_cluster, run_both  # noqa: F401 (ray_cluster: a fixture)

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


@pytest.mark.timeout(limits.RAY_STALL_S)
def test_runs_locally_and_on_ray_with_the_same_rows(tmp_path, registered, ray_cluster):
    local, ray_run = run_both(tmp_path, "  - max_chars: {max_chars: 300}\n", rows=900, base_limit=600)
    assert_same(local, ray_run)
    stats = json.loads((ray_run / "steps" / "01-max_chars" / "stats.json").read_text())
    assert stats["executor"] == "ray" and stats["rejected"] > 0 and stats["too_long"] == stats["rejected"]
    assert (ray_run / "steps" / "01-max_chars" / "kept.parquet").is_dir()  # sharded by the workers

"""A `pond update` killed with SIGKILL while its teacher step runs resumes, and no teacher request
whose answer pond had received is sent again (issue 20).

The teacher is the fake OpenAI-compatible server (tests/fixtures_teacher.py) at concurrency 1 and
0.15 s per answer, so the kill lands inside the drop's `synthesize` step; the answers already received
are in the run's teacher cache, which the drop shares. At most one request was in flight at the kill
(its answer never arrived), so it alone may be sent twice.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from pond import layout
from pond.pipeline import run_pipeline
from pond.recipe import parse_recipe

RECIPE = """\
name: kill
input: {{path: base.jsonl}}
seed: 0
steps:
  - exact_dedup: {{}}
  - synthesize: {{generator: respond, n: 24, teacher: fake, replace: false}}
teachers:
  fake: {{base_url: "{url}", model: fake, max_concurrency: 1, backoff_s: 0.01, backoff_max_s: 0.05}}
"""
ROOT = Path(__file__).resolve().parent.parent


def _write(path: Path, df: pl.DataFrame) -> Path:
    with open(path, "w") as f:
        for m in df["messages"].to_list():
            f.write(json.dumps({"messages": m}) + "\n")
    return path


def _update(run: Path, drop: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pond.cli", "update", str(run), "--input", str(drop)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # ~16 s, with the other kill tests (make test-slow)
def test_killed_update_resumes_without_sending_a_request_twice(tmp_path, fake_teacher, sharegpt_df):
    fake_teacher.rule = lambda body: "sleep:0.15"
    rows = sharegpt_df.filter(pl.col("messages").list.len() >= 2)
    _write(tmp_path / "base.jsonl", rows.head(60))
    drop = _write(tmp_path / "drop.jsonl", rows.slice(60, 60))
    recipe = parse_recipe(RECIPE.format(url=fake_teacher.base_url))
    run = tmp_path / "run"
    run_pipeline(recipe, run, tmp_path, train=False)
    before = fake_teacher.chat_requests()
    assert before == 24

    proc = _update(run, drop)
    deadline = time.monotonic() + 180
    while fake_teacher.chat_requests() < before + 8:  # a third of the drop's requests answered
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the update never reached its teacher step"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (layout.drop_dir(run, 1) / layout.DONE).exists()
    sent_before_kill = fake_teacher.chat_requests() - before

    rerun = _update(run, drop)
    out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, out
    assert (layout.drop_dir(run, 1) / layout.DONE).exists()
    drop_bodies = fake_teacher.bodies[before:]
    keys = [fake_teacher.content_key(b) for b in drop_bodies]
    assert len(set(keys)) == 24  # every drop row asked for, once each ...
    assert len(keys) - len(set(keys)) <= 1  # ... but the one in flight at the kill
    assert sent_before_kill >= 8 and len(keys) <= 25
    stats = json.loads((layout.drop_dir(run, 1) / "steps" / "02-synthesize" / layout.STATS).read_text())
    assert stats["teacher"]["cache_hits"] >= sent_before_kill - 1  # the resumed step read them from the cache
    curated = pl.read_parquet(run / layout.CURATED)
    lineage = pl.read_parquet(run / layout.LINEAGE)
    assert lineage.filter(pl.col("drop") == 1).height == stats["out"]
    assert curated.height == lineage.height

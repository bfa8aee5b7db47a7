"""`pond update` compares a drop with the keys each generation kept, not the pond's rows (issue 30):
the same verdicts as the dedup steps given the pond's rows, no read of the pond's rows, and no keys
of another recipe or generation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curation.step import StepContext
from pond import generation_keys, layout
from pond.steps import STEPS
from pond.update import keep_generation, pond_reference, run_recipe, update
from pond.pipeline import run_pipeline
from pond.recipe import parse_recipe
from tests.test_update import RECIPE, base_run, conversations, near_copy, write_jsonl

TIMES = {"signature_seconds", "candidate_seconds", "verify_seconds", "cluster_seconds", "verified_here"}


@pytest.fixture()
def pond(tmp_path, sharegpt_df):
    rows = conversations(sharegpt_df.filter(pl.col("messages").list.len() >= 2).head(260))
    long_enough = [r for r in rows if len(r["messages"][-1]["content"].split()) >= 30]
    base, new = rows[:170], rows[170:]
    write_jsonl(tmp_path / "a.jsonl", base)
    return tmp_path, base, new, long_enough


def keyed_steps(run: Path):
    return [(i, s) for i, s in enumerate(run_recipe(run).steps, start=1)
            if generation_keys.keyed_form(s.kind) is not None]


def assert_same_as_with_rows(run: Path, drop: Path) -> None:
    """Each keyed dedup step of the drop (the newest generation) gave what the step gives with the pond's rows."""
    recipe = run_recipe(run)
    for index, step in keyed_steps(run):
        this, prev = generation_keys.step_folders(drop, index, step)
        ctx = StepContext(seed=recipe.seed, reference=pond_reference(run, drop, index, step))
        kept, rejected = STEPS[step.kind].load()[1](pl.read_parquet(prev / layout.KEPT), step.options, ctx)
        assert_frame_equal(pl.read_parquet(this / layout.KEPT), kept)
        assert_frame_equal(pl.read_parquet(this / layout.REJECTED), rejected)
        stats = layout.read_json(this / layout.STATS)
        assert {k: v for k, v in stats.items() if k in ctx.stats and k not in TIMES} == \
            {k: v for k, v in ctx.stats.items() if k not in TIMES}
        assert rejected.height > 0  # the drop met the pond here
        assert len(list(this.glob("keys-*.parquet"))) == 1  # the drop keeps its own keys


def test_verdicts_equal_the_steps_given_the_ponds_rows(pond):
    tmp, base, new, long_enough = pond
    run = base_run(tmp, ["a.jsonl"], holdout=True)
    held = pl.read_parquet(run / layout.HELDOUT)
    # new rows, exact and near copies of pond rows, held-out rows again, and rows repeated in the drop
    drop_rows = new + base[:6] + [near_copy(r) for r in long_enough[6:12]] + conversations(held.head(3)) + new[:2]
    write_jsonl(tmp / "b.jsonl", drop_rows)
    update(run, [tmp / "b.jsonl"])
    assert_same_as_with_rows(run, layout.drop_dir(run, 1))
    # the next drop: near copies of the first drop's rows and of the run's
    write_jsonl(tmp / "c.jsonl", [near_copy(r) for r in new[:5]] + [near_copy(r) for r in long_enough[12:16]]
                + base[10:12])
    update(run, [tmp / "c.jsonl"])
    assert_same_as_with_rows(run, layout.drop_dir(run, 2))


def test_an_update_never_reads_the_ponds_rows(pond):
    tmp, base, new, _ = pond
    run = base_run(tmp, ["a.jsonl"])
    expected = base_run(tmp, ["a.jsonl"], out="expected")
    write_jsonl(tmp / "b.jsonl", new + base[:5])  # exact copies need keys only, no text
    update(expected, [tmp / "b.jsonl"])
    keep_generation(run)  # what `pond run` would keep
    # every row the run's steps took in, the drift report's compared stage among them, gone (only the
    # curated rows stay: curated.parquet is rewritten as the union)
    hidden = [d / layout.KEPT for d in layout.step_dirs(run)[:-1]]
    for path in hidden:
        path.rename(path.with_suffix(".hidden"))
    try:
        update(run, [tmp / "b.jsonl"])
    finally:
        for path in hidden:
            path.with_suffix(".hidden").rename(path)
    assert_frame_equal(pl.read_parquet(run / layout.CURATED), pl.read_parquet(expected / layout.CURATED))
    drift = layout.read_json(layout.drop_dir(run, 1) / layout.DRIFT)
    again = layout.read_json(layout.drop_dir(expected, 1) / layout.DRIFT)
    assert drift == again  # the drift report from the kept samples is the one from the rows


def test_keys_of_another_recipe_or_generation_are_not_read(pond):
    tmp, base, new, long_enough = pond
    run = base_run(tmp, ["a.jsonl"])
    other = tmp / "other"
    other.mkdir()
    text = RECIPE.format(inputs='["a.jsonl"]', holdout="").replace("threshold: 0.7", "threshold: 0.7, num_perm: 64")
    shutil.copy(tmp / "a.jsonl", other / "a.jsonl")
    run_pipeline(parse_recipe(text), other / "run", other, train=False)
    keep_generation(other / "run")
    # the other recipe's keys, put where this run's step folders keep theirs
    for d in layout.step_dirs(other / "run"):
        for f in d.glob("keys-*.parquet"):
            shutil.copy(f, layout.step_dir(run, d.name) / f.name)
    expected = base_run(tmp, ["a.jsonl"], out="expected")
    write_jsonl(tmp / "b.jsonl", new + [near_copy(r) for r in long_enough[:6]])
    update(expected, [tmp / "b.jsonl"])
    update(run, [tmp / "b.jsonl"])
    assert_frame_equal(pl.read_parquet(run / layout.CURATED), pl.read_parquet(expected / layout.CURATED))
    for index, step in keyed_steps(run):
        this = generation_keys.step_folders(run, index, step)[0]
        own = generation_keys.keys_file(this, step, 0)
        assert own.exists() and len(list(this.glob("keys-*.parquet"))) == 2  # its own, beside the other's
        # a generation's keys are filed under its own fingerprint: the drop's name differs from the run's
        drop_own = generation_keys.keys_file(generation_keys.step_folders(layout.drop_dir(run, 1), index, step)[0],
                                             step, 0)
        assert drop_own.exists() and drop_own.name != own.name
    assert json.loads((layout.drop_dir(run, 1) / layout.DRIFT).read_text())["drop_rows"] > 0

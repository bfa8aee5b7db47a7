"""The runner: run directory layout, resume, determinism, conservation, atomicity, CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pond.recipe import parse_recipe
from curation.store import file_digest
from pond.runner import Runner, StepFailed, write_manifest

RECIPE = """\
name: t
input: {{path: raw}}
seed: {seed}
steps:
  - holdout: {{n: 3}}
  - exact_dedup: {{lowercase: {lower}}}
"""


@pytest.fixture()
def workdir(tmp_path, sharegpt_df):
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [{"messages": m, "label": i % 3} for i, m in enumerate(sharegpt_df["messages"].head(60).to_list())]
    rows += rows[:10]  # exact duplicates
    rows[5] = {"messages": [{"role": "user", "content": rows[5]["messages"][0]["content"].upper()}]} | {"label": 9}
    with open(raw / "a.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write("{bad line\n")
    (raw / "b.jsonl").write_text(json.dumps({"prompt": "p", "response": "r", "label": 1}) + "\n")
    return tmp_path


def run(workdir: Path, out: str = "run", seed: int = 0, lower: str = "true", **kw) -> Runner:
    recipe = parse_recipe(RECIPE.format(seed=seed, lower=lower), "r.yaml")
    runner = Runner(recipe, workdir / out, workdir, **kw)
    runner.curate()
    write_manifest(runner)
    return runner


def test_run_directory_is_complete_and_counts_conserve(workdir):
    runner = run(workdir)
    out = runner.out
    for name in ("recipe.yaml", "curated.parquet", "heldout.parquet", "manifest.json", "ledger.jsonl"):
        assert (out / name).exists(), name
    steps = sorted(p.name for p in (out / "steps").iterdir())
    assert steps == ["00-ingest", "01-holdout", "02-exact_dedup"]
    prev_out = None
    for d in steps:
        stats = json.loads((out / "steps" / d / "stats.json").read_text())
        assert (out / "steps" / d / "DONE").exists()
        assert stats["in"] == stats["out"] + stats["rejected"]
        assert len(pl.read_parquet(out / "steps" / d / "kept.parquet")) == stats["out"]
        rejected = pl.read_parquet(out / "steps" / d / "rejected.parquet")
        assert len(rejected) == stats["rejected"] and rejected["reason"].null_count() == 0
        if prev_out is not None:
            assert stats["in"] == prev_out
        prev_out = stats["out"]
    ingest = json.loads((out / "steps/00-ingest/stats.json").read_text())
    assert ingest["in"] == 72 and ingest["rejected"] == 1 and ingest["reasons"] == {"bad_json": 1}
    dedup = json.loads((out / "steps/02-exact_dedup/stats.json").read_text())
    # 9 planted copies survive ingest (row 5 was altered); the held-out draw may take up to 3 of them
    assert 6 <= dedup["rejected"] <= 9
    curated = pl.read_parquet(out / "curated.parquet")
    dropped = pl.read_parquet(out / "steps/02-exact_dedup/rejected.parquet")
    assert set(dropped["duplicate_of"]) <= set(curated["id"])
    assert "label" in curated.columns  # user columns carried through
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["curated.parquet"] == file_digest(out / "curated.parquet")
    assert set(manifest["inputs"]) == {str(workdir / "raw" / "a.jsonl"), str(workdir / "raw" / "b.jsonl")}
    assert [s["kind"] for s in manifest["steps"]] == ["ingest", "holdout", "exact_dedup"]
    heldout = pl.read_parquet(out / "heldout.parquet")
    assert len(heldout) == 3 and not set(heldout["id"]) & set(curated["id"])


def test_resume_skips_and_gives_same_bytes(workdir):
    first = run(workdir)
    digest = file_digest(first.out / "curated.parquet")
    mtimes = {p: p.stat().st_mtime_ns for p in (first.out / "steps").rglob("kept.parquet")}
    second = run(workdir)
    assert all(s.get("skipped") for s in second.step_stats)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert file_digest(second.out / "curated.parquet") == digest


def test_changed_options_rerun_that_step_and_later(workdir):
    run(workdir)
    again = run(workdir, lower="false")
    skipped = [bool(s.get("skipped")) for s in again.step_stats]
    assert skipped == [True, True, False]


def test_same_recipe_same_seed_identical_bytes_in_fresh_dirs(workdir):
    a = run(workdir, out="a")
    b = run(workdir, out="b")
    assert file_digest(a.out / "curated.parquet") == file_digest(b.out / "curated.parquet")
    c = run(workdir, out="c", seed=1)  # another seed draws another held-out set
    assert file_digest(c.out / "heldout.parquet") != file_digest(a.out / "heldout.parquet")


def test_half_written_step_is_not_trusted(workdir):
    runner = run(workdir)
    step = runner.out / "steps" / "02-exact_dedup"
    (step / "DONE").unlink()  # as if killed before DONE
    (step / "kept.parquet").write_bytes(b"garbage")
    again = run(workdir)
    assert [bool(s.get("skipped")) for s in again.step_stats] == [True, True, False]
    pl.read_parquet(step / "kept.parquet")  # rewritten, readable


def test_step_that_loses_rows_fails_loudly(workdir, monkeypatch):
    import curation.exact_dedup as mod

    monkeypatch.setattr(mod, "exact_dedup", lambda df, opts, ctx: (df.head(3), df.head(0).with_columns(
        pl.lit("x").alias("stage"), pl.lit("y").alias("reason"))))
    with pytest.raises(StepFailed, match="lost rows"):
        run(workdir)


def test_cli_run_inspect_validate(workdir):
    recipe = workdir / "r.yaml"
    recipe.write_text(RECIPE.format(seed=0, lower="true"))
    env_py = sys.executable
    res = subprocess.run([env_py, "-m", "pond.cli", "run", str(recipe), "--out", str(workdir / "cli")],
                         capture_output=True, text=True, cwd=workdir)
    assert res.returncode == 0, res.stderr
    assert "curated:" in res.stdout
    curated = pl.read_parquet(workdir / "cli" / "curated.parquet")
    dropped = pl.read_parquet(workdir / "cli/steps/02-exact_dedup/rejected.parquet")["id"][0]
    res = subprocess.run([env_py, "-m", "pond.cli", "inspect", str(workdir / "cli"), "--id", dropped],
                         capture_output=True, text=True)
    assert "rejected by 02-exact_dedup: exact_duplicate_of:" in res.stdout
    res = subprocess.run([env_py, "-m", "pond.cli", "inspect", str(workdir / "cli"), "--id", curated["id"][0]],
                         capture_output=True, text=True)
    assert "survived" in res.stdout
    res = subprocess.run([env_py, "-m", "pond.cli", "inspect", str(workdir / "cli")], capture_output=True, text=True)
    assert res.returncode == 0 and "02-exact_dedup" in res.stdout and "bad_json" in res.stdout
    bad = workdir / "bad.yaml"
    bad.write_text(RECIPE.format(seed=0, lower="true") + "extra: 1\n")
    res = subprocess.run([env_py, "-m", "pond.cli", "validate", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2 and f"{bad}:7: extra: unknown key" in res.stderr.replace("\n", "")
    res = subprocess.run([env_py, "-m", "pond.cli", "--version"], capture_output=True, text=True)
    assert res.stdout.startswith("pond ")


def test_bad_input_file_is_a_clear_error(workdir):
    (workdir / "raw" / "c.xml").write_text("<x/>")
    recipe = workdir / "r.yaml"
    recipe.write_text(RECIPE.format(seed=0, lower="true").replace("path: raw", "path: raw/c.xml"))
    res = subprocess.run([sys.executable, "-m", "pond.cli", "run", str(recipe), "--out", str(workdir / "x")],
                         capture_output=True, text=True, cwd=workdir)
    assert res.returncode == 2 and "c.xml: unknown format" in res.stderr

"""Continuous curation (issue 20): `pond update` adds data drops to a run's pond.

Real ShareGPT conversations; the drops are deduplicated against the pond and the held-out set, and
the pond's curated set equals what `pond run` gives over the union of the files (no order-dependent
step here). The drift and retraining tests are in test_update_drift.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pond import layout
from pond.pipeline import run_pipeline
from pond.recipe import parse_recipe
from pond.update import UpdateError, update

RECIPE = """\
name: drops
input: {{path: {inputs}}}
seed: 0
steps:
{holdout}  - exact_dedup: {{}}
  - minhash_dedup: {{threshold: 0.7}}
  - heuristics: {{min_words: 3}}
"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def conversations(df: pl.DataFrame) -> list[dict]:
    return [{"messages": m} for m in df["messages"].to_list()]


def near_copy(row: dict) -> dict:
    """The same conversation with its last word changed: a near duplicate, not an exact one."""
    msgs = [dict(m) for m in row["messages"]]
    words = msgs[-1]["content"].split()
    msgs[-1]["content"] = " ".join(words[:-1] + ["CHANGED"])
    return {"messages": msgs}


def base_run(tmp: Path, inputs: list[str], holdout: bool = False, out: str = "run") -> Path:
    recipe = parse_recipe(RECIPE.format(inputs=json.dumps(inputs), holdout="  - holdout: {n: 10}\n" if holdout else ""))
    run_pipeline(recipe, tmp / out, tmp, train=False)
    return tmp / out


@pytest.fixture()
def drops(tmp_path, sharegpt_df):
    rows = conversations(sharegpt_df.filter(pl.col("messages").list.len() >= 2).head(240))
    long_enough = [r for r in rows if len(r["messages"][-1]["content"].split()) >= 30]
    base, new = rows[:160], rows[160:]
    # drop 1: new rows, 8 exact copies of pond rows, 4 near copies of pond rows, 3 rows repeated in itself
    exact = base[:8]
    near = [near_copy(r) for r in long_enough[8:12]]
    write_jsonl(tmp_path / "a.jsonl", base)
    write_jsonl(tmp_path / "b.jsonl", new + exact + near + new[:3])
    return tmp_path, base, exact, near


def test_drop_joins_pond_like_a_run_over_the_union(drops):
    tmp, base, exact, near = drops
    run = base_run(tmp, ["a.jsonl"])
    pond_before = pl.read_parquet(run / layout.CURATED)
    result = update(run, [tmp / "b.jsonl"])
    assert result["drop"] == "001"
    drop = layout.drop_dir(run, 1)
    for name in (layout.DROP_INPUTS, layout.CURATED, layout.DRIFT, layout.RETRAIN, layout.DONE):
        assert (drop / name).exists(), name
    assert [d.name for d in layout.step_dirs(drop)] == ["00-ingest", "01-exact_dedup", "02-minhash_dedup",
                                                        "03-heuristics"]
    # the pond's rows are untouched, the drop's follow them
    curated = pl.read_parquet(run / layout.CURATED)
    assert_frame_equal(curated.head(len(pond_before)), pond_before)
    # `pond run` over the union of the files gives the same curated set
    union = base_run(tmp, ["a.jsonl", "b.jsonl"], out="union")
    whole = pl.read_parquet(union / layout.CURATED)
    # ... but for one annotation: a pond row kept by MinHash is not re-annotated with the `dup_cluster`
    # its near copy in the drop would give it (curated rows are not redone; docs/continuous-curation.md)
    assert_frame_equal(curated.drop("dup_cluster"), whole.drop("dup_cluster"))
    n = len(pond_before)
    assert curated["dup_cluster"].slice(n).to_list() == whole["dup_cluster"].slice(n).to_list()
    changed = whole.head(n).filter(pl.col("dup_cluster").ne_missing(pond_before["dup_cluster"]))
    near_rej = pl.read_parquet(drop / "steps" / "02-minhash_dedup" / layout.REJECTED)
    assert changed.height >= 1 and set(changed["id"]) <= set(near_rej["duplicate_of"])
    lineage = pl.read_parquet(run / layout.LINEAGE)
    assert lineage["id"].to_list() == curated["id"].to_list()
    assert set(lineage.filter(pl.col("drop") == 0)["id"]) == set(pond_before["id"])
    assert lineage.filter(pl.col("drop") == 1).height == len(curated) - len(pond_before)


def test_rows_duplicated_across_drops_name_the_earlier_row(drops):
    tmp, base, exact, near = drops
    run = base_run(tmp, ["a.jsonl"])
    update(run, [tmp / "b.jsonl"])
    ingest = pl.read_parquet(layout.ingest_output(run))
    text_to_id = dict(zip(ingest["text"].to_list(), ingest["id"].to_list()))
    drop = layout.drop_dir(run, 1)
    rej = pl.read_parquet(drop / "steps" / "01-exact_dedup" / layout.REJECTED)
    pond_ids = set(ingest["id"])
    pond_copies = rej.filter(pl.col("duplicate_of").is_in(list(pond_ids)))
    assert pond_copies.height == len(exact)
    for row in pond_copies.iter_rows(named=True):
        assert row["duplicate_of"] == text_to_id[row["text"]]  # the earlier row, by id
        assert row["reason"] == f"exact_duplicate_of:{row['duplicate_of']}"
    assert rej.height == len(exact) + 3  # plus the rows repeated inside the drop
    near_rej = pl.read_parquet(drop / "steps" / "02-minhash_dedup" / layout.REJECTED)
    assert near_rej.filter(pl.col("duplicate_of").is_in(list(pond_ids))).height == len(near)
    stats = json.loads((drop / "steps" / "01-exact_dedup" / layout.STATS).read_text())
    assert stats["against_reference"]["duplicates_of_reference_rows"] == len(exact)


def test_drop_is_deduplicated_against_the_heldout_set(drops):
    tmp, base, exact, near = drops
    run = base_run(tmp, ["a.jsonl"], holdout=True)
    held = pl.read_parquet(run / layout.HELDOUT)
    again = write_jsonl(tmp / "c.jsonl", [{"messages": m} for m in held["messages"].to_list()] + base[-2:])
    update(run, [again])
    rej = pl.read_parquet(layout.drop_dir(run, 1) / "steps" / "02-exact_dedup" / layout.REJECTED)
    assert set(rej["duplicate_of"]) >= set(held["id"])
    curated = pl.read_parquet(run / layout.CURATED)
    assert not set(curated["id"]) & set(held["id"])
    assert pl.read_parquet(run / layout.HELDOUT).equals(held)  # no new draw


def test_bad_drops_are_one_line(drops, tmp_path):
    tmp, base, exact, near = drops
    with pytest.raises(UpdateError, match=r"has no curated\.parquet"):
        update(tmp / "nothing", [tmp / "b.jsonl"])
    run = base_run(tmp, ["a.jsonl"])
    with pytest.raises(UpdateError) as err:
        update(run, [tmp / "a.jsonl"])
    assert "a.jsonl" in str(err.value) and "drop 000" in str(err.value) and "\n" not in str(err.value)
    update(run, [tmp / "b.jsonl"])
    copy = tmp / "copy-of-b.jsonl"
    copy.write_bytes((tmp / "b.jsonl").read_bytes())
    with pytest.raises(UpdateError, match=r"copy-of-b\.jsonl \(in drop 001, as .*b\.jsonl\)"):
        update(run, [copy])
    # a drop with no usable row is one line, and leaves no unfinished drop behind
    (tmp / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(UpdateError, match=r"drop 002: .*bad\.jsonl.*no usable rows"):
        update(run, [tmp / "bad.jsonl"])
    assert not layout.drop_dir(run, 2).exists()
    # a drop in another format and layout is fine: ingest reads it
    pl.DataFrame({"prompt": ["What is a pond, in one short sentence?"],
                  "response": ["A pond is a small, still body of fresh water."]}).write_csv(tmp / "d.csv")
    assert update(run, [tmp / "d.csv"])["kept"] == 1


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pond.cli", *args], capture_output=True, text=True)


def test_cli_update_and_status(drops):
    tmp, base, *_ = drops
    missing = _cli("update", str(tmp / "nothing"), "--input", str(tmp / "b.jsonl"))
    assert missing.returncode == 2 and "has no curated.parquet" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    run = base_run(tmp, ["a.jsonl"])
    write_jsonl(tmp / "c.jsonl", [near_copy(r) for r in base[:2]])
    done = _cli("update", str(run), "--input", str(tmp / "b.jsonl"), str(tmp / "c.jsonl"))  # --input NEW...
    assert done.returncode == 0, done.stderr
    assert "drop 001" in done.stdout
    assert len(layout.read_json(layout.drop_dir(run, 1) / layout.DROP_INPUTS)["files"]) == 2
    out = _cli("status", str(run)).stdout
    lines = out.splitlines()
    assert lines[1].startswith(f"pond: {pl.read_parquet(run / layout.CURATED).height} curated rows in 2 generation")
    assert any(line.strip().startswith("001") for line in lines) and "adapters: none" in out

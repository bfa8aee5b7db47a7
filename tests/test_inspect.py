"""`pond inspect RUN --id X`: a row found by pond's id or the user's own id, with its text and stored
detail; an id that is not there is an error (exit 1)."""
from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from pond.inspect import find_id

RECIPE = """\
name: t
input: {path: raw.jsonl}
seed: 0
steps:
  - exact_dedup: {}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, sharegpt_df):
    root = tmp_path_factory.mktemp("inspect")
    rows = [{"id": f"conv-{i}", "messages": m} for i, m in enumerate(sharegpt_df["messages"].head(8).to_list())]
    rows.append({"id": "conv-dup", "messages": rows[0]["messages"]})  # an exact duplicate of conv-0
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, json.dumps({"id": "conv-broken", "conversations": [{"from": "human", "value": "hi"},
                                                                      {"from": "gpt"}]}))
    (root / "raw.jsonl").write_text("\n".join(lines) + "\n")
    (root / "r.yaml").write_text(RECIPE)
    res = subprocess.run([sys.executable, "-m", "pond.cli", "run", "r.yaml", "--out", "run"], cwd=root,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return root / "run"


def inspect(run, key):
    return subprocess.run([sys.executable, "-m", "pond.cli", "inspect", str(run), "--id", key],
                          capture_output=True, text=True)


def test_a_missing_id_is_an_error(run):
    res = inspect(run, "no-such-row")
    assert res.returncode == 1
    assert "no-such-row: not found" in res.stderr and res.stdout == ""


def test_found_by_the_users_own_id_with_text(run):
    curated = pl.read_parquet(run / "curated.parquet")
    row = curated.filter(pl.col("orig_id") == "conv-2").row(0, named=True)
    res = inspect(run, "conv-2")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{row['id']} (your id conv-2): survived (in curated.parquet)")
    assert " ".join(row["text"].split())[:200] in " ".join(res.stdout.split())
    assert "source: raw.jsonl" in res.stdout
    assert find_id(run, row["id"]) == find_id(run, "conv-2")  # pond's id finds the same row


def test_a_rejected_row_shows_reason_and_stored_detail(run):
    res = inspect(run, "conv-dup")
    assert res.returncode == 0 and "rejected by 01-exact_dedup: exact_duplicate_of:" in res.stdout
    # ingest keeps a malformed row's raw text, not its fields: it is found by pond's id
    broken_id = pl.read_parquet(run / "steps/00-ingest/rejected.parquet")["id"][0]
    broken = inspect(run, broken_id)
    assert broken.returncode == 0, broken.stderr
    assert "rejected by 00-ingest: missing_content" in broken.stdout
    assert "detail: raw.jsonl:4: conversations[1]" in broken.stdout  # file, line and the field at fault
    assert '"id": "conv-broken"' in broken.stdout  # the raw line as read

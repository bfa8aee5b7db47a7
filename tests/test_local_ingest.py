"""Ingest over several cores (pond.executors.local_ingest): big inputs read in parts by worker processes
give the one reader's rows, ids, order and rejections."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from curation.ingest import IngestError
from curation.scaled_corpus import write_corpus
from pond.executors import local_ingest
from pond.executors.shards import read_output
from pond.recipe import parse_recipe
from pond.runner import Runner


def ingest(tmp_path: Path, name: str, workers: int, monkeypatch, path: str = "data/*") -> Path:
    monkeypatch.setenv("POND_INGEST_WORKERS", str(workers))
    monkeypatch.setattr(local_ingest, "MIN_PART_BYTES", 64 << 10)  # parts of a test-sized input
    recipe = parse_recipe(f"name: i\ninput: {{path: '{path}'}}\nseed: 0\nsteps: []\n")
    runner = Runner(recipe, tmp_path / name, tmp_path, cache_dir=tmp_path / "cache")
    return runner.ingest()[0]


def test_parts_read_by_worker_processes_give_the_one_readers_rows(tmp_path, monkeypatch):
    write_corpus(tmp_path / "data", 1200, files=2, base_limit=600)
    first = sorted((tmp_path / "data").glob("*.jsonl"))[0]
    lines = first.read_bytes().splitlines(keepends=True)
    # rows every reader must reject alike, wherever a part boundary falls: bad JSON, bad UTF-8, blank lines
    lines[100:100] = [b"{not json\n", b"\n", b'{"text": "caf\xe9"}\n', b"\n\n", b"[1, 2]\n"]
    first.write_bytes(b"".join(lines))
    second = sorted((tmp_path / "data").glob("*.jsonl"))[1]
    rows = pl.DataFrame({"text": second.read_text(errors="replace").splitlines() * 3})  # plain-text rows
    rows.write_parquet(tmp_path / "data" / "c.parquet", row_group_size=50)  # split by row groups

    files = sorted((tmp_path / "data").glob("*"))
    monkeypatch.setattr(local_ingest, "MIN_PART_BYTES", 64 << 10)
    items = local_ingest.plan(files, [f.name for f in files], "auto", 4)
    assert items is not None
    per_file = [sum(it["index"] == i for it in items) for i in range(len(files))]
    assert all(n >= 2 for n in per_file), per_file  # every file in several parts, the Parquet one too
    assert {it["kind"] for it in items} == {"jsonl", "parquet"}

    one = ingest(tmp_path, "one", 1, monkeypatch)
    two = ingest(tmp_path, "two", 4, monkeypatch)
    for out in ("kept.parquet", "rejected.parquet"):
        a, b = read_output(one / out), read_output(two / out)
        assert a.height > 0 and a.equals(b), out
    reasons = read_output(two / "rejected.parquet")["reason"].to_list()
    assert {"bad_json", "invalid_utf8", "not_an_object"} <= set(reasons)
    # the same figures; the files' bytes differ (row groups end where parts end), so their digests do
    stats = [{k: v for k, v in json.loads((d / "stats.json").read_text()).items() if k not in ("seconds", "outputs")}
             for d in (one, two)]
    assert stats[0] == stats[1]


def test_a_split_file_without_rows_is_refused_as_a_whole_one_is(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "blank.jsonl").write_text("\n" * (400 << 10))
    for workers in (1, 2):
        with pytest.raises(IngestError, match=r"blank\.jsonl: holds no rows"):
            ingest(tmp_path, f"w{workers}", workers, monkeypatch)


def test_one_core_or_a_small_input_keeps_one_reader(tmp_path, monkeypatch):
    write_corpus(tmp_path / "data", 200, files=1, base_limit=200)
    files = sorted((tmp_path / "data").glob("*.jsonl"))
    assert local_ingest.plan(files, ["a"], "auto", 1) is None
    assert local_ingest.plan(files, ["a"], "auto", 2) is None  # under two parts' worth of bytes


def test_a_run_and_a_drop_on_parallel_ingest_keep_the_one_readers_rows(tmp_path, monkeypatch):
    """The shard folders parallel ingest writes flow through streamed steps and a `pond update` drop alike."""
    from pond.pipeline import run_pipeline
    from pond.update import update

    write_corpus(tmp_path / "data", 900, files=2, base_limit=500)
    write_corpus(tmp_path / "drop", 300, files=1, base_limit=300, seed=5)
    monkeypatch.setattr(local_ingest, "MIN_PART_BYTES", 64 << 10)
    monkeypatch.setenv("POND_LOCAL_BATCH_ROWS", "150")  # streamed steps too
    recipe = parse_recipe("name: r\ninput: {path: 'data/*.jsonl'}\nseed: 1\nsteps:\n  - exact_dedup: {}\n"
                          "  - heuristics: {}\n  - minhash_dedup: {threshold: 0.7}\n"
                          "retrain: {drift: {sample: 40, permutations: 50}, mlflow: false}\n")  # a small drift report
    runs = {}
    for workers in (1, 2):
        monkeypatch.setenv("POND_INGEST_WORKERS", str(workers))
        run = tmp_path / f"run{workers}"
        run_pipeline(recipe, run, tmp_path, train=False)
        update(run, sorted((tmp_path / "drop").glob("*.jsonl")), cache_dir=tmp_path / "cache", retrain=False)
        runs[workers] = run
    assert (runs[2] / "steps" / "00-ingest" / "kept.parquet").is_dir()  # it did read in parts
    for step in sorted(p.name for p in (runs[1] / "steps").iterdir()):
        for out in ("kept.parquet", "rejected.parquet"):
            a, b = (read_output(r / "steps" / step / out) for r in (runs[1], runs[2]))
            assert a.equals(b), (step, out)
    a, b = (pl.read_parquet(r / "curated.parquet") for r in (runs[1], runs[2]))
    assert a.height > 0 and a.equals(b)


def test_compressed_shards_are_read_over_the_cores_as_whole_parts(tmp_path, monkeypatch):
    """A corpus shipped as compressed shards: each file one part (a stream cannot be cut), read by a
    worker, with the one reader's rows, ids, order and rejections."""
    write_corpus(tmp_path / "data", 900, files=3, base_limit=500, compress="zst")
    write_corpus(tmp_path / "data" / "gz", 300, files=1, base_limit=300, seed=3, compress="gz")
    files = sorted((tmp_path / "data").rglob("*.jsonl.*"))
    assert len(files) == 4
    monkeypatch.setattr(local_ingest, "MIN_PART_BYTES", 16 << 10)
    items = local_ingest.plan(files, [f.name for f in files], "auto", 2)
    assert items is not None and len(items) == 4 and all(it["start"] == -1 for it in items)
    one = ingest(tmp_path, "one", 1, monkeypatch, "data/**/*.jsonl.*")
    two = ingest(tmp_path, "two", 2, monkeypatch, "data/**/*.jsonl.*")
    assert (two / "kept.parquet").is_dir()  # the workers' shards
    for out in ("kept.parquet", "rejected.parquet"):
        a, b = read_output(one / out), read_output(two / out)
        assert a.height > 0 and a.equals(b), out
    assert "bad_json" in set(read_output(two / "rejected.parquet")["reason"])  # each file's malformed line

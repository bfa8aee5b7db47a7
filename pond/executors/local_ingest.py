"""Ingest over this machine's cores: big JSONL and Parquet inputs read in parts by worker processes.

Ingest is Python per row (JSON parse, layout, Unicode rule, id), so one reader keeps one core busy
while the others wait. The parts are the Ray executor's (`ray_ingest.plan_parts`: JSONL byte ranges
cut at line starts, runs of Parquet row groups), each read by the same reader in its own process
(`ray_ingest.read_part_shards`) and written as shards of the step's outputs, named by row position
(pond.executors.shards): the rows, their ids and their order are the one reader's, with no pass that
combines them into one file.

Used only where it pays and where a part loses nothing: at least two cores (`workers`), at least
`MIN_PART_BYTES` for each of two parts (128 MB in all), no `input.limit` (a count in file order) and no
`input.columns` (a key no row has is a whole-file check). `POND_INGEST_WORKERS=1` keeps one reader.
A file that cannot be cut (compressed: a stream has no random access) is one part, read whole by one
worker, so a corpus shipped as many `.jsonl.zst` shards is read over the cores too (its bytes on disk
count toward the 128 MB); one such file's rows bound that worker's memory, as a part's do.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from curation.settings import usable_cores
from pond.executors.ray_ingest import jsonl_ranges, newlines_in, number_ranges, plan_parts, read_part_shards

# Workers fork from a forkserver that imported this module once (~1.2 CPU-s); still, a one-step MinHash run
# on a 120 MB file spent 4 CPU-s more and 1.9 s more wall with four spawned parts than with one reader
MIN_PART_BYTES = 64 << 20
# Each part gets a fresh process (Python keeps the arenas of a batch's row dicts after it is written,
# so one reader's resident memory grows with the rows it has read): a part's rows bound a worker's peak
MAX_PART_BYTES = 256 << 20


def workers() -> int:
    """Reader processes: POND_INGEST_WORKERS where set, else the cores this process may use."""
    value = os.environ.get("POND_INGEST_WORKERS")
    if value:
        return max(1, int(value))
    return usable_cores()


def plan(files: list[Path], sources: list[str], fmt: str, n_workers: int) -> list[dict[str, Any]] | None:
    """The parts for `n_workers` readers (about two each, for balance), with their first line numbers;
    None where one reader is as fast: one core, or too little input."""
    if n_workers < 2:
        return None
    total = sum(f.stat().st_size for f in files if f.exists())
    if total < 2 * MIN_PART_BYTES:
        return None
    split = min(MAX_PART_BYTES, max(MIN_PART_BYTES, -(-total // (2 * n_workers))))
    items = plan_parts(files, sources, fmt, split)
    return _first_lines(items) if len(items) > 1 else None


def _first_lines(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each JSONL byte range's first line number, the newlines counted here in turn (~2 GB/s from the page
    cache, against ~1 MB/s per core for the parse itself)."""
    return number_ranges(items, {i: newlines_in(items[i]["path"], items[i]["start"], items[i]["end"])
                                 for i in jsonl_ranges(items)})


def _read_part(item: dict[str, Any], fmt: str, layout: str, step_dir: str, shard_rows: int) -> int:
    """One part through the reader, in a worker, written as shards of the step's outputs; rows seen."""
    counts = read_part_shards({k: np.array([v]) for k, v in item.items()}, fmt, layout, step_dir, shard_rows)
    return int(counts["n_kept"][0].as_py()) + int(counts["n_rej"][0].as_py())


def read_parts(items: list[dict[str, Any]], fmt: str, layout: str, step_dir: Path, n_workers: int,
               shard_rows: int) -> Iterator[int]:
    """Every part read by `n_workers` processes into shard folders `step_dir`/kept.parquet and
    rejected.parquet (shards named by row position: their order is the input's); yields each part's
    rows seen, in input order, as it and the parts before it are done."""
    # forkserver, not fork: the parent may already run polars' and Arrow's thread pools, which a fork copies
    # mid-state; the server is a fresh process that imports this module once, and each part forks from it
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", __name__])  # the main module once, in the server (not per part)
    with ProcessPoolExecutor(max_workers=min(n_workers, len(items)), mp_context=ctx, max_tasks_per_child=1) as pool:
        futures = [pool.submit(_read_part, it, fmt, layout, str(step_dir), shard_rows) for it in items]
        for f in futures:
            yield f.result()


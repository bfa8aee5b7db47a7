"""The local executor's streaming: a step's input read in bounded batches, its outputs written in
row groups, so no step holds its whole input (docs/scale-out.md, "Size on one machine").

- steps the Ray executor runs shard by shard (`rowwise`, `actor`) run batch by batch:
  each batch through the step function itself with a fresh context, kept/rejected written as part
  files, their ctx.stats merged as the Ray executor merges per-shard stats (`merge_stats`, the
  `shard_figures` dropped);
- a step with a `streamed` form in the step table (exact and MinHash dedup: `stream_marks`) reads only the columns its rule
  needs, in batches, and returns per-row verdicts (`marks`, only the rows that have one) and the
  split function that turns marked rows into (kept, rejected); the rows then stream through it;
- the batches' kept and rejected rows are written as shards of the step's outputs (`kept.parquet/` and
  `rejected.parquet/` folders, pond.executors.shards, as the Ray executor writes them), in row groups of
  `ROW_GROUP_ROWS`: no pass re-reads and re-writes a step's rows to make one file of them (at 5M rows
  that pass cost each step a second copy of its output on disk and a decode and encode of every row).

An input of at most one batch runs as before: the whole frame through the step function and the
store's writer, so small runs keep their bytes. `batch_rows()` is the batch size: `LOCAL_BATCH_ROWS`
(pond.executors.config), or POND_LOCAL_BATCH_ROWS where set (0: never stream; tests force tiny batches).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation import store
from curation.ingest import as_json_columns, mixed_user_columns
from curation.step import StepContext
from pond.executors.config import LOCAL_BATCH_ROWS
from pond.executors.ray_exec import merge_stats
from pond.executors.shards import ensure_nonempty, list_shards, shard_name, unify_schema
from pond.steps import StepSpec

POS = "pos"  # the column of a step's marks: the row's position in the step's input
ROW_GROUP_ROWS = 10_000  # rows per row group of an output, shard or combined file (~100 MB of ShareGPT rows in memory)


def batch_rows() -> int:
    """Rows per batch of the local executor (0: whole inputs, no streaming)."""
    value = os.environ.get("POND_LOCAL_BATCH_ROWS")
    return LOCAL_BATCH_ROWS if value in (None, "") else max(0, int(value))


def release_unused() -> None:
    """Hand the memory Arrow's pool keeps after a batch back to the system. Its allocator (mimalloc) keeps
    freed pages for the next allocation: 2.1 GB after 50k-row batches of ShareGPT rows were dropped
    (bench/scale_phases.py), held under every later phase, so a step's peak was a batch plus what the
    phases before it had held."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """At most `arenas` glibc malloc arenas for the threads made after this call (mallopt M_ARENA_MAX). By
    default glibc gives threads their own, up to 8 per core: MinHash's signature and verification threads
    allocate numpy arrays that another thread frees, and RSS grew chunk after chunk of its verification: a
    387k-document run peaked at 2.56 GB, 1.74 GB with this (bench/minhash_memory.py), the same CPU seconds.
    Arenas made before the call stay. A no-op where malloc is not glibc's."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def iter_rows(path: Path, columns: list[str] | None = None, rows: int | None = None) -> Iterator[pl.DataFrame]:
    """A step output (file or shard folder) in order, `rows` at a time (the last batch of a shard may be
    shorter), only `columns` where given."""
    import pyarrow.parquet as pq

    rows = rows or batch_rows() or 1 << 62
    for shard in list_shards(path):
        for rb in pq.ParquetFile(shard).iter_batches(batch_size=rows, columns=columns, use_threads=True):
            if rb.num_rows:
                df = pl.from_arrow(rb)
                del rb  # what polars copied is freed here, what it shares when the caller drops the batch
                release_unused()
                yield df
    release_unused()


class Reader:
    """What a `stream_marks` is given: `read(columns)`, a fresh pass over some columns of a step output,
    in order; `read.schema`, the output's columns and types."""

    def __init__(self, path: Path, rows: int | None = None):
        self.path, self.rows = path, rows
        self.schema = pl.read_parquet_schema(list_shards(path)[0])

    def __call__(self, columns: list[str]) -> Iterator[pl.DataFrame]:
        return iter_rows(self.path, columns, self.rows)


def combine_parts(parts: list[Path], dest: Path, empty: pl.DataFrame) -> int:
    """Part files (in order) -> one Parquet file, streamed in row groups; `empty` where there are none.
    Parts typed differently (a user column) meet as ingest's join rule has it. Returns the rows."""
    if not parts:
        store.write_parquet(empty, dest)
        return 0
    mixed = mixed_user_columns([pl.read_parquet_schema(p) for p in parts])
    if mixed:  # a user column typed differently in two batches: JSON text in each, one part at a time
        for part in parts:
            as_json_columns(pl.read_parquet(part), mixed).write_parquet(part)
    # every part in the columns and types of their diagonal concatenation (what ingest's join rule gives)
    target = pl.concat([pl.DataFrame(schema=pl.read_parquet_schema(p)) for p in parts], how="diagonal_relaxed")
    # written straight to its place, ROW_GROUP_ROWS at a time (the store writes whole frames, and polars'
    # sink_parquet held ~3x more: 4.3 GB against 1.1 GB for 300k ShareGPT rows): the step's DONE comes after
    # it, and a rerun without DONE clears the folder
    n = store.write_parquet_frames((pl.concat([target, batch], how="diagonal_relaxed")
                                    for part in parts for batch in iter_rows(part, rows=ROW_GROUP_ROWS)),
                                   dest, ROW_GROUP_ROWS)
    if not n:  # iter_rows yields no empty batch: no rows, no file
        store.write_parquet(target, dest)
    return n


class ShardWriter:
    """Kept and rejected batches written as shards of the step's two outputs (shard folders named by row
    position, pond.executors.shards) into a step folder the runner has just emptied (`Runner.run_step`
    clears it before every run of a step; the step's DONE comes after the shards)."""

    def __init__(self, kept: Path, rejected: Path):
        self.dest = {"kept": kept, "rejected": rejected}
        self.empty: dict[str, pl.DataFrame] = {}
        self.rows = {"kept": 0, "rejected": 0}

    def add(self, kept: pl.DataFrame, rejected: pl.DataFrame) -> None:
        for name, df in (("kept", kept), ("rejected", rejected)):
            self.empty.setdefault(name, df.clear())
            if len(df):
                folder = self.dest[name]
                folder.mkdir(parents=True, exist_ok=True)
                # row groups of 10k rows, so a reader of the shard decodes 10k rows at a time
                df.write_parquet(folder / shard_name(self.rows[name]), **store.PARQUET, row_group_size=ROW_GROUP_ROWS)
            self.rows[name] += len(df)

    def finish(self) -> None:
        for name, folder in self.dest.items():
            ensure_nonempty(folder, self.empty.get(name, pl.DataFrame()))
            unify_schema(folder)  # a user column typed differently in two batches: ingest's join rule


def run_per_row(spec: StepSpec, fn: Callable, options: Any, prev: Path, ctx: StepContext, kept: Path,
                rejected: Path) -> tuple[int, int, int, dict[str, Any]]:
    """A per-row step over bounded batches: (rows in, kept, rejected, merged stats)."""
    out = ShardWriter(kept, rejected)
    n_in, stats = 0, []
    for df in iter_rows(prev):
        part_ctx = dataclasses.replace(ctx, stats={})
        k, r = fn(df, options, part_ctx)
        out.add(k, r)
        n_in += len(df)
        stats.append(part_ctx.stats)
    out.finish()
    merged = merge_stats(stats)
    for key in spec.shard_figures:
        merged.pop(key, None)
    ctx.stats.update(merged)
    return n_in, out.rows["kept"], out.rows["rejected"], merged


def marks_for(marks: pl.DataFrame, lo: int, n: int) -> pl.DataFrame:
    """The mark columns of rows lo .. lo+n-1 of the input, one row each (null where a row has no mark);
    `marks` is sorted by POS."""
    pos = marks[POS].to_numpy()
    a, b = np.searchsorted(pos, lo), np.searchsorted(pos, lo + n)
    rows = pl.DataFrame({POS: pl.int_range(lo, lo + n, dtype=pl.Int64, eager=True)})
    return rows.join(marks.slice(a, b - a), on=POS, how="left", maintain_order="left").drop(POS)


def run_marked(stream_marks: Callable, options: Any, prev: Path, ctx: StepContext, kept: Path,
               rejected: Path) -> tuple[int, int, int]:
    """A global step from its verdicts: `stream_marks(read, options, ctx) -> (marks, split)` reads what its
    rule needs; every row then goes, batch by batch, with its marks (columns set as the in-memory step
    sets them) through `split`. Returns (rows in, kept, rejected)."""
    # its passes hold a few columns, or a few of its verdicts, of each row: 10k rows at a time is enough (a
    # 50k-row batch of every column cost ~2.4 GB while being split, 150k ShareGPT rows, bench/scale_phases.py)
    rows = min(batch_rows(), ROW_GROUP_ROWS)
    marks, split = stream_marks(Reader(prev, rows), options, ctx)
    release_unused()
    out = ShardWriter(kept, rejected)
    lo = 0
    for df in iter_rows(prev, rows=rows):
        k, r = split(df.with_columns(marks_for(marks, lo, len(df))))
        out.add(k, r)
        lo += len(df)
    out.finish()
    return lo, out.rows["kept"], out.rows["rejected"]

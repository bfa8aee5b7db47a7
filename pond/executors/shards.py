"""Sharded step outputs: `kept.parquet/` and `rejected.parquet/` as folders of Parquet shards.

A shard is named `part-<first position>.parquet`, where positions order the rows of the whole
output (zero-padded, so name order is row order). Within a shard rows are in order, so a reader
recovers a monotonic position for every row as `first position + index in shard`; that is all
order-dependent rules ("the first row stays") need. polars reads such a folder as one table
(`pl.read_parquet(folder)`), in name order; the local executor does too, so a run may switch
executors and resume.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from curation import store
from curation.ingest import as_json_columns, concat_frames, mixed_user_columns

POS = "__pos"
WIDTH = 15


def shard_name(first_pos: int) -> str:
    return f"part-{first_pos:0{WIDTH}d}.parquet"


def shard_offset(path: Path) -> int:
    return int(Path(path).stem.split("-")[1]) if Path(path).stem.startswith("part-") else 0


def list_shards(path: Path) -> list[Path]:
    """Shards of a step output, in row order (a plain Parquet file is one shard)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.name.startswith("part-") and p.suffix == ".parquet")
    return [path]


def read_shard(path: Path, with_pos: bool = True, columns: list[str] | None = None) -> pl.DataFrame:
    df = pl.read_parquet(path, columns=columns)
    if with_pos:
        df = df.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + shard_offset(path)).alias(POS))
    return df


def read_output(path: Path) -> pl.DataFrame:
    """A whole step output (file or shard folder) as one frame, in row order."""
    shards = list_shards(path)
    if len(shards) == 1:
        return pl.read_parquet(shards[0])
    # shards written by different workers may type a user column differently: ingest's join rule
    return concat_frames([pl.read_parquet(p) for p in shards])


def scan_output(path: Path, columns: list[str]) -> pl.DataFrame:
    """Some columns of a step output, read shard by shard (for stats on the driver)."""
    parts = [pl.read_parquet(p, columns=columns) for p in list_shards(path)]
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def output_columns(path: Path) -> list[str]:
    """Column names of a step output (its first shard's schema)."""
    import pyarrow.parquet as pq

    return pq.read_schema(list_shards(path)[0]).names


def count_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in list_shards(path))


def write_shard(df: pl.DataFrame, folder: Path, *, force: bool = False) -> Path | None:
    """Write rows (with their POS column) as one shard named by the first position; atomic.

    Empty frames write nothing unless `force` (every output folder gets at least one shard, so
    its schema is known even when no row went there)."""
    if df.is_empty() and not force:
        return None
    first = int(df[POS][0]) if len(df) else 0
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / shard_name(first)
    store.write_parquet(df.drop(POS, strict=False), dest)
    return dest


def ensure_nonempty(folder: Path, empty: pl.DataFrame) -> None:
    """Give a folder that received no shard an empty one (with the schema `empty` has)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not list_shards(folder):
        write_shard(empty.with_columns(pl.lit(0, dtype=pl.Int64).alias(POS)).clear(), folder, force=True)


def output_digest(path: Path) -> str:
    """A step output's digest: curation.store's of a file; of a shard folder, store's folder rule over its
    shards alone (what else a worker left there is not the output)."""
    if not Path(path).is_dir():
        return store.file_digest(path)
    h = hashlib.blake2b(digest_size=16)
    for p in list_shards(path):
        h.update(p.name.encode() + b"\0" + store.file_digest(p).encode())
    return h.hexdigest()


def unify_schema(folder: Path) -> None:
    """Give every shard of a folder the schema of their concatenation by ingest's join rule (what the local
    executor's single file has): a user column typed differently in two shards becomes JSON text in
    each, a column a shard lacks becomes nulls, numbers widen."""
    shards = list_shards(folder)
    schemas = [pl.read_parquet_schema(p) for p in shards]
    if all(s == schemas[0] for s in schemas):
        return
    mixed = mixed_user_columns(schemas)
    target = pl.concat([as_json_columns(pl.DataFrame(schema=s), mixed) for s in schemas], how="diagonal_relaxed").schema
    for p, s in zip(shards, schemas):
        if s != target:
            df = as_json_columns(pl.read_parquet(p), mixed)
            df = df.select([(pl.col(c) if c in df.columns else pl.lit(None)).cast(t).alias(c) for c, t in target.items()])
            store.write_parquet(df, p)

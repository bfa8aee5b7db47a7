"""Verdicts: the per-row decisions of a global step (exact, MinHash or semantic dedup), written
sorted by position and joined back to the shards, shard by shard, by the step's own split function
(curation's `split_exact`, `split_near_duplicates`, `split_semantic`). Also the summary row every
worker returns for the shards it wrote.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curation import store
from pond.executors.shards import POS, read_shard, write_shard


def shard_summary(n_in: int, kept: int, rejected: int, stats: dict | None = None) -> dict[str, Any]:
    return {"n_in": n_in, "n_kept": kept, "n_rej": rejected, "stats": json.dumps(stats or {}, default=str)}


def summaries_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=pa.schema([("n_in", pa.int64()), ("n_kept", pa.int64()),
                                                         ("n_rej", pa.int64()), ("stats", pa.string())]))


def write_sorted_block(batch: pa.Table, out: str) -> pa.Table:
    df = pl.from_arrow(batch)
    if len(df):
        df = df.sort(POS)
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"v-{int(df[POS][0]):015d}-{uuid.uuid4().hex[:8]}.parquet"  # equal starts must not collide
        store.write_parquet(df, folder / name)
    return pa.table({"n": [len(df)]})


def verdicts_for(folder: Path, lo: int, hi: int) -> pl.DataFrame | None:
    """Verdict rows with lo <= position <= hi (verdict files are sorted, disjoint ranges)."""
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("v-*.parquet"))
    starts = [int(f.stem[2:2 + 15]) for f in files]
    # file i holds positions from starts[i] up to starts[i + 1] (inclusive: a run of equal positions
    # may be split between two files)
    pick = [f for i, f in enumerate(files) if starts[i] <= hi and (i + 1 == len(files) or starts[i + 1] >= lo)]
    if not pick:
        return None
    return pl.concat([pl.read_parquet(f) for f in pick], how="diagonal_relaxed").filter(pl.col(POS).is_between(lo, hi))


def apply_verdicts_batch(batch: dict[str, np.ndarray], finish: Callable, kwargs: dict, verdict_dir: str,
                         out: str, columns: dict[str, str]) -> pa.Table:
    rows = []
    for path in batch["path"]:
        df = read_shard(Path(path))
        if df.is_empty():
            continue
        schema = {k: getattr(pl, v) for k, v in columns.items()}
        found = verdicts_for(Path(verdict_dir), int(df[POS].min()), int(df[POS].max())) if len(df) else None
        if found is None or found.is_empty():
            found = pl.DataFrame(schema={POS: pl.Int64, **schema})
        marked = df.join(found.select(POS, *schema).cast(schema), on=POS, how="left", maintain_order="left")
        kept, rejected = finish(marked, **kwargs)
        write_shard(kept, Path(out) / "kept.parquet")
        write_shard(rejected, Path(out) / "rejected.parquet")
        rows.append(shard_summary(len(df), len(kept), len(rejected)))
    return summaries_table(rows)

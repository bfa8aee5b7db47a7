"""Ingest on Ray: input files read in parts by many workers, through the local reader.

Ray Data's own readers (`read_json`, `read_parquet`) cannot give what local ingest gives: a row id
is a hash of (source, line number, text), and a malformed line is a rejection with its line
number, where Arrow's JSON reader fails the whole block. So each worker runs the local reader
(`curation.ingest.iter_file_batches`) over one part of one file:

- JSONL over `ray.split_bytes`: byte ranges cut at line starts. The line number a range starts at
  is the count of newlines before it, counted in parallel by a first pass (one task per range);
- Parquet: runs of row groups of about `split_bytes`; row numbers come from the footer;
- CSV (quoted newlines) and JSON arrays: one part per file.

Positions (the row order of the shards) are file index * FILE_STRIDE + the line (or row) number
the part starts at, plus the row's index in the part: parts of a file never overlap, because a
part has no more rows than lines.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curation.ingest import IngestError, file_format, splittable
from pond.executors.shards import POS, write_shard

FILE_STRIDE = 10**10  # positions of input file i start at i * FILE_STRIDE
_CHUNK = 1 << 24


def _line_starts(path: Path, split_bytes: int) -> list[int]:
    """Byte offsets near every `split_bytes` where a line begins, with 0 and the file size."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for target in range(split_bytes, size, split_bytes):
            if target <= cuts[-1]:  # inside a line longer than split_bytes
                continue
            f.seek(target - 1)  # a cut right after a newline starts a line
            offset = target - 1
            while chunk := f.read(1 << 16):
                i = chunk.find(b"\n")
                if i >= 0:
                    offset += i + 1
                    break
                offset += len(chunk)
            if cuts[-1] < offset < size:
                cuts.append(offset)
    return cuts + [size]


def _parquet_parts(path: Path, split_bytes: int) -> list[tuple[int, int, int]]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:  # noqa: BLE001 - the worker's reader reports the bad file, with the local message
        return []
    parts, first_group, first_row, size, rows = [], 0, 1, 0, 0
    for g in range(meta.num_row_groups):
        size += meta.row_group(g).total_byte_size
        rows += meta.row_group(g).num_rows
        if size >= split_bytes or g + 1 == meta.num_row_groups:
            parts.append((first_group, g + 1, first_row))
            first_group, first_row, size, rows = g + 1, first_row + rows, 0, 0
    return parts


def plan_parts(files: list[Path], sources: list[str], fmt: str, split_bytes: int) -> list[dict[str, Any]]:
    """One item per part: path, source, file index and (start, end, first) or None for whole files.
    JSONL parts still lack their first line number (`count_lines` fills it in)."""
    items = []
    for index, (path, source) in enumerate(zip(files, sources)):
        kind = file_format(path, fmt) if path.exists() else "whole"
        parts: list[tuple[int, int, int]] | None = None
        if path.exists() and splittable(path, fmt) and path.stat().st_size > split_bytes:
            if kind == "jsonl":
                cuts = _line_starts(path, split_bytes)
                parts = [(a, b, 0) for a, b in zip(cuts, cuts[1:])]
            else:
                parts = _parquet_parts(path, split_bytes) or None
        for part in parts or [None]:
            items.append({"path": str(path), "source": source, "index": index, "kind": kind,
                          "start": part[0] if part else -1, "end": part[1] if part else -1,
                          "first": part[2] if part else -1})
    return items


def newlines_in(path: str, start: int, end: int) -> int:
    """Newlines in bytes [start, end) of a file, read in 16 MB chunks."""
    n, left = 0, end - start
    with open(path, "rb") as f:
        f.seek(start)
        while left > 0 and (chunk := f.read(min(_CHUNK, left))):
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


def _count_newlines(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    counts = [newlines_in(str(p), int(a), int(b)) for p, a, b in zip(batch["path"], batch["start"], batch["end"])]
    return {**batch, "newlines": np.array(counts, dtype=np.int64)}


def jsonl_ranges(items: list[dict[str, Any]]) -> list[int]:
    """Indices of the items that are JSONL byte ranges (their first line number is to be counted)."""
    return [i for i, it in enumerate(items) if it["kind"] == "jsonl" and it["start"] >= 0]


def number_ranges(items: list[dict[str, Any]], newlines: dict[int, int]) -> list[dict[str, Any]]:
    """Each JSONL byte range's first line number, from the newlines in every range (by item index)."""
    line: dict[str, int] = {}  # next line number per file
    out = list(items)
    for i in jsonl_ranges(items):  # in file order, ranges in byte order
        path = items[i]["path"]
        out[i] = {**items[i], "first": line.get(path, 1)}
        line[path] = out[i]["first"] + newlines[i]
    return out


def count_lines(ex, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill in the first line number of every JSONL byte range (newlines before it, plus one), counted
    by one Ray task per range."""
    import ray.data

    todo = jsonl_ranges(items)
    if not todo:
        return items
    ranges = [{"k": i, "path": items[i]["path"], "start": items[i]["start"], "end": items[i]["end"]} for i in todo]
    counted = ex.collect(ray.data.from_items(ranges, override_num_blocks=len(ranges))
                         .map_batches(_count_newlines, batch_size=1, batch_format="numpy"))
    return number_ranges(items, {int(r["k"]): int(r["newlines"]) for r in counted})


def read_part_shards(batch: dict[str, np.ndarray], fmt: str, layout: str, out: str, shard_rows: int,
                     columns: dict[str, str] | None = None) -> pa.Table:
    """Parts of input files (a batch of `plan_parts` items) through the local reader, written as shards of
    `out`/kept.parquet and `out`/rejected.parquet; one row per part: index, n_kept, n_rej. Ray's workers
    and the local executor's (pond.executors.local_ingest) both run it."""
    from curation.ingest import iter_file_batches

    out_dir = Path(out)
    rows = []
    for i in range(len(batch["path"])):
        path, start, end, first = Path(batch["path"][i]), *(int(batch[k][i]) for k in ("start", "end", "first"))
        part = (start, end, first) if start >= 0 else None
        base = int(batch["index"][i]) * FILE_STRIDE + (first - 1 if part else 0)
        n_kept = n_rej = 0
        for kept, rejected in iter_file_batches(path, fmt, layout, str(batch["source"][i]), None, part, columns):
            # kept and rejected rows interleave in the file; each folder only needs its own order
            for frame, name in ((kept, "kept.parquet"), (rejected, "rejected.parquet")):
                frame = frame.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + base).alias(POS))
                for s in range(0, len(frame), shard_rows):
                    write_shard(frame.slice(s, shard_rows), out_dir / name)
            base += len(kept) + len(rejected)
            n_kept, n_rej = n_kept + len(kept), n_rej + len(rejected)
        rows.append({"index": int(batch["index"][i]), "n_kept": n_kept, "n_rej": n_rej})
    return pa.Table.from_pylist(rows, schema=pa.schema([("index", pa.int64()), ("n_kept", pa.int64()),
                                                         ("n_rej", pa.int64())]))


def ingest_parts(ex, files: list[Path], sources: list[str], fmt: str, layout: str, step_dir: Path,
                 split_bytes: int, shard_rows: int, columns: dict[str, str] | None = None) -> tuple[int, int, int]:
    """All input files, in parts, as shards under step_dir; (kept, rejected, parts)."""
    import ray.data

    items = count_lines(ex, plan_parts(files, sources, fmt, split_bytes))
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        read_part_shards, batch_size=1, batch_format="numpy",
        fn_kwargs={"fmt": fmt, "layout": layout, "out": str(step_dir), "shard_rows": shard_rows,
                   "columns": columns})
    rows = ex.collect(ds)
    check_rows([(r["index"], r["n_kept"] + r["n_rej"]) for r in rows], files)
    return sum(r["n_kept"] for r in rows), sum(r["n_rej"] for r in rows), len(items)


def check_rows(seen: list[tuple[int, int]], files: list[Path]) -> None:
    """Every input file held a row, from (file index, rows seen) per part: a whole file says so in its
    reader, a split one only here."""
    per_file: dict[int, int] = {}
    for index, n in seen:
        per_file[index] = per_file.get(index, 0) + n
    for index, path in enumerate(files):
        if per_file.get(index, 0) == 0:
            raise IngestError(f"{path}: holds no rows")

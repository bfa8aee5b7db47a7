"""How pond writes a file that a resume will trust, and how it marks work finished.

Every part writes through these (the runner, training, evaluation, the experiment, `pond update`), so
the rules are written once:

- a file is written whole or not at all: a temporary name beside it, then a rename (atomic on
  POSIX), so a kill leaves the old file or none, never half of one;
- a folder's work is finished when its marker holds the key of that work (a fingerprint or a hash of
  the inputs and options); the marker is written last, so everything it vouches for is already in
  place. A changed key means the work is redone.

It sits at the bottom (beside `records.py` and `settings.py`) so that training and evaluation can use it
without reaching up into pond; the run folder's file names are `pond.layout`'s.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

MARKER = "DONE"


def _temporary(path: Path) -> Path:
    # unique, so two writers of the same file never share a temporary; hidden, so no glob of the
    # folder's outputs sees a half-written one
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_bytes(data: bytes, path: Path) -> None:
    path = Path(path)
    tmp = _temporary(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_file(src: Path, path: Path) -> None:
    """A file's bytes to `path`, streamed (never whole in memory), through a temporary name."""
    import shutil

    path = Path(path)
    tmp = _temporary(path)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(text: str, path: Path) -> None:
    write_bytes(text.encode("utf-8"), path)


def write_json(data: Any, path: Path, *, indent: int = 2, sort_keys: bool = False) -> None:
    write_text(json.dumps(data, indent=indent, sort_keys=sort_keys, default=str) + "\n", path)


# zstd at level 1 (Arrow's default; polars' is 3): rows of ShareGPT text write in ~0.65 of level 3's CPU
# time for ~8% more bytes, and a one-step `pond run` spends a fifth of its time writing (#30)
ZSTD_LEVEL = 1
PARQUET = {"compression": "zstd", "compression_level": ZSTD_LEVEL, "statistics": False}


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    """Deterministic Parquet (no statistics timestamps, fixed compression): the same rows give the same bytes."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        df.write_parquet(tmp, **PARQUET)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet_frames(frames: Iterable[pl.DataFrame], path: Path, row_group_rows: int | None = None) -> int:
    """Frames of one schema -> one Parquet file as they come, a frame (or `row_group_rows` rows) per row group,
    never all of them in memory; written in place, so the caller's DONE marker must come after it. Returns the
    rows written; with no frames at all, no file is written."""
    import pyarrow.parquet as pq

    writer, rows = None, 0
    try:
        for df in frames:
            table = df.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd", compression_level=ZSTD_LEVEL,
                                          write_statistics=False)
            writer.write_table(table, row_group_size=row_group_rows)
            rows += len(df)
    finally:
        if writer is not None:
            writer.close()
    return rows


def read_json(path: Path) -> dict:
    """A JSON file's object, or {} when it is missing or unreadable (a resume treats both as not there)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_digest(path: Path) -> str:
    """blake2b of a file, or of a folder (its files' names and digests, in name order: a shard folder)."""
    h = hashlib.blake2b(digest_size=16)
    path = Path(path)
    if path.is_dir():
        for p in sorted(q for q in path.iterdir() if q.is_file() and not q.name.startswith(".")):
            h.update(p.name.encode() + b"\0" + file_digest(p).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def frame_hash(df, columns: tuple[str, ...] = ("id", "messages")) -> str:
    """Content hash of a DataFrame's rows (order matters): stable across polars versions, unlike
    DataFrame.hash_rows."""
    h = hashlib.blake2b(digest_size=16)
    for row in df.select([c for c in columns if c in df.columns]).iter_rows():
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def key_of(settings: Any) -> str:
    """A work's key from what decides its result (options, input digests, …): equal settings, equal key."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24]


def mark_finished(folder: Path, key: str, facts: dict | None = None, *, name: str = MARKER) -> None:
    """Say that `folder`'s work with this key is finished; write it after everything it vouches for.
    The marker's first line is the key (so the runner's older markers, a fingerprint alone, still read);
    `facts` follow as one JSON line. `name`: where a folder holds more than one work's results (the run
    folder: curation's steps have their own folders, the evaluation does not)."""
    text = key + "\n" + (json.dumps(facts, sort_keys=True, default=str) + "\n" if facts else "")
    write_text(text, Path(folder) / name)


def finished(folder: Path, key: str | None = None, *, name: str = MARKER) -> bool:
    """Whether `folder`'s work is finished, with this key when one is given."""
    try:
        first = (Path(folder) / name).read_text().split("\n", 1)[0]
    except OSError:
        return False
    return key is None or first == key


def finished_facts(folder: Path, *, name: str = MARKER) -> dict:
    """The facts a marker was written with ({} when none or not finished)."""
    try:
        lines = (Path(folder) / name).read_text().split("\n")
    except OSError:
        return {}
    try:
        return json.loads(lines[1]) if len(lines) > 1 and lines[1] else {}
    except ValueError:
        return {}

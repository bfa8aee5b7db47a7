"""MinHash's pairs held in bounded memory: in memory while they are few, in files on disk when they are many.

A heavily duplicated corpus makes many more candidate pairs than documents (the 5M-row scaled corpus: 52M pairs
of 2.07M documents), and every byte a pair costs was the one part of MinHash's peak that grew with the input.
Here pairs are held in `Pairs`: frames of (a, b, ...) sorted by (a, b) and read back in that order, one frame at a
time, that turn into Parquet files in a folder once they total more than `PAIRS_HELD` rows. `unique_keys` builds
the sorted distinct candidate pairs from the bands' pieces in the same bound: sorted runs merged in memory, spilled
as raw files past the bound and merged back key range by key range.

With fewer pairs than `PAIRS_HELD` (every run of the tests' size, every input under a few hundred thousand
rows) nothing is written and everything is as it was in memory.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import polars as pl

PAIRS_HELD = 8_000_000  # pairs held in memory at once (8 bytes each while merging, ~40 while verifying)
PAIR_SHIFT = np.uint64(32)  # a pair of document numbers (a < b < 2**32) is one uint64: a << 32 | b
LOW = np.uint64(2**32 - 1)
STRIDE = 1 << 16  # a spilled run keeps every STRIDE-th key in memory, to find key ranges without reading it


class Pairs:
    """Frames of pairs (a < b, Int32, and their columns), in (a, b) order: held in memory while they total at
    most `held` rows; past that, with a `folder`, every frame is a Parquet file there, read back when asked."""

    def __init__(self, folder: Path | None = None, held: int | None = None):
        self.folder, self.held = folder, PAIRS_HELD if held is None else held
        self.parts: list[pl.DataFrame | Path] = []
        self.rows = 0

    @classmethod
    def of(cls, frame: pl.DataFrame) -> Pairs:
        pairs = cls()
        pairs.add(frame)
        return pairs

    def add(self, frame: pl.DataFrame) -> None:
        self.parts.append(frame)
        self.rows += len(frame)
        if self.folder is not None and self.rows > self.held:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.parts = [self._write(i, p) if isinstance(p, pl.DataFrame) else p for i, p in enumerate(self.parts)]

    def _write(self, i: int, frame: pl.DataFrame) -> Path:
        path = self.folder / f"{i:06d}.parquet"
        frame.write_parquet(path, compression="lz4", statistics=False)
        return path

    def __len__(self) -> int:
        return self.rows

    @property
    def spilled(self) -> bool:
        return any(isinstance(p, Path) for p in self.parts)

    def frames(self, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
        for p in self.parts:
            frame = p if isinstance(p, pl.DataFrame) else pl.read_parquet(p, columns=columns)
            yield frame if columns is None else frame.select(columns)

    def ends(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(a, b) as numpy arrays, frame by frame."""
        for f in self.frames(["a", "b"]):
            yield f["a"].to_numpy(), f["b"].to_numpy()

    def frame(self) -> pl.DataFrame:
        """All of them as one frame: for callers whose pairs are few (a `Pairs` of no frames has none)."""
        return pl.concat(list(self.frames()))

    def map(self, fn: Callable[[pl.DataFrame], pl.DataFrame], folder: Path | None = None) -> Pairs:
        out = Pairs(folder if self.folder is not None else None, self.held)
        for f in self.frames():
            out.add(fn(f))
        return out

    def drop(self) -> None:
        """Let go of every frame (and its file)."""
        for p in self.parts:
            if isinstance(p, Path):
                p.unlink(missing_ok=True)
        self.parts, self.rows = [], 0


def key_frame(keys: np.ndarray) -> pl.DataFrame:
    """uint64 pair keys -> a frame of (a, b), Int32."""
    return pl.DataFrame({"a": (keys >> PAIR_SHIFT).astype(np.int32), "b": (keys & LOW).astype(np.int32)})


class _Run:
    """A sorted run of distinct uint64 keys written raw to `path`, with every STRIDE-th key kept in memory."""

    def __init__(self, path: Path, keys: np.ndarray):
        self.path, self.n = path, len(keys)
        keys.tofile(path)
        self.index = keys[::STRIDE].copy()

    def read(self, lo: int, hi: int) -> np.ndarray:
        return np.fromfile(self.path, dtype=np.uint64, count=max(hi - lo, 0), offset=lo * 8)

    def position(self, key: np.uint64) -> int:
        """The number of keys below `key`: a search of the index, then of one STRIDE block read from disk."""
        i = int(np.searchsorted(self.index, key, "left"))
        if i == 0:
            return 0
        lo = (i - 1) * STRIDE
        return lo + int(np.searchsorted(self.read(lo, min(lo + STRIDE, self.n)), key, "left"))


def unique_keys(pieces: Iterable[np.ndarray], folder: Path | None, held: int | None = None) -> Pairs:
    """The sorted distinct keys of every piece (uint64 pair keys), as `Pairs` of (a, b).

    Pieces are made distinct and merged into the sorted keys so far (a stable sort of sorted runs is a merge);
    with a `folder`, once those hold more than `held` keys they are written as a run and the merge starts again.
    Runs overlap, so at the end they are merged back a key range at a time, each range holding at most about
    `held` of the runs' keys: their distinct keys, range after range, are the pairs in order."""
    held = PAIRS_HELD if held is None else held
    found, pending, runs = np.empty(0, dtype=np.uint64), [], []

    def merge():
        merged = np.sort(np.concatenate([found, *pending]), kind="stable")
        return merged[np.r_[True, merged[1:] != merged[:-1]]] if len(merged) else merged

    for piece in pieces:
        pending.append(np.unique(piece))
        if sum(map(len, pending)) >= max(held // 4, 1):
            found, pending = merge(), []
            if folder is not None and len(found) > held:
                folder.mkdir(parents=True, exist_ok=True)
                runs.append(_Run(folder / f"run{len(runs):05d}.u64", found))
                found = np.empty(0, dtype=np.uint64)
    found, pending = merge(), []
    out = Pairs(folder, held)
    if not runs:
        out.add(key_frame(found))
        return out
    runs.append(_Run(folder / f"run{len(runs):05d}.u64", found))
    del found
    try:
        for lo, hi in _key_ranges(runs, held):
            part = np.concatenate([r.read(r.position(lo), r.n if hi is None else r.position(hi)) for r in runs])
            out.add(key_frame(np.unique(part)))
    finally:
        for r in runs:
            r.path.unlink(missing_ok=True)
    return out


def _key_ranges(runs: list[_Run], held: int) -> list[tuple[np.uint64, np.uint64 | None]]:
    """[lo, hi) key ranges (the last one open) over all runs, each with at most about `held` of their keys:
    cut at every (held / STRIDE)-th of the runs' index keys taken together."""
    marks = np.sort(np.concatenate([r.index for r in runs]))
    cuts = marks[max(held // STRIDE, 1)::max(held // STRIDE, 1)]
    bounds = [np.uint64(0), *np.unique(cuts)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:] + [None]) if hi is None or hi > lo]

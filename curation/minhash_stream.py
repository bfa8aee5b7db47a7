"""MinHash dedup over an input read in batches (the local executor's streaming, pond.executors.local):
the rules, signatures, bands, verification and keepers of curation.minhash, holding only what they
need of every row — its id, text length, score and band keys — never the rows themselves.

1. one pass over the ids (and scores): the internal document order;
2. one pass over the texts: band keys and text lengths (`candidate_pairs`, batch by batch);
3. candidate pairs, held in memory while they are at most `minhash_pairs.PAIRS_HELD`, else in files in the
   step folder (`curation.minhash_pairs`); their documents' texts gathered in one more pass, by verification
   chunk (`TextsOf`): held in memory when they total at most `SPILL_CHARS` characters, else written to
   Parquet files in the step folder, one per group of chunks, and read back a group at a time;
4. `verify_pairs` and `_cluster_info` as in memory; the verdicts of the rows in a cluster come back
   as marks (`pos`: the row's position in the input) for the rows to stream through
   `split_near_duplicates`.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation.keep import against_reference, check_score_column, has_reference, reference_rows
from curation.minhash import (STAGE, MinhashDedupOptions, _cluster_info, _write_pairs, candidate_pairs,
                              cluster_figures, edges_of, id_order, split_near_duplicates, verify_pairs)
from curation.step import StepContext

# candidate texts held at once while verifying (characters); above it they are spilled to disk by chunk group
SPILL_CHARS = 250_000_000
SPILL = "_minhash_spill"


class TextsOf:
    """The texts of the verification chunks' documents, gathered in one pass over the input (`texts()`):
    `plan` is told every candidate document's chunk; then `self(chunk, rows)` hands the texts of those
    rows (all in that chunk), chunk by chunk in increasing order."""

    def __init__(self, texts: Callable[[], Iterator[pl.Series]], lengths: np.ndarray, folder: Path,
                 budget: int = 0):
        self.texts, self.lengths, self.folder = texts, lengths, folder
        self.budget = budget or SPILL_CHARS
        self.loaded: tuple[int, np.ndarray, pl.Series] | None = None  # group, its rows (sorted), their texts
        self.groups = 0

    def plan(self, cand: np.ndarray, doc_chunk: np.ndarray, order: np.ndarray) -> None:
        rows = order[cand]
        chunk_chars = np.bincount(doc_chunk, weights=self.lengths[rows] + 1)
        # consecutive chunks share a group while their texts fit in the budget together
        self.group_of_chunk = np.zeros(len(chunk_chars), dtype=np.int64)
        g, total = 0, 0.0
        for c, chars in enumerate(chunk_chars):
            if total and total + chars > self.budget:
                g, total = g + 1, 0.0
            self.group_of_chunk[c], total = g, total + chars
        self.groups = g + 1
        row_group = np.full(len(self.lengths), -1, dtype=np.int64)
        row_group[rows] = self.group_of_chunk[doc_chunk]
        held: list[pl.DataFrame] = []
        if self.groups > 1:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
        lo = 0
        for i, batch in enumerate(self.texts()):
            grp = row_group[lo:lo + len(batch)]
            picked = np.flatnonzero(grp >= 0)
            if len(picked):
                part = pl.DataFrame({"row": (picked + lo).astype(np.int64), "g": grp[picked],
                                     "text": batch.gather(picked)})
                if self.groups == 1:
                    held.append(part.drop("g"))
                else:
                    for (key,), rows_g in part.group_by("g", maintain_order=True):
                        rows_g.drop("g").write_parquet(self.folder / f"g{key:05d}-{i:06d}.parquet")
            lo += len(batch)
        if self.groups == 1:
            self.loaded = self._held(0, held)

    def __call__(self, chunk: int, rows: np.ndarray) -> pl.Series:
        g = int(self.group_of_chunk[chunk])
        if self.loaded is None or self.loaded[0] != g:
            self.loaded = None  # the previous group is freed before the next is read
            files = sorted(self.folder.glob(f"g{g:05d}-*.parquet"))
            self.loaded = self._held(g, [pl.read_parquet(f) for f in files])
        _, held_rows, texts = self.loaded
        return texts.gather(np.searchsorted(held_rows, rows))

    @staticmethod
    def _held(group: int, parts: list[pl.DataFrame]) -> tuple[int, np.ndarray, pl.Series]:
        """A group's rows and texts, the texts left in their parts' buffers (a rechunk would copy them all)."""
        if not parts:
            return group, np.empty(0, dtype=np.int64), pl.Series("text", [], dtype=pl.Utf8)
        held = pl.concat(parts, rechunk=False)
        return group, held["row"].to_numpy(), held["text"]

    def close(self) -> None:
        self.loaded = None
        shutil.rmtree(self.folder, ignore_errors=True)


def stream_marks(read: Any, opts: MinhashDedupOptions, ctx: StepContext) -> tuple[pl.DataFrame, Callable]:
    """minhash_dedup over batches. `read(columns)`: a pass over the input in order; `read.schema`: its
    columns' types. Returns the marks of the rows in a cluster (`pos`, dup_cluster, duplicate_of,
    dup_jaccard) and `split_near_duplicates`; the step's figures go to ctx.stats as minhash_dedup's."""
    check_score_column(STAGE, opts.keep, opts.score_column, list(read.schema))
    seed = ctx.seed if opts.seed is None else opts.seed
    score = [opts.score_column] if opts.keep == "quality" else []
    ref = None
    if has_reference(ctx.reference):  # the reference rows lead and are compared like any row
        ref = reference_rows(ctx.reference, read.schema, ["id", opts.column] + score)
    n_ref = 0 if ref is None else len(ref)
    heads = [b for b in read(["id"] + score)]
    narrow = pl.concat(([ref.select("id", *score)] if ref is not None else []) + heads)
    del heads
    n = len(narrow)
    order, rank = id_order(narrow["id"])

    def texts() -> Iterator[pl.Series]:
        if ref is not None:
            yield ref[opts.column]
        for b in read([opts.column]):
            yield b[opts.column]

    lengths: list[pl.Series] = []

    def measured() -> Iterator[pl.Series]:
        for t in texts():
            lengths.append(t.fill_null("").str.len_chars().cast(pl.Int64))
            yield t

    folder = (ctx.step_dir / SPILL) if ctx.step_dir is not None else Path(tempfile.mkdtemp(prefix="pond-mh-"))
    try:
        pairs, figures = candidate_pairs(measured(), rank, opts, seed, ctx, folder / "pairs")
        narrow = narrow.with_columns(pl.concat(lengths).alias("__len")).select("id", "__len", *score)
        t0 = time.perf_counter()
        source = TextsOf(texts, narrow["__len"].to_numpy(), folder / "texts")
        try:
            verified = verify_pairs(source, order, pairs, opts, ctx, folder / "pairs")
        finally:
            source.close()
        pairs.drop()
        edges = edges_of(verified, opts.threshold, folder / "pairs")
        t1 = time.perf_counter()
        info = _cluster_info(narrow, order, edges, opts, n_ref)
        if ctx.step_dir is not None:
            _write_pairs(info, verified, opts.threshold, ctx)
        clustered = info.filter(pl.col("__in") & (pl.col("__row") >= n_ref))
        marks = clustered.select((pl.col("__row") - n_ref).alias("pos"), "dup_cluster", "duplicate_of",
                                 "dup_jaccard")
        rejected = clustered.filter(pl.col("duplicate_of") != pl.col("id"))
        figures.update(cluster_figures(n, verified, edges, info, len(rejected), t0, t1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if verified.spilled:
        figures["pairs_spilled_files"] = len(verified.parts)
    if source.groups > 1:
        figures["verify_spill_groups"] = source.groups
    if n_ref:
        dups = rejected.select((pl.col("__row") - n_ref).alias("pos"), "duplicate_of")
        if opts.keep != "first":  # the keep rule reads these rows' texts (and scores): one more pass
            wanted = dups.filter(pl.col("duplicate_of").is_in(ctx.reference["id"].implode()))["pos"]
            rows, lo = [], 0
            for b in read(["id", opts.column] + score):
                pos = pl.int_range(lo, lo + len(b), dtype=pl.Int64, eager=True)
                rows.append(b.filter(pos.is_in(wanted)))
                lo += len(b)
            dups = pl.concat(rows).join(rejected.select("id", "duplicate_of"), on="id", how="left")
        figures["against_reference"] = against_reference(ctx.reference, dups, n - n_ref, opts.keep,
                                                         column=opts.column, score_column=opts.score_column,
                                                         tiebreak="id")
    ctx.stats.update(figures)
    return marks, split_near_duplicates

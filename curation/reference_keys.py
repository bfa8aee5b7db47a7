"""Exact and MinHash dedup against reference rows given by their keys, not their rows.

`pond update` compares a drop with the pond (docs/continuous-curation.md). The step's own function
(`exact_dedup`, `minhash_dedup`) takes the pond as reference *rows* and hashes every one of them
again; here the pond comes as the keys each generation kept beside its step folder
(pond.generation_keys), so a drop hashes its own rows only:

- exact: `key_hashes` (id, k1, k2) of every reference row, in reference order, then the drop's:
  a row's `duplicate_of` is its key group's first row, as in `exact_dedup.stream_marks`;
- MinHash: per row its id, text length (`narrow_rows`), score, `has` (it has shingles) and one
  column per LSH band (`band_keys`). Candidates come from every row's band keys, the reference's and
  the drop's together, so they are the pairs the step itself would find; a pair's Jaccard is taken
  from the pairs earlier generations verified (`known`: id_a, id_b, jaccard) or verified here, reading
  the texts of only those reference rows (`texts_of(ids)`). Clusters, keepers and reasons are then
  the step's own (`_cluster_info`, `split_near_duplicates`).

Both return (kept, rejected, keys of the drop's rows): the keys the drop's generation keeps for the
next drop. Results equal the step's with the reference rows (tests/test_update_keys.py).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import polars as pl

from curation.exact_dedup import (ExactDedupOptions, duplicate_groups, duplicate_of, exact_dedup, key_hashes,
                                  split_exact)
from curation.keep import against_reference, check_score_column
from curation.minhash import (STAGE, MinhashDedupOptions, _cluster_info, _write_pairs, all_band_keys,
                              cluster_figures, edges_of, id_order, lsh_pairs, lsh_params, minhash_dedup, narrow_rows,
                              split_near_duplicates, verify_pairs)
from curation.minhash_pairs import Pairs
from curation.step import StepContext

TextsOf = Callable[[list[str]], pl.DataFrame]  # ids -> (id, text column[, score column]) of those reference rows


# -- exact ------------------------------------------------------------------------------------------

def exact_keys(df: pl.DataFrame, opts: ExactDedupOptions, ctx: StepContext) -> pl.DataFrame:
    """(id, k1, k2) of every row, in row order."""
    return key_hashes(df, opts, "id")


def exact_against(df: pl.DataFrame, opts: ExactDedupOptions, ctx: StepContext, ref: pl.DataFrame,
                  texts_of: TextsOf | None = None, known: pl.DataFrame | None = None):
    """exact_dedup of df with the reference rows' keys `ref` (id, k1, k2) leading."""
    new = exact_keys(df, opts, ctx)
    marks = pl.concat([ref.select(new.columns), new]).select(duplicate_of(["k1", "k2"])).slice(len(ref))
    kept, rejected = split_exact(df.with_columns(marks.to_series().alias("duplicate_of")))
    ctx.stats["duplicate_groups"] = duplicate_groups(rejected["duplicate_of"])
    if len(ref):
        ctx.stats["against_reference"] = against_reference(ref.select("id"), rejected, len(df))
    return kept, rejected, new


# -- MinHash ----------------------------------------------------------------------------------------

def minhash_keys(df: pl.DataFrame, opts: MinhashDedupOptions, ctx: StepContext) -> pl.DataFrame:
    """id, __len, the score (keep=quality), has and b0.. (one uint64 key per LSH band) of every row."""
    seed = ctx.seed if opts.seed is None else opts.seed
    bands, rows = lsh_params(opts)
    keys, has = all_band_keys([df[opts.column]], np.arange(len(df)), opts, seed, bands, rows, ctx)
    return narrow_rows(df, opts).with_columns(pl.Series("has", has),
                                              *[pl.Series(f"b{j}", keys[:, j]) for j in range(bands)])


def _candidates(keys: pl.DataFrame, order: np.ndarray, opts: MinhashDedupOptions, ctx: StepContext) -> pl.DataFrame:
    """Candidate pairs (a < b, internal document numbers) from every row's band keys, as `candidate_pairs`."""
    bands = [c for c in keys.columns if c.startswith("b") and c[1:].isdigit()]
    by_doc = keys[order]
    docs = np.flatnonzero(by_doc["has"].to_numpy())
    return lsh_pairs(docs, (by_doc[j].to_numpy()[docs] for j in ctx.track(bands, "lsh bands", total=len(bands))),
                     opts.max_bucket_size).frame()


def _jaccards(pairs: pl.DataFrame, ids: pl.Series, known: pl.DataFrame) -> pl.DataFrame:
    """The candidate pairs with the Jaccard an earlier generation verified (null where none did)."""
    named = pairs.with_columns(ids.gather(pairs["a"]).alias("id_a"), ids.gather(pairs["b"]).alias("id_b"))
    return named.join(known.select("id_a", "id_b", "jaccard").unique(["id_a", "id_b"]), on=["id_a", "id_b"],
                      how="left", maintain_order="left").drop("id_a", "id_b")


def _texts(df: pl.DataFrame, opts: MinhashDedupOptions, ids: pl.Series, rows: np.ndarray, n_ref: int,
           texts_of: TextsOf) -> pl.Series:
    """The text column of every row (reference rows first), null but for the reference `rows` listed."""
    ref_rows = np.unique(rows[rows < n_ref])
    texts = pl.concat([pl.Series(opts.column, [None] * n_ref, dtype=pl.Utf8), df[opts.column].cast(pl.Utf8)])
    if len(ref_rows):
        wanted = ids.gather(ref_rows)
        found = texts_of(wanted.to_list())
        got = pl.DataFrame({"id": wanted}).join(found.unique("id"), on="id", how="left", maintain_order="left")
        texts = texts.scatter(ref_rows, got[opts.column].cast(pl.Utf8))
    return texts


def minhash_against(df: pl.DataFrame, opts: MinhashDedupOptions, ctx: StepContext, ref: pl.DataFrame,
                    texts_of: TextsOf, known: pl.DataFrame):
    """minhash_dedup of df with the reference rows' keys `ref` (`minhash_keys`) leading."""
    check_score_column(STAGE, opts.keep, opts.score_column, df.columns)
    t0 = time.perf_counter()
    new = minhash_keys(df, opts, ctx)
    t1 = time.perf_counter()
    # typed as the drop's; a score the pond was never given is null (as `keep.reference_rows` has it)
    typed = [pl.col(c).cast(new[c].dtype) if c in ref.columns else pl.lit(None, new[c].dtype).alias(c)
             for c in new.columns]
    every = pl.concat([ref.select(typed), new])
    n_ref, n = len(ref), len(every)
    order, _ = id_order(every["id"])
    pairs = _jaccards(_candidates(every, order, opts, ctx), every["id"].gather(order), known)
    bands, band_rows = lsh_params(opts)
    figures = {"bands": bands, "rows": band_rows, "docs_without_shingles": int(n - every["has"].sum()),
               "candidate_pairs": len(pairs), "signature_seconds": round(t1 - t0, 3),
               "candidate_seconds": round(time.perf_counter() - t1, 3)}
    todo = pairs.filter(pl.col("jaccard").is_null()).drop("jaccard")
    t2 = time.perf_counter()
    rows = order[np.concatenate([todo["a"].to_numpy(), todo["b"].to_numpy()])]
    texts = _texts(df, opts, every["id"], rows, n_ref, texts_of)
    verified = Pairs.of(pl.concat([pairs.filter(pl.col("jaccard").is_not_null()),
                                   verify_pairs(texts, order, Pairs.of(todo), opts, ctx).frame()]).sort("a", "b"))
    edges = edges_of(verified, opts.threshold)
    t3 = time.perf_counter()
    info = _cluster_info(every.select(narrow_rows(df.head(0), opts).columns), order, edges, opts, n_ref)
    if ctx.step_dir is not None:
        _write_pairs(info, verified, opts.threshold, ctx)
    marks = info.select("dup_cluster", "duplicate_of", "dup_jaccard").slice(n_ref)
    kept, rejected = split_near_duplicates(df.with_columns(marks))
    figures.update(cluster_figures(n, verified, edges, info, len(rejected), t2, t3))
    figures["verified_here"] = len(todo)
    if n_ref:
        figures["against_reference"] = against_reference(
            _named_reference(ref, rejected, opts, texts_of), rejected, len(df), opts.keep, column=opts.column,
            score_column=opts.score_column, tiebreak="id")
    ctx.stats.update(figures)
    return kept, rejected, new


def _named_reference(ref: pl.DataFrame, rejected: pl.DataFrame, opts: MinhashDedupOptions,
                     texts_of: TextsOf) -> pl.DataFrame:
    """The reference rows as `against_reference` reads them: their ids, and for a keep rule other than
    `first` the text (and score) of the rows a drop row was rejected for."""
    if opts.keep == "first":
        return ref.select("id")
    named = rejected["duplicate_of"].drop_nulls().unique()
    rows = texts_of(ref.filter(pl.col("id").is_in(named.implode()))["id"].to_list()).unique("id")
    return ref.select("id").join(rows, on="id", how="left", maintain_order="left")


# the step functions that have a keyed form: (keys of a generation's rows, the drop against keys)
KEYED: dict[Callable, tuple[Callable, Callable]] = {
    exact_dedup: (exact_keys, exact_against),
    minhash_dedup: (minhash_keys, minhash_against),
}


def keys_in_batches(keys_of: Callable, batches: Iterable[pl.DataFrame], opts, ctx: StepContext,
                    empty: pl.DataFrame) -> pl.DataFrame:
    """A generation's keys, its rows read a batch at a time (never all at once); `empty`: its columns."""
    return pl.concat([keys_of(b, opts, ctx) for b in batches] or [keys_of(empty, opts, ctx)])

"""Decontamination: drop rows sharing a word n-gram (default 13) with an eval / held-out set.

N-grams are taken per turn (each message's content; plain rows: the text), so no n-gram spans two
turns, after the same normalisation as MinHash dedup (lowercase, punctuation and case ignored,
curation.shingles). Only full n-grams count: a turn shorter than `ngram` words contributes
nothing, on either side, so short phrases common to many texts ("What is the capital of") never
match. N-grams are compared as 64-bit hashes (a chance collision: ~2^-64 per pair).

An n-gram found in more than `max_row_frequency` input rows is treated as boilerplate, not as a
leaked eval item (chat answers share stock 13-word closers such as "i hope this helps let me know
if you have any other questions"), and ignored, as NeMo Curator's `max_matches` (also 10) does.
Run deduplication first: an eval row copied more than that many times would pass as boilerplate.

A rejected row's reason names the eval row it overlaps (`eval_overlap:<eval id>`, the smallest such
id); it also gets `contaminated_by` and `shared_ngrams` (distinct n-grams shared with any eval row).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import polars as pl
from pydantic import Field

from curation.eval_sets import FILES as EVAL_SETS, eval_set_path
from curation.ingest import read_records
from curation.shingles import shingle_hashes
from curation.step import StepContext, StepOptions, reject

STAGE = "decontaminate"


class DecontaminateOptions(StepOptions):
    against: str | list[str] = Field(
        description="eval / held-out file(s), directories or globs (any format ingest reads), or an evaluation set "
                    "pond knows by name: alpaca_eval (the reference answers), ifeval (the benchmark's prompts)")
    ngram: int = Field(13, ge=1, le=64, description="n-gram length in normalised words")
    min_shared: int = Field(1, ge=1, description="reject a row sharing at least this many distinct n-grams with the eval set")
    max_row_frequency: int | None = Field(
        10, ge=1, description="n-grams found in more than this many rows of the input are boilerplate (\"i hope this "
                              "helps let me know if you have any other questions\" is 13 words) and ignored; null keeps all")
    batch_size: int = Field(20_000, ge=1, description="rows hashed at a time (bounds memory)")


def _segments(df: pl.DataFrame) -> pl.DataFrame:
    """(row, segment) pairs: each turn's content, or the text of a plain row."""
    turns = pl.col("messages").list.eval(pl.element().struct.field("content"))
    return (df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
                      pl.when(pl.col("messages").list.len() > 0).then(turns)
                      .otherwise(pl.concat_list(pl.col("text"))).alias("seg"))
            .explode("seg"))


def ngram_table(df: pl.DataFrame, ngram: int) -> pl.DataFrame:
    """Distinct (row, h) n-gram hashes of the rows of `df` (row = position in `df`)."""
    seg = _segments(df)
    hashes, offsets = shingle_hashes(seg["seg"].fill_null(""), ngram, "word", short_texts=False)
    rows = np.repeat(seg["row"].to_numpy(), np.diff(offsets))
    return pl.DataFrame({"row": rows, "h": hashes}).unique()


def eval_ngrams(paths: list[str], ngram: int, ctx: StepContext) -> tuple[pl.DataFrame, dict]:
    """(h -> smallest eval id having it, figures about the eval set)."""
    # absolute, as a set pond knows by name is: a relative run folder (`--out runs/x`) mixed with it is refused
    evals, bad = read_records([str((eval_set_path(p) if p in EVAL_SETS else ctx.resolve(p)).absolute()) for p in paths])
    if evals.is_empty():
        raise ValueError(f"decontaminate: no usable rows in {paths}")
    table = ngram_table(evals, ngram)
    ids = evals["id"]
    by_hash = (table.with_columns(ids.gather(table["row"]).alias("eval_id"))
               .group_by("h").agg(pl.col("eval_id").min()))
    return by_hash, {"eval_rows": len(evals), "eval_rows_unreadable": len(bad), "eval_ngrams": len(by_hash)}


def contaminated_rows(batches: Iterable[pl.DataFrame], opts: DecontaminateOptions, ctx: StepContext) -> pl.DataFrame:
    """(row, shared_ngrams, contaminated_by) of the rows that share at least `min_shared` n-grams with the eval
    set, sorted by row; `batches`: the rows in order, at most `batch_size` at a time. Only the n-grams found
    in the eval set are held, so the boilerplate count sees every row without holding any; the figures go to
    ctx.stats."""
    paths = [opts.against] if isinstance(opts.against, str) else list(opts.against)
    table, figures = eval_ngrams(paths, opts.ngram, ctx)
    found, lo = [], 0
    for batch in batches:
        grams = ngram_table(batch, opts.ngram)
        found.append(grams.join(table, on="h").with_columns(pl.col("row") + lo))
        lo += len(batch)
    matches = pl.concat(found) if found else pl.DataFrame(schema={"row": pl.Int64, "h": pl.UInt64, "eval_id": pl.Utf8})
    if opts.max_row_frequency is not None:
        common = matches.group_by("h").agg(pl.len().alias("n")).filter(pl.col("n") > opts.max_row_frequency)
        figures["boilerplate_ngrams_ignored"] = len(common)
        matches = matches.join(common, on="h", how="anti")
    hits = (matches.group_by("row").agg(pl.len().alias("shared_ngrams"), pl.col("eval_id").min().alias("contaminated_by"))
            .filter(pl.col("shared_ngrams") >= opts.min_shared).sort("row"))
    figures.update({"contaminated": len(hits),
                    "eval_rows_named": int(hits["contaminated_by"].n_unique()) if len(hits) else 0})
    ctx.stats.update(figures)
    return hits


def split_contaminated(marked: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows with `shared_ngrams` and `contaminated_by` (null where clean) -> (kept, rejected naming the eval row)."""
    bad = pl.col("contaminated_by").is_not_null()
    kept = marked.filter(~bad).drop("shared_ngrams", "contaminated_by")
    return kept, reject(marked.filter(bad), STAGE, pl.lit("eval_overlap:") + pl.col("contaminated_by"))


def decontaminate(df: pl.DataFrame, opts: DecontaminateOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    starts = range(0, len(df), opts.batch_size)
    batches = (df.slice(s, opts.batch_size) for s in ctx.track(starts, "decontaminate", total=len(starts)))
    hits = contaminated_rows(batches, opts, ctx)
    marked = (df.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
              .join(hits, on="row", how="left", maintain_order="left").drop("row"))
    return split_contaminated(marked)


def stream_marks(read: Callable[[list[str]], Iterator[pl.DataFrame]], opts: DecontaminateOptions,
                 ctx: StepContext) -> tuple[pl.DataFrame, Callable]:
    """decontaminate over batches (the local executor's streaming): one pass over the turns, `batch_size` rows
    hashed at a time. Returns the contaminated rows' marks (`pos`, shared_ngrams, contaminated_by) and
    `split_contaminated`."""
    def batches() -> Iterator[pl.DataFrame]:
        for batch in read(["messages", "text"]):
            for s in range(0, len(batch), opts.batch_size):
                yield batch.slice(s, opts.batch_size)

    return contaminated_rows(batches(), opts, ctx).rename({"row": "pos"}), split_contaminated

"""Exact deduplication: rows whose normalised text is identical to an earlier row's are dropped.

Reference rows (`ctx.reference`) count as earlier than every row of the step's input: a row equal
to one is rejected naming it; they are never in the output.

`stream_marks` is the same rule for an input read in batches (the local executor's streaming and the
Ray executor both key rows by `key_hashes`, two 64-bit hashes of the normalised text): only ids and
keys are held, and the verdicts come back for the rows to stream through `split_exact`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import polars as pl
from pydantic import Field

from curation.keep import against_reference, has_reference, reference_rows, with_reference
from curation.shingles import fold_whitespace
from curation.step import StepContext, StepOptions, reject

STAGE = "exact_dedup"


class ExactDedupOptions(StepOptions):
    lowercase: bool = Field(True, description="compare texts case-insensitively")
    strip_punctuation: bool = Field(True, description="ignore punctuation when comparing")
    column: str = Field("text", description="column whose normalised value is compared")


def normalised_text(column: str, lowercase: bool = True, strip_punctuation: bool = True) -> pl.Expr:
    """Whitespace-folded (and optionally lowercased, punctuation-free) text."""
    text = pl.col(column)
    # NFKC leaves ASCII as it is: normalising only the texts with other characters costs ~0.4 of all
    expr = pl.when(text.str.contains(r"[^\x00-\x7F]")).then(text.str.normalize("NFKC")).otherwise(text)
    if lowercase:
        expr = expr.str.to_lowercase()
    if strip_punctuation:
        expr = expr.str.replace_all(r"[\p{P}\p{S}]+", " ")
    return fold_whitespace(expr)


def key_hashes(df: pl.DataFrame, opts: ExactDedupOptions, *columns: str | pl.Expr) -> pl.DataFrame:
    """`columns` of `df`, then each row's key as two 64-bit hashes of its normalised text (k1, k2): what
    is held instead of the text. The text is normalised once (two hashes of one expression in an eager
    select would normalise it twice)."""
    key = normalised_text(opts.column, opts.lowercase, opts.strip_punctuation).alias("__key")
    return df.select(*columns, key).select(
        pl.exclude("__key"), pl.col("__key").hash(seed=1).alias("k1"), pl.col("__key").hash(seed=2).alias("k2"))


def duplicate_of(key: str | list[str], order: str | list[pl.Expr] | None = None) -> pl.Expr:
    """Per row: the id of its key group's representative (the first row, in input order or by
    `order`), or null for the representative itself."""
    ids = pl.col("id") if order is None else pl.col("id").sort_by(order)
    first = ids.first().over(key)
    return pl.when(first != pl.col("id")).then(first)


def split_exact(marked: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows marked with `duplicate_of` -> (kept, rejected with `exact_duplicate_of:<id>`)."""
    dup = pl.col("duplicate_of").is_not_null()
    kept = marked.filter(~dup).drop("duplicate_of")
    return kept, reject(marked.filter(dup), STAGE, pl.lit("exact_duplicate_of:") + pl.col("duplicate_of"))


def duplicate_groups(duplicate_of_column: pl.Series) -> int:
    """The figure `duplicate_groups`: how many representatives lost at least one duplicate."""
    return int(duplicate_of_column.n_unique()) if len(duplicate_of_column) else 0


def exact_dedup(df: pl.DataFrame, opts: ExactDedupOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    key = normalised_text(opts.column, opts.lowercase, opts.strip_punctuation).alias("__key")
    # the reference rows lead, so a group's first row is a reference row whenever it has one
    rows, n_ref = with_reference(df, ctx.reference, ["id", opts.column])
    marks = rows.with_columns(key).select(duplicate_of("__key").alias("duplicate_of")).slice(n_ref)
    kept, rejected = split_exact(df.with_columns(marks["duplicate_of"]))
    ctx.stats["duplicate_groups"] = duplicate_groups(rejected["duplicate_of"])
    if has_reference(ctx.reference):
        ctx.stats["against_reference"] = against_reference(ctx.reference, rejected, len(df))
    return kept, rejected


def stream_marks(read: Callable[[list[str]], Iterator[pl.DataFrame]], opts: ExactDedupOptions,
                 ctx: StepContext) -> tuple[pl.DataFrame, Callable]:
    """exact_dedup over batches: `read(columns)` passes over the input in order. Returns the verdicts
    (`pos`: the row's position in the input, `duplicate_of`) of the rows it rejects, and `split_exact`."""
    keys, schema = [], None
    for batch in read(["id", opts.column]):
        schema = schema or batch.schema
        keys.append(key_hashes(batch, opts, "id"))
    rows = pl.concat(keys).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("pos"))
    n_ref = 0
    if has_reference(ctx.reference):  # the reference rows lead, as in exact_dedup
        ref = key_hashes(reference_rows(ctx.reference, schema, ["id", opts.column]), opts, "id")
        rows = pl.concat([ref.with_columns(pl.lit(-1, pl.Int64).alias("pos")), rows])
        n_ref = len(ref)
    marks = (rows.with_columns(duplicate_of(["k1", "k2"]).alias("duplicate_of")).slice(n_ref)
             .filter(pl.col("duplicate_of").is_not_null()).select("pos", "duplicate_of"))
    ctx.stats["duplicate_groups"] = duplicate_groups(marks["duplicate_of"])
    if n_ref:
        ctx.stats["against_reference"] = against_reference(ctx.reference, marks, len(rows) - n_ref)
    return marks, split_exact

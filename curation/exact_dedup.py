"""Exact deduplication: rows whose normalised text is identical to an earlier row's are dropped.

Reference rows (`ctx.reference`) count as earlier than every row of the step's input: a row equal
to one is rejected naming it; they are never in the output.
"""
from __future__ import annotations

import polars as pl
from pydantic import Field

from curation.keep import against_reference, has_reference, with_reference
from curation.step import StepContext, StepOptions, reject

STAGE = "exact_dedup"


class ExactDedupOptions(StepOptions):
    lowercase: bool = Field(True, description="compare texts case-insensitively")
    strip_punctuation: bool = Field(True, description="ignore punctuation when comparing")
    column: str = Field("text", description="column whose normalised value is compared")


def normalised_text(column: str, lowercase: bool = True, strip_punctuation: bool = True) -> pl.Expr:
    """Whitespace-folded (and optionally lowercased, punctuation-free) text."""
    expr = pl.col(column).str.normalize("NFKC")
    if lowercase:
        expr = expr.str.to_lowercase()
    if strip_punctuation:
        expr = expr.str.replace_all(r"[\p{P}\p{S}]+", " ")
    return expr.str.replace_all(r"\s+", " ").str.strip_chars()


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

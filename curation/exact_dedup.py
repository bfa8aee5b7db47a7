"""Exact deduplication: rows whose normalised text is identical to an earlier row's are dropped."""
from __future__ import annotations

import polars as pl
from pydantic import Field

from curation.step import StepContext, StepOptions, reject


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


def exact_dedup(df: pl.DataFrame, opts: ExactDedupOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    keyed = df.with_columns(
        normalised_text(opts.column, opts.lowercase, opts.strip_punctuation).alias("__key"),
    ).with_columns(
        # the first row (input order) of each key is the one that stays
        pl.col("id").first().over("__key").alias("__first"),
    )
    is_first = pl.col("__first") == pl.col("id")
    kept = keyed.filter(is_first).drop("__key", "__first")
    dropped = keyed.filter(~is_first).rename({"__first": "duplicate_of"}).drop("__key")
    rejected = reject(dropped, "exact_dedup", pl.lit("exact_duplicate_of:") + pl.col("duplicate_of"))
    ctx.stats["duplicate_groups"] = int(dropped["duplicate_of"].n_unique()) if len(dropped) else 0
    return kept, rejected

"""The keep rule: which row of a group of duplicates stays.

Written once, here, for MinHash and semantic dedup on both executors:
- `first`: the earliest in input order;
- `longest`: the longest text;
- `quality`: the highest score (a missing or NaN score counts as the lowest), then the longest text.
Remaining ties go to the `tiebreak` column: MinHash breaks them by the smaller id, semantic dedup
by input order (each step's option help says which).

Reference rows (`StepContext.reference`, datatrove's `index_folder`) come before every new row,
whatever the rule: they were curated already, so a new row can only be their duplicate. The dedup
steps read them through `with_reference` and report what they met with `against_reference`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import polars as pl

Keep = Literal["first", "longest", "quality"]


def check_score_column(stage: str, keep: str, score_column: str, columns: Sequence[str]) -> None:
    """keep=quality needs its score column; fail before any work is done."""
    if keep == "quality" and score_column not in columns:
        raise ValueError(f"{stage} keep=quality: no column {score_column!r} (columns: {list(columns)})")


def keep_order(keep: str, *, position: str, length: str, score: str, tiebreak: str,
               first: str | None = None) -> list[pl.Expr]:
    """Sort keys (ascending) under which a group's first row is the one kept; rows where the boolean
    column `first` is true (reference rows) before all others."""
    lead = [pl.col(first).not_()] if first else []
    if keep == "first":
        return lead + [pl.col(position)]
    if keep == "longest":
        return lead + [-pl.col(length), pl.col(tiebreak)]
    missing_last = pl.col(score).cast(pl.Float64).fill_nan(None).neg().fill_null(float("inf"))
    return lead + [missing_last, -pl.col(length), pl.col(tiebreak)]


def keeper(keep: str, group: str | list[str], *, position: str, length: str, score: str, tiebreak: str,
           ident: str = "id", first: str | None = None) -> pl.Expr:
    """Per row: the id of the row its group keeps (a row of `first`, the reference rows, if it has one)."""
    order = keep_order(keep, position=position, length=length, score=score, tiebreak=tiebreak, first=first)
    return pl.col(ident).sort_by(order).first().over(group)


def keep_rank(keep: str, length: pl.Series, score: pl.Series | None, first: np.ndarray | None = None) -> np.ndarray:
    """Rank of every row (0 = kept first), for columns in input order; ties go to input order; rows
    where `first` is true (reference rows) rank before all others."""
    n = len(length)
    row = np.arange(n)
    if keep == "first" and first is None:
        return row
    frame = pl.DataFrame({"row": row, "len": length.cast(pl.Int64),
                          "score": pl.Series([None] * n, dtype=pl.Float64) if score is None else score,
                          "first": np.zeros(n, dtype=bool) if first is None else first})
    order = frame.sort(keep_order(keep, position="row", length="len", score="score", tiebreak="row",
                                  first=None if first is None else "first"))["row"].to_numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[order] = row
    return rank


# -- reference rows ------------------------------------------------------------------------------

def has_reference(reference: pl.DataFrame | None) -> bool:
    return reference is not None and not reference.is_empty()


def reference_rows(reference: pl.DataFrame, schema: pl.Schema, columns: list[str]) -> pl.DataFrame:
    """The `columns` of the reference rows, typed as the new rows' `schema` (one frame to compare);
    a column the reference lacks (a score the pond was never given) is null."""
    return reference.select([pl.col(c).cast(schema[c]) if c in reference.columns else pl.lit(None, schema[c]).alias(c)
                             for c in columns])


def with_reference(df: pl.DataFrame, reference: pl.DataFrame | None,
                   columns: list[str]) -> tuple[pl.DataFrame, int]:
    """The `columns` a dedup rule reads, of the reference rows followed by df's, and how many
    reference rows lead (0 without a reference: then just df's columns)."""
    rows = df.select(columns)
    if not has_reference(reference):
        return rows, 0
    return pl.concat([reference_rows(reference, rows.schema, columns), rows]), len(reference)


def against_reference(reference: pl.DataFrame, rejected: pl.DataFrame, new_rows: int, keep: str = "first", *,
                      column: str = "text", score_column: str = "quality", tiebreak: str | None = None) -> dict:
    """The figures `against_reference` of a dedup step given reference rows: how many it compared,
    how many new rows duplicate one, and how many of those the keep rule alone would have kept
    instead (the reference row beat the rule). `rejected` has the new rows' `duplicate_of`;
    `tiebreak`: the column the step breaks ties by (None: input order)."""
    dups = rejected.filter(pl.col("duplicate_of").is_in(reference["id"].implode()))
    return {"reference_rows": len(reference), "new_rows": new_rows, "duplicates_of_reference_rows": len(dups),
            "reference_wins_over_keep_rule": _overruled(reference, dups, keep, column, score_column, tiebreak)}


def _overruled(reference: pl.DataFrame, dups: pl.DataFrame, keep: str, column: str, score_column: str,
               tiebreak: str | None) -> int:
    """How many of `dups` rank ahead of the reference row they name under the keep rule alone."""
    if keep == "first" or dups.is_empty():
        return 0  # reference rows come first in input order: the rule agrees with them
    columns = ["id", column] + ([score_column] if keep == "quality" else [])
    named = reference.filter(pl.col("id").is_in(dups["duplicate_of"].implode())).unique("id", maintain_order=True)
    rows = pl.concat([reference_rows(named, dups.schema, columns).with_columns(pl.lit(None, pl.Utf8).alias("__of")),
                      dups.select(*columns, pl.col("duplicate_of").cast(pl.Utf8).alias("__of"))])
    rows = rows.with_columns(pl.int_range(pl.len()).alias("__pos"),
                             pl.col(column).fill_null("").str.len_chars().cast(pl.Int64).alias("__len"),
                             (pl.col(score_column) if keep == "quality" else pl.lit(None, pl.Float64)).alias("__score"))
    order = keep_order(keep, position="__pos", length="__len", score="__score", tiebreak=tiebreak or "__pos")
    ranked = rows.with_columns(pl.int_range(pl.len()).sort_by(order).arg_sort().alias("__rank"))
    target = ranked.filter(pl.col("__of").is_null()).select(pl.col("id").alias("__of"), pl.col("__rank").alias("__ref"))
    return ranked.join(target, on="__of").filter(pl.col("__rank") < pl.col("__ref")).height

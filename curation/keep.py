"""The keep rule: which row of a group of duplicates stays.

Written once, here, for MinHash and semantic dedup on both executors:
- `first`: the earliest in input order;
- `longest`: the longest text;
- `quality`: the highest score (a missing or NaN score counts as the lowest), then the longest text.
Remaining ties go to the `tiebreak` column: MinHash breaks them by the smaller id, semantic dedup
by input order (each step's option help says which).
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


def keep_order(keep: str, *, position: str, length: str, score: str, tiebreak: str) -> list[pl.Expr]:
    """Sort keys (ascending) under which a group's first row is the one kept."""
    if keep == "first":
        return [pl.col(position)]
    if keep == "longest":
        return [-pl.col(length), pl.col(tiebreak)]
    missing_last = pl.col(score).cast(pl.Float64).fill_nan(None).neg().fill_null(float("inf"))
    return [missing_last, -pl.col(length), pl.col(tiebreak)]


def keeper(keep: str, group: str | list[str], *, position: str, length: str, score: str, tiebreak: str,
           ident: str = "id") -> pl.Expr:
    """Per row: the id of the row its group keeps."""
    order = keep_order(keep, position=position, length=length, score=score, tiebreak=tiebreak)
    return pl.col(ident).sort_by(order).first().over(group)


def keep_rank(keep: str, length: pl.Series, score: pl.Series | None) -> np.ndarray:
    """Rank of every row (0 = kept first), for columns in input order; ties go to input order."""
    n = len(length)
    row = np.arange(n)
    if keep == "first":
        return row
    frame = pl.DataFrame({"row": row, "len": length.cast(pl.Int64),
                          "score": pl.Series([None] * n, dtype=pl.Float64) if score is None else score})
    order = frame.sort(keep_order(keep, position="row", length="len", score="score", tiebreak="row"))["row"].to_numpy()
    rank = np.empty(n, dtype=np.int64)
    rank[order] = row
    return rank

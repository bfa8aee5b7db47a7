"""Held-out draw: set aside `n` valid rows of the raw pool *before* curation.

Evaluating on rows chosen by pond's own quality scores would favour the arm picked the same way
(a circular test), so the draw uses validity rules only: the row has a user
turn and a non-empty assistant answer. Drawn rows leave the pool as rejections with reason
`held_out`; the runner also writes them to `heldout.parquet` in the run directory.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import polars as pl
from pydantic import Field

from curation.step import StepContext, StepOptions, split


class HoldoutOptions(StepOptions):
    n: int = Field(200, ge=1, description="rows to set aside for evaluation")
    min_answer_chars: int = Field(1, ge=1, description="an answer shorter than this is not a valid held-out row")

    def estimated_rows_out(self, rows: int) -> int:
        """The rows left for curation, as `pond run --estimate` counts them: all but the n drawn."""
        return max(rows - self.n, 0)


def valid_for_heldout(min_answer_chars: int = 1) -> pl.Expr:
    roles = pl.col("messages").list.eval(pl.element().struct.field("role"))
    answers = pl.col("messages").list.eval(
        pl.when(pl.element().struct.field("role") == "assistant")
        .then(pl.element().struct.field("content").str.strip_chars().str.len_chars())
        .otherwise(0)
    )
    return roles.list.contains("user") & (answers.list.max() >= min_answer_chars)


HELD = "__held_out"  # the streamed form's mark: the row was drawn


def draw(valid_ids: pl.Series, opts: HoldoutOptions, ctx: StepContext) -> pl.Series:
    """The drawn ids of the valid ones; the step's figures go to ctx.stats."""
    # sort before sampling so the draw depends on the seed and the ids, not on file order
    drawn = valid_ids.sort().sample(n=min(opts.n, len(valid_ids)), seed=ctx.seed, shuffle=True)
    ctx.stats["valid_candidates"] = len(valid_ids)
    ctx.stats["drawn"] = len(drawn)
    return drawn


def holdout(df: pl.DataFrame, opts: HoldoutOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    if df.is_empty():
        return df, split(df, pl.lit(True), "holdout", "held_out")[1]
    drawn = draw(df.filter(valid_for_heldout(opts.min_answer_chars))["id"], opts, ctx)
    return split(df, ~pl.col("id").is_in(drawn.implode()), "holdout", "held_out")


def split_held(marked: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows marked `HELD` where drawn (null elsewhere) -> (kept, held out), as `holdout` splits them."""
    kept, rejected = split(marked, pl.col(HELD).is_null(), "holdout", "held_out")
    return kept.drop(HELD), rejected.drop(HELD)


def stream_marks(read: Callable[[list[str]], Iterator[pl.DataFrame]], opts: HoldoutOptions,
                 ctx: StepContext) -> tuple[pl.DataFrame, Callable]:
    """holdout over batches (the local executor's streaming): one pass over ids and messages holds every
    row's id, position and validity, not its text. Returns the drawn rows' marks (`pos`, `HELD`) and
    `split_held`."""
    rows, lo = [], 0
    for batch in read(["id", "messages"]):
        rows.append(batch.select("id", valid_for_heldout(opts.min_answer_chars).alias("valid"),
                                 pl.int_range(lo, lo + len(batch), dtype=pl.Int64).alias("pos")))
        lo += len(batch)
    rows = pl.concat(rows)
    drawn = draw(rows.filter("valid")["id"], opts, ctx)
    return (rows.filter(pl.col("id").is_in(drawn.implode()))
            .select("pos", pl.lit(True).alias(HELD))), split_held

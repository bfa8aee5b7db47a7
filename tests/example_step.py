"""The worked example of docs/architecture.md, "Adding a step": a tiny row-wise step.

In the product it would be `curation/max_chars.py` plus one line in `pond/steps.py`; here the
test registers that same line (tests/test_example_step.py), so the recipe surface stays as it is.
"""
from __future__ import annotations

import polars as pl
from pydantic import Field

from curation.step import StepContext, StepOptions, split

STAGE = "max_chars"


class MaxCharsOptions(StepOptions):
    max_chars: int = Field(2000, ge=1, description="longest text kept, in characters")
    column: str = Field("text", description="column whose length is checked")


def max_chars(df: pl.DataFrame, opts: MaxCharsOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows whose text is longer than `max_chars` are rejected as `too_long`."""
    fits = pl.col(opts.column).fill_null("").str.len_chars() <= opts.max_chars
    kept, rejected = split(df, fits, STAGE, "too_long")
    ctx.stats["too_long"] = len(rejected)
    return kept, rejected

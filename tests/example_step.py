"""The worked examples of docs/architecture.md, "Adding a step": a tiny row-wise step, and a step that
asks a teacher.

In the product each would be one file (`curation/max_chars.py`, `synthesis/title.py`) plus one line
in `pond/steps.py`; here the test registers those same lines (tests/test_example_step.py), so the
recipe surface stays as it is.
"""
from __future__ import annotations

import contextlib

import polars as pl
from pydantic import Field

from curation.step import StepContext, StepOptions, reject, split
from synthesis.cache import ResponseCache, shared_cache_path
from synthesis.client import ChatRequest
from synthesis.rows import row_prompt
from synthesis.teachers import teachers_of

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


# -- a step that asks a teacher -------------------------------------------------------------------------

TITLE_STAGE = "title"


class TitleOptions(StepOptions):
    # StepOptions.teacher_needed() returns this option: the recipe checks that `teachers:` defines it, and
    # the runner keeps a served teacher of that name up across the steps that need it; the step's
    # `ctx.teachers.session(name)` is then a ready client
    teacher: str = Field("default", description="the recipe teacher (`teachers:`) that writes the titles")
    column: str = Field("title", description="column the title goes to")
    max_tokens: int = Field(16, ge=1, description="longest title, in tokens")


def title(df: pl.DataFrame, opts: TitleOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The teacher writes a short title for each row's prompt into `column`; a row whose call fails is
    rejected as `no_title` with the error. Replies go to the cache every run shares, as the judge's do:
    a rerun sends nothing."""
    requests = [ChatRequest([{"role": "user", "content": f"A title of at most six words for:\n{row_prompt(row)}"}],
                            max_tokens=opts.max_tokens, temperature=0.0, seed=ctx.seed)
                for row in df.iter_rows(named=True)]
    cache = ResponseCache(shared_cache_path(ctx.cache_dir))
    with contextlib.closing(cache), teachers_of(ctx).session(opts.teacher, cache) as session:
        results = session.run(requests, ctx.track, "titles")
    answered = pl.Series([not isinstance(r, BaseException) for r in results], dtype=pl.Boolean)
    titles = [r.text.strip() if ok else None for r, ok in zip(results, answered)]
    titled = df.with_columns(pl.Series(opts.column, titles, dtype=pl.Utf8))
    errors = pl.Series([f"no_title: {r}" for r, ok in zip(results, answered) if not ok], dtype=pl.Utf8)
    kept, rejected = titled.filter(answered), reject(titled.filter(~answered), TITLE_STAGE, errors)
    ctx.stats.update({"titled": len(kept), "teacher": session.summary()})
    return kept, rejected

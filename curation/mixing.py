"""Mixing by answer tokens: `select` with `mix` fills each source's share of a token budget.

    select: {strategy: quality, mix: {by: source, weights: {sharegpt: 0.7, fortunes: 0.3}}, budget_tokens: 20000}

Each source (a value of the `by` column) is given `weight x budget_tokens` answer tokens, counted as
training counts them (curation.answer_tokens: the student's tokenizer, the `max_seq_len` truncation,
the `equal_tokens` rule). Within a source, rows come in the order the strategy gives when it runs
on that source's rows alone (so quality_diverse and kcenter spread within a source), and are taken
while taking the next one leaves the source's total at least as close to its share as not taking it:
with `d` tokens still missing, a row of `t` tokens is taken when `t <= 2 d` (a tie is taken), and
the walk stops at the first row that is not. So each source ends within half a row of its share,
never skipping a row for a shorter one behind it (that would favour short rows over the strategy's
order).

A source whose rows hold fewer answer tokens than its share is an error, unless `allow_short: true`,
which takes all of it and says `short: true` in stats; other sources do not fill the gap. Rows with
no answer token within `max_seq_len` add nothing to training and are never taken. Every row not
taken is rejected with a reason naming the mix. docs/mixing.md.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from curation.answer_tokens import answer_tokens, load_tokenizer
from curation.errors import ConfigError
from curation.settings import DEFAULT_STUDENT, resolve_model
from curation.step import StepContext, StepOptions, reject

WEIGHT_TOLERANCE = 1e-6
NAMED_AT_MOST = 20  # sources listed in an error line
# order(rows, n) -> (the first n row indices in the strategy's order, figures for stats)
Order = Callable[[pl.DataFrame, int], tuple[np.ndarray, dict]]


class MixOptions(StepOptions):
    by: str = Field("source", description="the column whose values are the sources mixed")
    weights: dict[str, float] = Field(..., description="each source's share of budget_tokens, summing to 1; a "
                                                        "source not named is not selected")
    allow_short: bool = Field(False, description="a source with fewer answer tokens than its share gives all it "
                                                 "has (stats: short) instead of failing the step")

    @field_validator("weights")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("mix.weights: give at least one {source: weight}")
        negative = sorted(k for k, w in v.items() if w < 0)
        if negative:
            raise ValueError(f"mix.weights: {', '.join(map(repr, negative))} below 0; a weight is a share")
        total = sum(v.values())
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(f"mix.weights sum to {total:.6g}, not 1: each is its source's share of budget_tokens")
        return v


@dataclass
class Source:
    """One source's part of the mix: what it was asked for, what it has, what it gave."""

    name: str
    weight: float
    asked: float  # answer tokens
    rows: np.ndarray  # positions in the step's input of its rows with answer tokens
    tokens: np.ndarray  # their answer tokens, in the same order
    taken: np.ndarray | None = None  # positions taken, in the strategy's order
    figures: dict | None = None

    @property
    def available(self) -> int:
        return int(self.tokens.sum())


def source_labels(df: pl.DataFrame, by: str) -> pl.Series:
    if by not in df.columns:
        raise ConfigError(f"select mix.by: no column {by!r} (columns: {', '.join(df.columns)})")
    return df[by].cast(pl.Utf8)


def _listed(values: list) -> str:
    shown = ", ".join(map(repr, values[:NAMED_AT_MOST]))
    return shown + (f" and {len(values) - NAMED_AT_MOST} more" if len(values) > NAMED_AT_MOST else "")


def check_named(labels: pl.Series, mix: MixOptions) -> None:
    present = sorted(labels.drop_nulls().unique().to_list())
    unknown = [s for s in mix.weights if s not in set(present)]
    if unknown:
        raise ConfigError(f"select mix.weights: {_listed(unknown)} not found in column {mix.by!r} "
                          f"(sources present: {_listed(present)})")


def take_count(tokens: np.ndarray, asked: float) -> int:
    """How many rows, in order, are taken: each while it leaves the total at least as close to `asked`
    as not taking it (t <= 2 x the tokens still missing); the walk stops at the first that does not."""
    before = np.cumsum(tokens) - tokens
    closer = tokens <= 2.0 * (asked - before)
    return len(tokens) if closer.all() else int(np.argmin(closer))


def _first_guess(tokens: np.ndarray, asked: float) -> int:
    # Rows the share needs at the source's mean row, with room, so one call usually suffices.
    return int(math.ceil(1.5 * asked / max(float(tokens.mean()), 1.0))) + 8


def source_order(df: pl.DataFrame, src: Source, order: Order, grows: bool) -> tuple[np.ndarray, dict]:
    """The source's rows in the strategy's order, as far as its share reaches. A strategy that `grows`
    (asking for more rows only extends its order) is asked for a first guess and then twice as many
    until the walk stops inside what it returned: kcenter and quality_diverse cost grows with n."""
    rows = df[src.rows.tolist()]
    n = min(len(rows), _first_guess(src.tokens, src.asked)) if grows else len(rows)
    while True:
        idx, figures = order(rows, n)
        if n == len(rows) or take_count(src.tokens[idx], src.asked) < n:
            return idx, figures
        n = min(len(rows), 2 * n)


def plan(labels: pl.Series, tokens: np.ndarray, mix: MixOptions, budget: int) -> list[Source]:
    """The weighted sources, in the order `weights` names them (rows without answer tokens left out)."""
    out = []
    for name, weight in mix.weights.items():
        rows = np.flatnonzero((labels == name).fill_null(False).to_numpy() & (tokens > 0))
        out.append(Source(name, weight, weight * budget, rows, tokens[rows]))
    return out


def check_short(sources: list[Source], mix: MixOptions, budget: int) -> None:
    short = [s for s in sources if s.available < s.asked]
    if short and not mix.allow_short:
        each = "; ".join(f"{s.name!r} has {s.available} answer tokens, fewer than its share "
                         f"{s.weight:g} x {budget} = {s.asked:g}" for s in short)
        raise ConfigError(f"select mix by {mix.by}: {each}; lower budget_tokens or the weight, or set "
                          f"mix.allow_short: true to take what there is")


def fill(df: pl.DataFrame, sources: list[Source], order: Order, grows: bool) -> None:
    for src in sources:
        if src.asked <= 0 or not len(src.rows):
            src.taken, src.figures = src.rows[:0], {}
            continue
        idx, src.figures = source_order(df, src, order, grows)
        src.taken = src.rows[idx[: take_count(src.tokens[idx], src.asked)]]


def ranks(sources: list[Source], tokens: np.ndarray, height: int) -> np.ndarray:
    """select_rank: rows interleaved by how far into its source's share each row starts (ties by the
    order of `weights`), so every prefix of the ranking is itself close to the mix; -1 = not taken."""
    progress, source, pos = [], [], []
    for k, src in enumerate(sources):
        t = tokens[src.taken]
        progress.append((np.cumsum(t) - t) / max(src.asked, 1.0))
        source.append(np.full(len(t), k))
        pos.append(src.taken)
    pos_all = np.concatenate(pos) if pos else np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.concatenate(source), np.concatenate(progress))) if len(pos_all) else pos_all
    rank = np.full(height, -1, dtype=np.int64)
    rank[pos_all[order]] = np.arange(len(order))
    return rank


def reasons(labels: pl.Series, tokens: np.ndarray, sources: list[Source], mix: MixOptions,
            max_seq_len: int) -> list[str]:
    """Why each row would not be selected, naming the mix (tokens: -1 where not counted)."""
    met = {s.name: f"not_selected: mix by {mix.by}: {s.name!r} met its share "
                   f"({int(tokens[s.taken].sum())} of {s.asked:g} answer tokens)" for s in sources}
    empty = f"not_selected: mix: no answer tokens within max_seq_len {max_seq_len}"
    return [f"not_selected: mix by {mix.by}: {v!r} has no weight" if t < 0 else empty if t == 0 else met[v]
            for v, t in zip(labels.to_list(), tokens.tolist())]


def source_stats(src: Source, tokens: np.ndarray, delivered_total: int) -> dict:
    delivered = int(tokens[src.taken].sum())
    return {"weight": src.weight, "rows_available": len(src.rows), "answer_tokens_available": src.available,
            "answer_tokens_asked": round(src.asked, 3), "rows_delivered": len(src.taken),
            "answer_tokens_delivered": delivered,
            "share_delivered": round(delivered / delivered_total, 6) if delivered_total else 0.0,
            "short": src.available < src.asked, **(src.figures or {})}


def count_tokens(df: pl.DataFrame, labels: pl.Series, mix: MixOptions, model: str | None, max_seq_len: int,
                 ctx: StepContext) -> np.ndarray:
    """Answer tokens of the rows of sources with a weight above 0; -1 for the rest, which are not
    selected anyway (counting a row costs a template rendering and a tokenisation)."""
    weighted = labels.is_in([k for k, w in mix.weights.items() if w > 0]).fill_null(False).to_numpy()
    tokenizer = load_tokenizer(str(resolve_model(model or DEFAULT_STUDENT, ctx.cache_dir, "model")))
    tokens = np.full(df.height, -1, dtype=np.int64)
    tokens[weighted] = answer_tokens(df.filter(pl.Series(weighted)), tokenizer, max_seq_len, ctx.track)
    return tokens


def mix_select(df: pl.DataFrame, opts: StepOptions, ctx: StepContext, order: Order, grows: bool,
               stage: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`select` with `mix` (opts: curation.selection's SelectOptions with mix and budget_tokens set; not
    imported here, as selection imports this module): kept rows carry
    `select_rank` and `answer_tokens`; the rest are rejected with the mix's reason."""
    mix, budget = opts.mix, opts.budget_tokens
    labels = source_labels(df, mix.by)
    check_named(labels, mix)
    tokens = count_tokens(df, labels, mix, opts.model, opts.max_seq_len, ctx)
    sources = plan(labels, tokens, mix, budget)
    check_short(sources, mix, budget)
    fill(df, sources, order, grows)
    rank = ranks(sources, tokens, df.height)
    marked = df.with_columns(pl.Series("select_rank", rank, dtype=pl.Int64),
                             pl.Series("answer_tokens", tokens, dtype=pl.Int64),
                             pl.Series("__why", reasons(labels, tokens, sources, mix, opts.max_seq_len),
                                       dtype=pl.Utf8))
    kept = marked.filter(pl.col("select_rank") >= 0).drop("__why")
    rest = marked.filter(pl.col("select_rank") < 0)
    rejected = reject(rest.drop("select_rank", "answer_tokens", "__why"), stage, rest["__why"])
    total = int(kept["answer_tokens"].sum())
    ctx.stats.update({"strategy": opts.strategy, "budget_tokens": budget, "selected": len(kept),
                      "not_selected": len(rejected), "answer_tokens_selected": total,
                      "no_answer_tokens": int((tokens == 0).sum()),
                      "mix": {"by": mix.by, "max_seq_len": opts.max_seq_len, "model": opts.model or DEFAULT_STUDENT,
                              "allow_short": mix.allow_short,
                              "sources": {s.name: source_stats(s, tokens, total) for s in sources}}})
    return kept, rejected

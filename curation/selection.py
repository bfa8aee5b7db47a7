"""Choose `n` rows: the step that turns a cleaned pool into a small fine-tuning set.

Strategies (all deterministic for a seed; exactly n rows, or every row if there are fewer):
- `random`: a seeded uniform sample (the baseline every other strategy must beat).
- `longest`: the n longest assistant answers (curation.records.answer_text_expr; plain-text rows:
  the text). A strong baseline in the literature (Zhao et al. 2024, "Long Is More for Alignment").
- `quality`: top n by `score_column` (from embed_quality, ifd or the judge): one column, or a weighted
  sum of rank-normalised columns, `score: {ifd: -1, judge_score: 1}` (see `weighted_ranks`).
- `quality_diverse`: Deita (Liu et al. 2024): walk rows from the best score down and admit a row
  only if its cosine to every admitted row is below `threshold`; if a pass ends with fewer than n,
  raise the threshold by `relax_step` and walk the rows left out again.
- `kcenter`: greedy farthest-point (k-center) over embeddings: start from the best-scoring row
  (a seeded random row when there is no score column), then repeatedly add the row farthest (in cosine distance) from everything chosen so far.

Ties break by input order. Rows not chosen are rejected with reason `not_selected`, so they stay
auditable and usable as a baseline pool. Kept rows get `select_rank` (0 = chosen first).

With `mix` (curation.mixing) the step fills each source's share of `budget_tokens` answer tokens
instead of taking n rows, walking each source in the strategy's order.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import AliasChoices, Field, field_validator, model_serializer, model_validator

from curation.embed import EmbeddingOptions, embed_column
from curation.mixing import MixOptions, mix_select
from curation.records import answer_text_expr
from curation.settings import DEFAULT_MAX_SEQ_LEN, DEFAULT_STUDENT
from curation.step import StepContext, StepOptions, reject

STAGE = "select"
_BLOCK = 256  # candidates compared with the admitted set at once (quality_diverse)
# Strategies whose first k rows are the same whatever n is asked (each row's place is decided before
# the next, n only says when to stop), so mixing may ask for a few rows and then more. Not random:
# numpy's sample of k is not the start of its sample of n.
_GROWS = {"longest", "quality", "quality_diverse", "kcenter"}
_COUNTING = ("budget_tokens", "model", "max_seq_len")  # what counts a mix's answer tokens


class SelectOptions(StepOptions):
    n: int | None = Field(None, ge=0, description="rows to keep (all rows when there are fewer); required "
                                                   "unless mix is set")
    strategy: Literal["random", "longest", "quality", "quality_diverse", "kcenter"] = Field(
        "random", description="how rows are chosen: random (seeded), longest answers, top quality, "
                              "quality then diversity (Deita), or k-center (greedy farthest point)")
    score_column: str | dict[str, float] = Field(
        "quality", validation_alias=AliasChoices("score_column", "score"),
        description="what quality and quality_diverse rank by (and kcenter's start, when present); recipe key "
                    "`score` or `score_column`: a numeric column, or {column: weight}, a weighted sum of "
                    "rank-normalised columns: each column is ranked (average ranks for ties; a null or NaN "
                    "counts as its worst value) and scaled to [0, 1], then weighted and summed, e.g. "
                    "`score: {ifd: -1, judge_score: 1}` prefers low IFD and high judge scores equally")
    threshold: float = Field(0.85, gt=-1.0, le=1.0,
                             description="quality_diverse: admit a row only if its cosine to every admitted "
                                         "row is below this")
    relax_step: float = Field(0.02, gt=0.0, description="quality_diverse: threshold increase per extra pass "
                                                        "when a pass admits fewer than n rows")
    column: str = Field("text", description="column embedded for quality_diverse and kcenter")
    seed: int | None = Field(None, description="seed for random and kcenter; default: the run's seed")
    embedding: EmbeddingOptions = Field(default_factory=EmbeddingOptions, description="embedding model settings")
    mix: MixOptions | None = Field(
        None, description="mix sources by answer tokens instead of taking n rows: `{by: source, weights: {a: 0.7, "
                          "b: 0.3}, allow_short: false}` (by: the column whose values are the sources, default "
                          "source); each source gets weight x budget_tokens answer tokens, its rows taken in the "
                          "strategy's order while the next row leaves its total at least as close to its share; "
                          "weights sum to 1 and a source not named is not selected; a source with fewer tokens "
                          "than its share fails the step unless allow_short: true (docs/mixing.md)")
    budget_tokens: int | None = Field(
        None, ge=1, description="with mix: the answer tokens to select, counted as training and the experiment's "
                                "equal_tokens count them (model's tokenizer, cut to max_seq_len)")
    model: str | None = Field(
        None, description=f"with mix: whose tokenizer counts answer tokens: a local Hugging Face folder or a "
                          f"model name under $POND_CACHE_DIR/models/; default: the student ({DEFAULT_STUDENT})")
    max_seq_len: int = Field(
        DEFAULT_MAX_SEQ_LEN, ge=8, description="with mix: the training truncation (train.max_seq_len): tokens past "
                                             "it are not counted, as training does not train on them")

    @field_validator("score_column")
    @classmethod
    def _weights(cls, v):
        if isinstance(v, dict) and not v:
            raise ValueError("score: give at least one {column: weight}")
        return v

    @model_validator(mode="after")
    def _rows_or_tokens(self):
        if self.mix is None:
            if self.n is None:
                raise ValueError("n: required (the rows to keep), unless mix selects by budget_tokens")
            counting = [k for k in _COUNTING if k in self.model_fields_set]
            if counting:
                raise ValueError(f"{', '.join(counting)}: only with mix (they count its answer tokens)")
        elif self.budget_tokens is None:
            raise ValueError("mix needs budget_tokens, the answer tokens its weights share")
        elif self.n is not None:
            raise ValueError("n and mix exclude each other: mix selects by budget_tokens")
        return self

    @model_serializer(mode="wrap")
    def _as_before_mix(self, handler):
        # The runner's fingerprint chains the options' JSON: a select without mix dumps as it did before
        # mix existed, so the runs it made still resume instead of selecting (and training) again.
        out = handler(self)
        if self.mix is None:
            for key in ("mix", *_COUNTING):
                out.pop(key, None)
        return out

    def estimated_rows_out(self, rows: int) -> int:
        """The rows it keeps, as `pond run --estimate` counts them: n, or all when there are fewer; with
        mix at most all of them (how many fill the budget is known only once their tokens are counted)."""
        return rows if self.mix is not None else min(rows, self.n)


def _has_score(df: pl.DataFrame, score: str | dict[str, float]) -> bool:
    return all(c in df.columns for c in ([score] if isinstance(score, str) else score))


def _scores(df: pl.DataFrame, score: str | dict[str, float], strategy: str) -> np.ndarray:
    missing = [c for c in ([score] if isinstance(score, str) else score) if c not in df.columns]
    if missing:
        raise ValueError(f"{STAGE} strategy={strategy}: no score column {', '.join(map(repr, missing))} "
                         f"(columns: {df.columns}); run embed_quality, ifd or judge first, or set score")
    if isinstance(score, dict):
        return weighted_ranks(df, score)
    return df[score].cast(pl.Float64).fill_nan(None).fill_null(-np.inf).to_numpy()


def weighted_ranks(df: pl.DataFrame, weights: dict[str, float]) -> np.ndarray:
    """Sum over columns of |weight| x the column's rank in [0, 1], ranked in the weight's direction
    (highest first for a positive weight, lowest first for a negative one), with average ranks for
    ties and a null or NaN ranked as the column's worst value whatever the sign.

    For rows without nulls this orders rows exactly as sum(weight x rank-normalised value) does (a
    negative weight's |w| x (1 - r) differs from w x r by the constant |w|); ranking in the weight's
    direction is what keeps a missing score from counting as the best one under a negative weight.
    """
    total = np.zeros(len(df), dtype=np.float64)
    if len(df) < 2:
        return total
    for column, w in weights.items():
        if w == 0:
            continue
        key = (df[column].cast(pl.Float64).fill_nan(None) * float(np.sign(w))).fill_null(-np.inf)
        rank = key.rank("average").to_numpy().astype(np.float64)  # 1..n
        total += abs(w) * (rank - 1.0) / (len(df) - 1)
    return total


def by_rank(keys: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest keys; ties by index."""
    return np.lexsort((np.arange(len(keys)), -keys))[:n]


def quality_diverse(emb: np.ndarray, scores: np.ndarray, n: int, threshold: float,
                    relax_step: float) -> tuple[np.ndarray, dict]:
    """Deita selection. Returns chosen indices in admission order and figures."""
    order = by_rank(scores, len(scores))
    chosen: list[int] = []
    admitted = np.zeros((0, emb.shape[1]), dtype=emb.dtype)
    taken = np.zeros(len(scores), dtype=bool)
    passes, thr = 0, threshold
    while len(chosen) < n:
        thr = threshold + passes * relax_step
        passes += 1
        if thr >= 1.0:  # relaxed past identical vectors: take the best remaining rows by score
            chosen.extend(order[~taken[order]][: n - len(chosen)].tolist())
            break
        remaining = order[~taken[order]]
        for s in range(0, len(remaining), _BLOCK):
            block = remaining[s:s + _BLOCK]
            e = emb[block]
            ok = (e @ admitted.T).max(1, initial=-np.inf) < thr
            inner = e @ e.T
            new: list[int] = []  # positions within the block admitted in this block, in order
            for p in np.flatnonzero(ok):
                if not new or inner[p, new].max() < thr:
                    new.append(p)
                    if len(chosen) + len(new) == n:
                        break
            chosen.extend(block[new].tolist())
            taken[block[new]] = True
            admitted = np.concatenate([admitted, e[new]])
            if len(chosen) == n:
                break
    return np.asarray(chosen, dtype=np.int64), {"passes": passes, "final_threshold": round(min(thr, 1.0), 4)}


def kcenter(emb: np.ndarray, n: int, start: int) -> np.ndarray:
    """Greedy farthest-point selection in cosine distance (a 2-approximation of k-center)."""
    chosen = [start]
    dist = 1.0 - emb @ emb[start]
    dist[start] = -np.inf
    for _ in range(n - 1):
        j = int(np.argmax(dist))  # first of equal maxima: ties by index
        chosen.append(j)
        np.minimum(dist, 1.0 - emb @ emb[j], out=dist)
        dist[j] = -np.inf  # min() keeps chosen rows at -inf
    return np.asarray(chosen, dtype=np.int64)


def choose(df: pl.DataFrame, opts: SelectOptions, ctx: StepContext) -> tuple[np.ndarray, dict]:
    """Indices of the chosen rows in the order they were chosen, and figures for stats."""
    total = len(df)
    n = min(opts.n, total)
    seed = ctx.seed if opts.seed is None else opts.seed
    if n == 0:
        return np.zeros(0, dtype=np.int64), {}
    if opts.strategy == "random":
        return np.random.default_rng(seed).choice(total, size=n, replace=False), {}
    if opts.strategy == "longest":
        length = df.select(answer_text_expr().fill_null("").str.len_chars()).to_series().to_numpy()
        return by_rank(length.astype(np.float64), n), {}
    if opts.strategy == "quality":
        return by_rank(_scores(df, opts.score_column, opts.strategy), n), {}
    if opts.strategy == "quality_diverse":
        scores = _scores(df, opts.score_column, opts.strategy)
        return quality_diverse(embed_column(df, opts.column, opts.embedding, ctx), scores, n,
                               opts.threshold, opts.relax_step)
    emb = embed_column(df, opts.column, opts.embedding, ctx)
    if _has_score(df, opts.score_column):
        start = int(by_rank(_scores(df, opts.score_column, opts.strategy), 1)[0])
    else:
        start = int(np.random.default_rng(seed).integers(total))
    return kcenter(emb, n, start), {"kcenter_start": df["id"][start]}


def select(df: pl.DataFrame, opts: SelectOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    if opts.mix is not None:
        def order(rows: pl.DataFrame, n: int) -> tuple[np.ndarray, dict]:
            return choose(rows, opts.model_copy(update={"n": n}), ctx)

        return mix_select(df, opts, ctx, order, opts.strategy in _GROWS, STAGE)
    chosen, figures = choose(df, opts, ctx)
    rank = np.full(len(df), -1, dtype=np.int64)
    rank[chosen] = np.arange(len(chosen))
    marked = df.with_columns(pl.Series("select_rank", rank, dtype=pl.Int64))
    kept = marked.filter(pl.col("select_rank") >= 0)
    rejected = reject(marked.filter(pl.col("select_rank") < 0).drop("select_rank"), STAGE, "not_selected")
    ctx.stats.update({"strategy": opts.strategy, "requested": opts.n, "selected": len(kept),
                      "not_selected": len(rejected), **figures})
    if isinstance(opts.score_column, dict):
        ctx.stats["score_weights"] = opts.score_column
    return kept, rejected

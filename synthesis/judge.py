"""The `judge` step (LLM-as-judge) and the reusable pairwise comparison.

- score mode: the teacher rates each row's answer 1-10 against a rubric, as schema-constrained
  JSON `{"reason", "score"}`; rows get `judge_score` and `judge_reason`, and rows below
  `min_score` are rejected with the score and the reason.
- pairwise mode: the row's answer against the answer in another column, asked in both orders
  (MT-Bench style); an inconsistent pair is a tie. Rows get `judge_winner` (a = the row's answer,
  b = the other column, tie) and `judge_reason`; rows that lose are rejected.

A call that fails, or a reply that cannot be parsed, rejects its row with the error; rows never
shift. `pairwise_judge` (async) and `pairwise_many` (sync) serve the evaluation package. The schemas,
the verdict parsing and the both-orders rule are the judge core's (synthesis.judge_core), which
evaluation.judge shares.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field

from curation.step import StepContext, StepOptions, reject
from synthesis.budget import call_tokens_upper
from synthesis.cache import ResponseCache, run_cache_path
from synthesis.client import ChatRequest, Completion, TeacherClient, TeacherSession, resolve_teacher
from synthesis.judge_core import Winner, combine_orders, pairwise_schema, parse_verdict, score_schema
from synthesis.prompts import RUBRIC_DIR, load_text, render
from synthesis.rows import clip, row_answer, row_prompt

STAGE = "judge"


class JudgeOptions(StepOptions):
    """Options of the `judge` step."""

    rubric: str = Field("helpfulness", description="Rubric: a built-in name (helpfulness, correctness, "
                                                   "harmlessness), a file path, or the text itself.")
    min_score: int = Field(7, ge=1, le=10, description="score mode: rows scoring below this are rejected.")
    teacher: str = Field("default", description="Name of the judging teacher in the recipe's `teachers:` "
                                                "(best not the model that wrote the rows).")
    mode: Literal["score", "pairwise"] = Field("score", description="score: rate each row 1-10; pairwise: "
                                                                   "compare with the answer in `against`.")
    against: str | None = Field(None, description="pairwise: the column holding the competing answer.")
    max_reason_chars: int = Field(160, ge=16, description="Longest reason the judge may give (a schema bound).")
    max_input_chars: int = Field(1200, ge=50, description="The prompt and each answer are clipped to this "
                                                          "many characters before judging (keep the whole "
                                                          "request within the judge's context length).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the judge.")
    prompt: str | None = Field(None, description="Replace the judge prompt template: a built-in name, a file "
                                                 "path or inline text (see synthesis/prompts/).")
    rows: Literal["all", "synthetic", "real"] = Field("all", description="Which rows to judge: all, only the "
                                                                         "synthetic ones (source `synthetic:*`), or "
                                                                         "only the real ones; the others pass "
                                                                         "through unjudged.")


def _reply_tokens(max_reason_chars: int) -> int:
    return max_reason_chars // 2 + 40  # the reason (~2+ chars a token) and the JSON around it


def rubric_text(rubric: str, resolve=Path) -> str:
    return load_text(rubric, RUBRIC_DIR, resolve)


def score_request(prompt: str, answer: str, rubric: str, *, template: str | None = None, max_reason_chars: int = 160,
                  max_input_chars: int = 1200, temperature: float = 0.0) -> ChatRequest:
    text = render(template or load_text("judge_score"), rubric=rubric, prompt=clip(prompt, max_input_chars) or "(none)",
                  answer=clip(answer, max_input_chars))
    return ChatRequest([{"role": "user", "content": text}], max_tokens=_reply_tokens(max_reason_chars),
                       temperature=temperature, seed=0, schema=score_schema(max_reason_chars), schema_name="score")


def pairwise_requests(prompt: str, answer_a: str, answer_b: str, rubric: str, *, template: str | None = None,
                      max_reason_chars: int = 160, max_input_chars: int = 1200,
                      temperature: float = 0.0) -> tuple[ChatRequest, ChatRequest]:
    """The two calls: (a shown as A, b as B) and (b as A, a as B)."""
    template = template or load_text("judge_pairwise")

    def req(first: str, second: str) -> ChatRequest:
        text = render(template, rubric=rubric, prompt=clip(prompt, max_input_chars) or "(none)",
                      answer_a=clip(first, max_input_chars), answer_b=clip(second, max_input_chars))
        return ChatRequest([{"role": "user", "content": text}], max_tokens=_reply_tokens(max_reason_chars),
                           temperature=temperature, seed=0, schema=pairwise_schema(max_reason_chars),
                           schema_name="verdict")

    return req(answer_a, answer_b), req(answer_b, answer_a)


def parse_score(result: Completion) -> tuple[int, str]:
    data = result.json()
    score = data.get("score") if isinstance(data, dict) else None
    if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 10:
        raise ValueError(f"judge reply has no score in 1..10: {result.text[:120]!r}")
    return score, str(data.get("reason", "")).strip()


@dataclass
class PairwiseResult:
    winner: Winner | None  # None: the comparison failed (see error)
    first: str | None = None  # verdict with a shown first ("A", "B", "tie")
    second: str | None = None  # verdict with b shown first
    reason: str = ""
    error: str | None = None
    cached: bool = False


def _pairwise_result(r1: Completion | BaseException, r2: Completion | BaseException) -> PairwiseResult:
    for r in (r1, r2):
        if isinstance(r, BaseException):
            return PairwiseResult(None, error=f"judge call failed: {r}")
    try:
        (v1, why1), (v2, why2) = parse_verdict(r1), parse_verdict(r2)
    except ValueError as e:
        return PairwiseResult(None, error=f"unusable judge reply: {e}")
    return PairwiseResult(combine_orders(v1, v2), v1, v2, f"{why1} | {why2}", cached=r1.cached and r2.cached)


async def pairwise_judge(client: TeacherClient, prompt: str, answer_a: str, answer_b: str,
                         rubric: str = "helpfulness", **kw) -> Winner:
    """Which answer is better by `rubric` (a name, path or text): "a", "b" or "tie".

    Asks both orders concurrently; raises TeacherError/ValueError if either call fails.
    """
    req1, req2 = pairwise_requests(prompt, answer_a, answer_b, rubric_text(rubric), **kw)
    r1, r2 = await asyncio.gather(client.chat(req1), client.chat(req2))
    result = _pairwise_result(r1, r2)
    if result.winner is None:
        raise ValueError(result.error)
    return result.winner


def pairwise_many(session: TeacherSession, items: list[tuple[str, str, str]], rubric: str = "helpfulness",
                  track=None, **kw) -> list[PairwiseResult]:
    """Compare many (prompt, answer_a, answer_b) triples; failures are results with `error` set."""
    rubric = rubric_text(rubric)
    calls: list[ChatRequest] = []
    for prompt, a, b in items:
        calls.extend(pairwise_requests(prompt, a, b, rubric, **kw))
    results = session.run(calls, track, "judging pairs")
    return [_pairwise_result(results[2 * i], results[2 * i + 1]) for i in range(len(items))]


# ---------------------------------------------------------------------------------- the step


def _in_scope(df: pl.DataFrame, rows: str) -> list[bool]:
    if rows == "all":
        return [True] * len(df)
    synthetic = df["source"].cast(pl.Utf8).fill_null("").str.starts_with("synthetic:").to_list()
    return synthetic if rows == "synthetic" else [not s for s in synthetic]


def _inputs(df: pl.DataFrame, opts: JudgeOptions) -> tuple[list[str], list[str], list[str] | None]:
    rows = df.select("messages", "text").to_dicts()
    prompts = [row_prompt(r) if r["messages"] else "" for r in rows]
    answers = [row_answer(r) for r in rows]
    others = None
    if opts.mode == "pairwise":
        if not opts.against or opts.against not in df.columns:
            raise ValueError(f"judge mode pairwise needs `against:` naming a column of competing answers "
                             f"(got {opts.against!r}; columns: {', '.join(df.columns)})")
        others = [str(x) if x is not None else "" for x in df[opts.against].to_list()]
    return prompts, answers, others


def judge(df: pl.DataFrame, opts: JudgeOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    t0 = time.perf_counter()
    config = resolve_teacher(ctx.teachers, opts.teacher)
    rubric = rubric_text(opts.rubric, ctx.resolve)
    template = load_text(opts.prompt, resolve=ctx.resolve) if opts.prompt else None
    prompts, answers, others = _inputs(df, opts)
    scope = _in_scope(df, opts.rows)
    todo = [i for i, a in enumerate(answers) if scope[i] and a.strip() and (others is None or others[i].strip())]
    kw = {"template": template, "max_reason_chars": opts.max_reason_chars,
          "max_input_chars": opts.max_input_chars, "temperature": opts.temperature}
    # Rows outside `rows:` pass through unjudged (kept, no score).
    errors: list[str | None] = ["nothing to judge: empty answer" if s else None for s in scope]
    reasons: list[str | None] = [None] * len(df)
    keep = [not s for s in scope]
    cache = ResponseCache(run_cache_path(ctx.run_dir, ctx.cache_dir))
    session = TeacherSession(config, cache)
    try:
        if opts.mode == "score":
            results = session.run([score_request(prompts[i], answers[i], rubric, **kw) for i in todo], ctx.track,
                                  f"judge: scoring by {opts.rubric}")
            scores: list[int | None] = [None] * len(df)
            for i, r in zip(todo, results):
                try:
                    if isinstance(r, BaseException):
                        raise ValueError(f"judge call failed: {r}")
                    scores[i], reasons[i] = parse_score(r)
                except ValueError as e:
                    errors[i] = str(e) if str(e).startswith("judge call failed") else f"unusable judge reply: {e}"
                    continue
                keep[i] = scores[i] >= opts.min_score
                errors[i] = None if keep[i] else f"judge score {scores[i]} < {opts.min_score}: {reasons[i]}"
            marked = df.with_columns(pl.Series("judge_score", scores, dtype=pl.Int64),
                                     pl.Series("judge_reason", reasons, dtype=pl.Utf8))
        else:
            calls = []
            for i in todo:
                calls.extend(pairwise_requests(prompts[i], answers[i], others[i], rubric, **kw))
            results = session.run(calls, ctx.track, f"judge: pairwise vs {opts.against}")
            winners: list[str | None] = [None] * len(df)
            for k, i in enumerate(todo):
                res = _pairwise_result(results[2 * k], results[2 * k + 1])
                winners[i], reasons[i] = res.winner, res.reason or None
                keep[i] = res.winner in ("a", "tie")
                errors[i] = res.error if res.winner is None else (
                    None if keep[i] else f"lost pairwise to {opts.against}: {res.reason}")
            marked = df.with_columns(pl.Series("judge_winner", winners, dtype=pl.Utf8),
                                     pl.Series("judge_reason", reasons, dtype=pl.Utf8))
    finally:
        cache.close()
    mask = pl.Series(keep, dtype=pl.Boolean)
    kept = marked.filter(mask)
    rejected = reject(marked.filter(~mask), STAGE, pl.Series([e for e, k in zip(errors, keep) if not k], dtype=pl.Utf8))
    ctx.stats.update({
        "mode": opts.mode, "rubric": opts.rubric, "rows": opts.rows, "judged": len(todo),
        "passed_unjudged": scope.count(False), "kept": len(kept),
        "rejected_by_reason": dict(sorted(Counter(e.split(":", 1)[0] for e in rejected["reason"]).items())),
        "teacher": session.summary(), "seconds": round(time.perf_counter() - t0, 3),
    })
    if opts.mode == "score":
        ctx.stats["score_histogram"] = dict(sorted(Counter(s for s in kept["judge_score"].to_list() +
                                                           rejected["judge_score"].to_list() if s).items()))
    return kept, rejected


def estimate(df: pl.DataFrame | None, opts: JudgeOptions) -> dict[str, int]:
    """Upper bounds before sending anything: {"requests", "max_tokens"} (prompt + completion)."""
    if df is None or len(df) == 0:
        return {"requests": 0, "max_tokens": 0}
    rubric = rubric_text(opts.rubric)
    prompts, answers, others = _inputs(df, opts)
    scope = _in_scope(df, opts.rows)
    total = requests = 0
    for i, a in enumerate(answers):
        if not scope[i] or not a.strip() or (others is not None and not others[i].strip()):
            continue
        if others is None:
            reqs = [score_request(prompts[i], a, rubric, max_reason_chars=opts.max_reason_chars,
                                  max_input_chars=opts.max_input_chars)]
        else:
            reqs = list(pairwise_requests(prompts[i], a, others[i], rubric, max_reason_chars=opts.max_reason_chars,
                                          max_input_chars=opts.max_input_chars))
        requests += len(reqs)
        total += sum(call_tokens_upper(r.messages, r.max_tokens) for r in reqs)
    return {"requests": requests, "max_tokens": total}

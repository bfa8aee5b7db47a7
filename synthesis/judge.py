"""The `judge` step (LLM-as-judge) and the reusable pairwise comparison.

- score mode: the teacher rates each row 1-10 against a rubric, as schema-constrained JSON
  `{"reason", "score"}`; rows get `column` (default `judge_score`) and its reason column
  (`judge_reason`), and rows below `min_score` are rejected with the score and the reason. With
  `min_score: null` nothing is dropped: the step is a scorer (AlpaGasus, Deita) whose column
  `select` ranks by. The `complexity` rubric rates the instruction alone (Deita's complexity), with
  its own template (`prompts/judge_score_complexity.txt`).
- pairwise mode: the row's answer against the answer in another column, asked in both orders
  (MT-Bench style); an inconsistent pair is a tie. Rows get `judge_winner` (a = the row's answer,
  b = the other column, tie) and `judge_reason`; rows that lose are rejected.

A call that fails, or a reply that cannot be parsed, rejects its row with the error (also with
`min_score: null`: a row is never kept with a missing score); rows never shift. Replies are cached
in the cache every run shares (`$POND_CACHE_DIR/teacher-cache.sqlite`, keyed by model and the full
request, every request seeded): a rerun, or another recipe over the same rows, sends nothing.

`pairwise_judge` (async) and `pairwise_many` (sync) serve the evaluation package. The schemas, the
verdict parsing and the both-orders rule are the judge core's (synthesis.judge_core), which
evaluation.judge shares.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator

from curation.ifd import distribution
from curation.records import CORE_COLUMNS, REJECT_COLUMNS, synthetic_source
from curation.step import StepContext, StepOptions, reject
from synthesis import calibration
from synthesis.budget import prompt_tokens_upper
from synthesis.cache import ResponseCache, cached_keys, shared_cache_path
from synthesis.client import ChatRequest, Completion, TeacherClient, TeacherSession
from synthesis.judge_core import Winner, combine_orders, pairwise_schema, parse_verdict, score_schema
from synthesis.prompts import PROMPT_DIR, RUBRIC_DIR, load_text, render
from synthesis.rows import EDGE_KIND, clip, row_answer, row_prompt
from synthesis.teachers import teachers_of

STAGE = "judge"
log = logging.getLogger(__name__)


class JudgeOptions(StepOptions):
    """Options of the `judge` step."""

    rubric: str = Field("helpfulness", description="Rubric: a built-in name (helpfulness, correctness, "
                                                   "harmlessness: the answer; complexity: how demanding the "
                                                   "instruction is, the answer not shown), a file path, or the "
                                                   "text itself.")
    # 7 stays the default: recipes written before the judge could only filter rely on it.
    min_score: int | None = Field(7, ge=1, le=10, description="score mode: rows scoring below this are rejected; "
                                                              "null: nothing is dropped, every judged row keeps "
                                                              "its score for `select` to rank by. A failed call or "
                                                              "an unparsable reply rejects its row either way.")
    column: str = Field("judge_score", description="score mode: the column the score goes to; the reason goes to "
                                                   "`<column without _score>_reason` (judge_reason by default). Two "
                                                   "judge steps need two columns, e.g. `column: complexity`.")
    teacher: str = Field("default", description="Name of the judging teacher in the recipe's `teachers:` "
                                                "(best not the model that wrote the rows).")
    mode: Literal["score", "pairwise"] = Field("score", description="score: rate each row 1-10; pairwise: "
                                                                   "compare with the answer in `against`.")
    against: str | None = Field(None, description="pairwise: the column holding the competing answer.")
    max_reason_chars: int = Field(
        160, ge=0, description="Longest reason the judge may give (a schema bound); 0: the verdict alone, no reason "
                               "(on a CPU every reply token is a full pass over the judge's weights).")
    max_input_chars: int = Field(1200, ge=50, description="The prompt and each answer are clipped to this "
                                                          "many characters before judging (keep the whole "
                                                          "request within the judge's context length).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of the judge.")
    prompt: str | None = Field(None, description="Replace the judge prompt template: a built-in name, a file "
                                                 "path or inline text (see synthesis/prompts/).")
    rows: Literal["all", "synthetic", "real"] = Field("all", description="Which rows to judge: all, only the "
                                                                         "synthetic ones (source `synthetic:*`), or "
                                                                         "only the real ones; the others pass "
                                                                         "through unjudged (keeping any "
                                                                         "score an earlier step wrote).")

    calibrate: bool = Field(True, description="score mode: before judging, measure the judge on a calibration set "
                                              "made from the step's real rows (synthesis.calibration: each row "
                                              "and six corruptions of it) and refuse a judge below "
                                              "`min_calibration`; the figures go to stats.json and the report.")
    self_judge: bool = Field(False, description="The judge is the model that wrote the rows it judges (a recipe "
                                                "error otherwise). Allowed only as a calibrated filter "
                                                "(`calibrate: true`); the report says so.")
    calibration_rows: int = Field(8, ge=2, description="Positives in the calibration set (each brings one negative of "
                                                       "every corruption type): about 7 calls per row, cached.")
    min_calibration: float = Field(0.75, ge=0.5, le=1.0, description="The lowest AUC the judge may have on any "
                                                                    "corruption type (positives against that type's "
                                                                    "negatives; 0.5 is chance).")
    on_failed_calibration: Literal["stop", "pass"] = Field(
        "stop", description="A judge below `min_calibration`: `stop` fails the step in one line; `pass` keeps the "
                            "judge from deciding anything (every row passes unjudged; with `best_of`, the first "
                            "candidate of each case stays), and stats.json, the run's log and `pond inspect` say "
                            "the judge was refused.")
    calibration_fail_fast: bool = Field(False, description="Grade the calibration set one corruption type at a "
                                                           "time (the positives with the first) and stop at the "
                                                           "first type under `min_calibration`: the same verdict, "
                                                           "fewer calls for a judge that fails; the types left are "
                                                           "listed as not graded. A judge that passes grades all.")
    calibration: str | None = Field(None, description="A gold file (any input layout) whose rows are the calibration "
                                                      "positives instead of the step's own real rows.")

    best_of: str | None = Field(None, description="score mode: among rows sharing a value in this column "
                                                  "(`candidate_of`: the answers synthesize wrote to one edge case "
                                                  "with `judge_picks`), keep only the best-scored one that passes; "
                                                  "the others are rejected as not the best of their case.")

    @field_validator("column")
    @classmethod
    def _a_new_column(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v):
            raise ValueError(f"column {v!r}: use letters, digits and _")
        if v in CORE_COLUMNS + REJECT_COLUMNS + ("judge_winner",) or v.endswith("_reason"):
            raise ValueError(f"column {v!r} is a record's, the step's reason or the pairwise column; name another")
        return v

    @property
    def reason_column(self) -> str:
        return self.column.removesuffix("_score") + "_reason"

    def score_columns(self) -> list[str]:
        """The column its scores go to in score mode (the report draws its histogram); pairwise writes none."""
        return [self.column] if self.mode == "score" else []


def _reply_tokens(max_reason_chars: int) -> int:
    return max_reason_chars // 2 + 40  # the reason (~2+ chars a token) and the JSON around it


REASON_FIELD = '"reason": "<one short sentence>", '


def _reply_format(text: str, max_reason_chars: int) -> str:
    """The prompt asks for what the schema allows: the verdict alone when no reason is wanted."""
    return text.replace(REASON_FIELD, "") if max_reason_chars == 0 else text


def rubric_text(rubric: str, resolve=Path) -> str:
    return load_text(rubric, RUBRIC_DIR, resolve)


def template_text(opts: JudgeOptions, resolve=Path) -> str | None:
    """The prompt template: `prompt:` if given, else a built-in rubric's own score template
    (`judge_score_<rubric>.txt`: complexity shows the instruction alone), else None (the mode's default)."""
    if opts.prompt:
        return load_text(opts.prompt, resolve=resolve)
    own = f"judge_score_{opts.rubric}"
    return load_text(own) if opts.mode == "score" and (PROMPT_DIR / f"{own}.txt").is_file() else None


def score_request(prompt: str, answer: str, rubric: str, *, template: str | None = None, max_reason_chars: int = 160,
                  max_input_chars: int = 1200, temperature: float = 0.0) -> ChatRequest:
    text = render(template or load_text("judge_score"), rubric=rubric, prompt=clip(prompt, max_input_chars) or "(none)",
                  answer=clip(answer, max_input_chars))
    text = _reply_format(text, max_reason_chars)
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
        text = _reply_format(text, max_reason_chars)
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
    synthetic = synthetic_source(df["source"]).to_list()
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


def _request_options(opts: JudgeOptions, resolve=Path) -> tuple[str, dict]:
    """The rubric's text and the request options every call of the step uses (calibration's too)."""
    return rubric_text(opts.rubric, resolve), {
        "template": template_text(opts, resolve), "max_reason_chars": opts.max_reason_chars,
        "max_input_chars": opts.max_input_chars, "temperature": opts.temperature}


def calibration_items(df: pl.DataFrame, opts: JudgeOptions, ctx: StepContext | None) -> list[calibration.Item]:
    """The calibration set of this step (none in pairwise mode or with `calibrate: false`)."""
    if not opts.calibrate or opts.mode != "score":
        return []
    gold = None
    if opts.calibration:
        from curation.ingest import read_records

        gold = read_records(ctx.resolve(opts.calibration) if ctx else Path(opts.calibration))[0]
    return calibration.build(df, opts.calibration_rows, seed=ctx.seed if ctx else 0, gold=gold)


def calibration_requests(items: list[calibration.Item], opts: JudgeOptions, resolve=Path) -> list[ChatRequest]:
    rubric, kw = _request_options(opts, resolve)
    return [score_request(it.prompt, it.answer, rubric, **kw) for it in items]


def calibration_scores(results: list) -> list[int | None]:
    """Each calibration reply's score; None for a failed call or an unreadable reply (counted, not guessed)."""
    scores: list[int | None] = []
    for r in results:
        try:
            scores.append(None if isinstance(r, BaseException) else parse_score(r)[0])
        except ValueError:
            scores.append(None)
    return scores


def _calibrate(df: pl.DataFrame, opts: JudgeOptions, ctx: StepContext, session: TeacherSession, model: str) -> dict:
    """Score the calibration set with the step's own rubric; refuse a judge that cannot tell."""
    items = calibration_items(df, opts, ctx)
    rounds = calibration.rounds(items, opts.calibration_fail_fast)
    items = [items[i] for r in rounds for i in r]  # graded in this order, so the scores are always a prefix
    requests = calibration_requests(items, opts, ctx.resolve)
    scores: list[int | None] = []
    for r in rounds:
        at = len(scores)
        scores += calibration_scores(session.run(requests[at:at + len(r)], ctx.track, "judge: calibration"))
        summary = calibration.summarise(items, scores, opts.min_score)  # of the types graded so far
        if calibration.failing(summary, opts.min_calibration):
            break
    if ctx.step_dir is not None:
        graded = items[:len(scores)]
        pl.DataFrame({"kind": [it.kind for it in graded], "prompt": [it.prompt for it in graded],
                      "answer": [it.answer for it in graded], "score": scores},
                     schema={"kind": pl.Utf8, "prompt": pl.Utf8, "answer": pl.Utf8, "score": pl.Int64}
                     ).write_parquet(ctx.step_dir / "calibration.parquet")
    summary |= {"min_calibration": opts.min_calibration, "judge": model, "rubric": opts.rubric}
    ctx.stats["calibration"] = summary
    calibration.check(summary, opts.min_calibration, model, opts.rubric)
    return summary


def plan(df: pl.DataFrame, opts: JudgeOptions, resolve=Path) -> tuple[list[bool], list[int], list[ChatRequest]]:
    """What the step sends, for the step and `--estimate` alike: which rows are in `rows:`, which of
    them are judged (a non-empty answer, and a non-empty rival in pairwise mode), and their calls in
    row order (pairwise: both orders of a row, one after the other)."""
    rubric, kw = _request_options(opts, resolve)
    prompts, answers, others = _inputs(df, opts)
    scope = _in_scope(df, opts.rows)
    todo = [i for i, a in enumerate(answers) if scope[i] and a.strip() and (others is None or others[i].strip())]
    if others is None:
        calls = [score_request(prompts[i], answers[i], rubric, **kw) for i in todo]
    else:
        calls = [r for i in todo for r in pairwise_requests(prompts[i], answers[i], others[i], rubric, **kw)]
    return scope, todo, calls


def _column(df: pl.DataFrame, name: str, values: list, dtype: pl.DataType, scope: list[bool]) -> pl.Series:
    """The step's column; rows outside `rows:` keep what an earlier step wrote there (judge the
    synthetic rows, then the real ones, into one column)."""
    if name in df.columns:
        old = df[name].cast(dtype, strict=False).to_list()
        values = [v if s else o for v, o, s in zip(values, old, scope)]
    return pl.Series(name, values, dtype=dtype)


def _score_verdicts(results: list, todo: list[int], opts: JudgeOptions, errors: list, keep: list
                    ) -> tuple[list[int | None], list[str | None]]:
    scores: list[int | None] = [None] * len(keep)
    reasons: list[str | None] = [None] * len(keep)
    for i, r in zip(todo, results):
        if isinstance(r, BaseException):
            errors[i] = f"judge call failed: {r}"
            continue
        try:
            scores[i], reasons[i] = parse_score(r)
        except ValueError as e:
            errors[i] = f"unusable judge reply: {e}"
            continue
        keep[i] = opts.min_score is None or scores[i] >= opts.min_score
        errors[i] = None if keep[i] else f"judge score {scores[i]} < {opts.min_score}: {reasons[i]}"
    return scores, reasons


def _pairwise_verdicts(results: list, todo: list[int], opts: JudgeOptions, errors: list, keep: list
                       ) -> tuple[list[str | None], list[str | None]]:
    winners: list[str | None] = [None] * len(keep)
    reasons: list[str | None] = [None] * len(keep)
    for k, i in enumerate(todo):
        res = _pairwise_result(results[2 * k], results[2 * k + 1])
        winners[i], reasons[i] = res.winner, res.reason or None
        keep[i] = res.winner in ("a", "tie")
        errors[i] = res.error if res.winner is None else (
            None if keep[i] else f"lost pairwise to {opts.against}: {res.reason}")
    return winners, reasons


def judge(df: pl.DataFrame, opts: JudgeOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    t0 = time.perf_counter()
    scope, todo, calls = plan(df, opts, ctx.resolve)
    # Rows outside `rows:` pass through unjudged (kept, no score); judged rows are decided below.
    errors: list[str | None] = ["nothing to judge: empty answer" if s else None for s in scope]
    keep = [not s for s in scope]
    cache = ResponseCache(shared_cache_path(ctx.cache_dir))
    with contextlib.closing(cache), teachers_of(ctx).session(opts.teacher, cache) as session:
        if opts.calibrate and opts.mode == "score":
            try:
                _calibrate(df, opts, ctx, session, session.config.model)
            except calibration.CalibrationFailed as refused:
                if opts.on_failed_calibration == "stop" or isinstance(refused, calibration.CalibrationImpossible):
                    raise  # too few rows to calibrate is never passed over
                return _refused(df, opts, ctx, str(refused), session, t0)
        what = f"scoring by {opts.rubric}" if opts.mode == "score" else f"pairwise vs {opts.against}"
        results = session.run(calls, ctx.track, f"judge: {what}")
    if opts.mode == "score":
        scores, reasons = _score_verdicts(results, todo, opts, errors, keep)
        if opts.best_of is not None:
            _keep_best_of(df, opts.best_of, scores, keep, errors)
        marked = df.with_columns(_column(df, opts.column, scores, pl.Int64, scope),
                                 _column(df, opts.reason_column, reasons, pl.Utf8, scope))
    else:
        winners, reasons = _pairwise_verdicts(results, todo, opts, errors, keep)
        marked = df.with_columns(_column(df, "judge_winner", winners, pl.Utf8, scope),
                                 _column(df, "judge_reason", reasons, pl.Utf8, scope))
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
        got = [s for s in scores if s is not None]  # this step's scores: the rows it judged and could read
        ctx.stats.update({"column": opts.column, "min_score": opts.min_score, "scored": len(got),
                          "score": distribution(np.array(got, dtype=np.float64)),
                          "score_histogram": dict(sorted(Counter(got).items())),
                          "score_by_origin": _by_origin(marked, opts.column)})
    if EDGE_KIND in df.columns:
        ctx.stats["by_kind"] = _kind_figures(df[EDGE_KIND].to_list(), scope, todo, keep)
    return kept, rejected


def _refused(df: pl.DataFrame, opts: JudgeOptions, ctx: StepContext, why: str, session: TeacherSession,
             t0: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`on_failed_calibration: pass`: the judge decides nothing. Rows pass unjudged; of a `best_of` case's
    candidates the first stays (a fixed rule, not a judgment), the others are rejected saying so."""
    log.warning("judge refused by calibration, rows pass unjudged: %s", why)
    keep = [True] * len(df)
    if opts.best_of is not None and opts.best_of in df.columns:
        seen: set = set()
        for i, g in enumerate(df[opts.best_of].cast(pl.Utf8).to_list()):
            if g is not None:
                keep[i] = g not in seen
                seen.add(g)
    mask = pl.Series(keep, dtype=pl.Boolean)
    rejected = reject(df.filter(~mask), STAGE, "judge refused by calibration: not the first candidate of its case")
    ctx.stats.update({"mode": opts.mode, "rubric": opts.rubric, "rows": opts.rows, "judged": 0, "refused": why,
                      "kept": int(mask.sum()), "teacher": session.summary(),
                      "seconds": round(time.perf_counter() - t0, 3)})
    return df.filter(mask), rejected


def _keep_best_of(df: pl.DataFrame, column: str, scores: list, keep: list[bool], errors: list) -> None:
    """Of the passing rows sharing a value in `column`, keep the best-scored (ties: the first)."""
    if column not in df.columns:
        raise ValueError(f"judge best_of: no column {column!r} (columns: {', '.join(df.columns)}); synthesize "
                         f"writes `candidate_of` with judge_picks: true")
    best: dict[str, int] = {}
    groups = df[column].cast(pl.Utf8).to_list()
    ids = df["id"].to_list()
    for i, g in enumerate(groups):
        if g is None or not keep[i] or scores[i] is None:
            continue
        if g not in best or scores[i] > scores[best[g]]:
            best[g] = i
    for i, g in enumerate(groups):
        if g is not None and keep[i] and scores[i] is not None and best[g] != i:
            keep[i] = False
            errors[i] = (f"not the best of its case: judge score {scores[i]} <= {scores[best[g]]} of "
                         f"{ids[best[g]]} ({column} {g})")


def _by_origin(marked: pl.DataFrame, column: str) -> dict:
    """The score distribution of real against synthetic rows, over every row holding a score in
    `column` (this step's, or an earlier judge's on rows outside `rows:`)."""
    synthetic = synthetic_source(marked["source"])
    out = {}
    for name, mask in (("real", ~synthetic), ("synthetic", synthetic)):
        vals = marked.filter(mask)[column].drop_nulls().to_numpy().astype(np.float64)
        out[name] = {"scored": len(vals), "score": distribution(vals) if len(vals) else None,
                     "histogram": dict(sorted(Counter(int(v) for v in vals).items()))}
    return out


def _kind_figures(kinds: list, scope: list[bool], todo: list[int], keep: list[bool]) -> dict:
    """Per edge-case kind (synthesize's `edge_kind` column): rows that came in, were judged and were kept."""
    judged = set(todo)
    out: dict[str, dict[str, int]] = {}
    for i, k in enumerate(kinds):
        if k is None or not scope[i]:
            continue
        f = out.setdefault(k, {"rows": 0, "judged": 0, "kept": 0})
        f["rows"] += 1
        f["judged"] += i in judged
        f["kept"] += keep[i]
    return dict(sorted(out.items()))


def estimate(df: pl.DataFrame | None, opts: JudgeOptions, ctx: StepContext | None = None,
             added: int = 0) -> dict[str, int]:
    """What the step would send, before sending anything: {"requests", "prompt_tokens",
    "completion_tokens", "max_tokens" (their sum), "cached", "fewest"}, token counts being upper bounds.
    "fewest": the requests of a run that goes on past a judge calibration refuses in its first round
    (`on_failed_calibration: pass`: no row is judged then); every request otherwise.

    With the run's `ctx`, paths resolve against the recipe and calls the shared cache already
    answers are counted in `cached` and left out of the rest (free); without it none is cached.
    `added`: rows earlier generators write (with `judge_picks`, every answer candidate). They cannot
    be looked up before they exist, so each costs what an average row of `df` does (judge inputs are
    clipped to max_input_chars), without the calibration set, which is sent once; with `rows: real`
    none is judged.
    """
    est = _estimate_rows(df, opts, ctx)
    if added and opts.rows != "real" and df is not None and len(df):
        proxy = _estimate_rows(df, opts.model_copy(update={"rows": "all", "calibrate": False}), None)
        for k in ("requests", "prompt_tokens", "completion_tokens"):
            est[k] += math.ceil(proxy[k] * added / len(df))
        est["max_tokens"] = est["prompt_tokens"] + est["completion_tokens"]
    if est["fewest"] is None:  # no calibration: every request is sent
        est["fewest"] = est["requests"]
    return est


def _estimate_rows(df: pl.DataFrame | None, opts: JudgeOptions, ctx: StepContext | None) -> dict[str, int]:
    """`estimate` for the rows of `df` alone."""
    calls = plan(df, opts, ctx.resolve if ctx else Path)[2] if df is not None and len(df) else []
    try:
        items = calibration_items(df, opts, ctx) if df is not None and len(df) else []
    except calibration.CalibrationImpossible:
        items = []  # too few rows: the run says so in one line; the estimate counts what can be sent
    calibration_calls = calibration_requests(items, opts, ctx.resolve if ctx else Path)
    calls += calibration_calls
    # what a judge refused in its first round sends
    first_round = [calibration_calls[i] for i in calibration.rounds(items, opts.calibration_fail_fast)[0]]
    planned = len(calls)
    if ctx is not None and calls:
        model = teachers_of(ctx).config(opts.teacher).model
        hits = cached_keys(shared_cache_path(ctx.cache_dir), [r.key(model) for r in calls])
        calls, first_round = ([r for r in reqs if r.key(model) not in hits] for reqs in (calls, first_round))
    prompt = sum(prompt_tokens_upper(r.messages) for r in calls)
    completion = sum(r.max_tokens * r.n for r in calls)
    return {"requests": len(calls), "prompt_tokens": prompt, "completion_tokens": completion,
            "max_tokens": prompt + completion, "cached": planned - len(calls),
            "fewest": len(first_round) if items and opts.on_failed_calibration == "pass" else None}

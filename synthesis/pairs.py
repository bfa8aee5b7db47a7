"""The `preference_pairs` step: preference pairs out of judged candidates (DPO data).

A case is a set of answers to one prompt, each scored by a judge (`score_column`, `judge_score` by
default): the answers `synthesize` wrote to one edge case with `judge_picks` (rows sharing
`candidate_of`, `cases: candidate_of`), or a real row and the teacher's answers to its prompt
(`synthesize: {generator: respond, replace: false}`, rows sharing the conversation up to the last
user turn, `cases: prompt`). Of a case of two or more, the best- and the worst-scored answers become
one pair, on the best row:

- `prompt`: the conversation up to the last user turn; `chosen` / `rejected`: the two answers, each
  a one-turn assistant list (TRL's conversational preference format with an explicit prompt);
- `score_chosen`, `score_rejected`, `margin` (their difference), `rejected_id` (the worse row);
- `messages` stays the chosen conversation, so the row is still a valid record for everything else.

The worse row, and any candidate between the two, are rejected saying so (rows are conserved). A case
whose margin is under `min_margin`, or whose two answers are near-copies (synthesis.similarity's
ROUGE-L rule, the one `synthesize` applies to new prompts), is rejected whole: its preference would
be the judge's noise. Rows of no case, and a case of one, pass through without a pair.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from curation.errors import ConfigError
from curation.ifd import distribution
from curation.records import MESSAGES, last_assistant_answer
from curation.settings import warn_once
from curation.step import StepContext, StepOptions, reject
from synthesis.rows import CANDIDATE_OF, context_for_answer
from synthesis.similarity import rouge_l, tokens

STAGE = "preference_pairs"
PAIR_COLUMNS = {"prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES, "score_chosen": pl.Float64,
                "score_rejected": pl.Float64, "margin": pl.Float64, "rejected_id": pl.Utf8}


class PreferencePairsOptions(StepOptions):
    """Options of the `preference_pairs` step."""

    cases: Literal["candidate_of", "prompt"] = Field(
        "candidate_of", description="Which rows answer one case. candidate_of: rows sharing `candidate_of` (the "
                                    "answers synthesize writes to one edge case with `judge_picks: true`). prompt: "
                                    "rows sharing the conversation up to the last user turn (a real row and the "
                                    "teacher's answers to it, from `synthesize: {generator: respond, replace: "
                                    "false}`).")
    score_column: str = Field("judge_score", description="The judge's score column that ranks a case's answers "
                                                         "(a judge step with `min_score: null` and no `best_of` "
                                                         "before this one writes it).")
    min_margin: float = Field(1, gt=0, description="A case whose best score is less than this above its worst "
                                                   "is rejected whole (a tie never makes a pair).")
    max_similarity: float | None = Field(0.9, gt=0, le=1, description="A case whose chosen and rejected answers "
                                         "have a ROUGE-L F1 of this or more (synthesis.similarity, the rule of "
                                         "synthesize's max_similarity) is rejected whole as a near-copy pair; "
                                         "null: only answers equal up to case, punctuation and spacing are.")

    def score_columns(self) -> list[str]:
        """`margin`: what `select` may rank pairs by, and the report draws."""
        return ["margin"]


@dataclass
class Case:
    label: str  # how reasons name it: the candidate_of value, or the first row's id
    rows: list[int]  # positions in the step's input, in row order


# ---------------------------------------------------------------------------------- which rows are a case


def _answerable(messages: list[dict] | None) -> bool:
    """An answer after a user turn: what a pair's prompt and answer are taken from."""
    return bool(messages) and bool(context_for_answer(messages)) and bool(last_assistant_answer(messages).strip())


def _scores(df: pl.DataFrame, opts: PreferencePairsOptions) -> list[float | None]:
    """The judge's scores as floats (any numeric score column); None where a row has none, or all None
    when the column is not there."""
    if opts.score_column not in df.columns:
        return [None] * len(df)
    return df[opts.score_column].cast(pl.Float64, strict=False).fill_nan(None).to_list()


def _case_keys(df: pl.DataFrame, scores: list[float | None], opts: PreferencePairsOptions) -> list[str | None]:
    """Each row's case (None: no case): a scored, answered row's candidate_of, or its prompt. All None
    where the columns are not there (`_check_input` says which steps write them)."""
    if opts.cases == "candidate_of" and CANDIDATE_OF not in df.columns:
        return [None] * len(df)
    messages = df["messages"].to_list()
    if opts.cases == "candidate_of":
        keys = df[CANDIDATE_OF].cast(pl.Utf8).to_list()
    else:  # the whole context, system and earlier turns included: the same last question is not enough
        keys = [json.dumps(context_for_answer(m), sort_keys=True) if m else None for m in messages]
    return [k if k is not None and s is not None and _answerable(m) else None
            for k, s, m in zip(keys, scores, messages)]


def _cases(df: pl.DataFrame, keys: list[str | None], opts: PreferencePairsOptions) -> list[Case]:
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        if k is not None:
            groups.setdefault(k, []).append(i)
    ids = df["id"].to_list()
    return [Case(k if opts.cases == "candidate_of" else f"prompt of {ids[rows[0]]}", rows)
            for k, rows in groups.items()]


def _check_input(df: pl.DataFrame, keys: list[str | None], opts: PreferencePairsOptions) -> None:
    """One line saying which steps make what this one needs, or which columns it would overwrite."""
    taken = sorted(set(PAIR_COLUMNS) & set(df.columns))
    if taken:
        raise ConfigError(f"preference_pairs: the rows already have column(s) {', '.join(taken)} (an ingested "
                          f"preference set, or an earlier preference_pairs step) that it would overwrite: leave them "
                          f"out of the input, or leave out this step")
    if opts.cases == "candidate_of":
        what = (f"{CANDIDATE_OF} and {opts.score_column}", "`synthesize: {generator: edge_cases, "
                "answer_candidates: N, judge_picks: true}` and `judge: {min_score: null}` (no best_of)")
    else:
        what = (f"a prompt, an answer and {opts.score_column}", "`synthesize: {generator: respond, replace: "
                "false}` and `judge: {min_score: null, rows: all}`")
    if len(df) and all(k is None for k in keys):
        raise ConfigError(f"preference_pairs: none of the {len(df)} rows has {what[0]}: add {what[1]} before it")


def _warn_if_no_case(candidates: int, cases: list[Case], ctx: StepContext) -> None:
    """Candidates but no case of two: no recipe error to name, yet the run makes no pair; say the likely why."""
    if candidates and not cases:
        message = (f"preference_pairs: {candidates} judged answers, each alone in its case, so no pair: a judge "
                   f"with best_of keeps one answer per case, answer_candidates: 1 writes one, and respond with "
                   f"replace: true leaves no real answer beside the teacher's")
        warn_once(f"{ctx.step_dir}:{message}", message)


def _warn_if_no_pair(cases: int, made: int, reasons: list[str | None], ctx: StepContext) -> None:
    """Cases but no pair (every case tied or a near-copy): the run goes on with nothing to train DPO on; say why."""
    if cases and not made:
        why = Counter(r.split(":", 1)[0] for r in reasons if r).most_common()
        message = (f"preference_pairs: {cases} cases, no pair: " + ", ".join(f"{n} rows {w}" for w, n in why)
                   + " (a judge that gives most answers the same score ties them: give it room for a reason, "
                     "max_reason_chars, or lower min_margin)")
        warn_once(f"{ctx.step_dir}:{message}", message)


# ---------------------------------------------------------------------------------- one case's verdict


def _near_copy(chosen: str, rejected: str, max_similarity: float | None) -> str | None:
    """synthesis.similarity's novelty rule on two answers: the same words, or a ROUGE-L F1 at the threshold."""
    a, b = tokens(chosen), tokens(rejected)
    if a == b:
        return "the same answer up to case, punctuation and spacing"
    if max_similarity is not None and (score := rouge_l(a, b)) >= max_similarity:
        return f"ROUGE-L {score:.2f} >= max_similarity {max_similarity}"
    return None


def _judge_case(case: Case, scores: list[float], answers: list[str], ids: list[str], opts: PreferencePairsOptions,
                reasons: list[str | None]) -> tuple[int, int] | None:
    """(best, worst) of a case that makes a pair; otherwise every row of the case gets its reason.
    Ties: the first best in row order, and the first worst after it."""
    best = max(case.rows, key=lambda i: scores[i])
    worst = min((i for i in case.rows if i != best), key=lambda i: scores[i])
    margin = scores[best] - scores[worst]
    col = opts.score_column
    if margin < opts.min_margin:
        why = (f"margin below min_margin: {col} {scores[best]:g} of {ids[best]} vs {scores[worst]:g} of "
               f"{ids[worst]}, margin {margin:g} < {opts.min_margin:g} (case {case.label})")
    elif (copy := _near_copy(answers[best], answers[worst], opts.max_similarity)) is not None:
        why = f"near-copy pair: {copy} between {ids[best]} and {ids[worst]} (case {case.label})"
    else:
        for i in case.rows:
            if i == worst:
                reasons[i] = (f"rejected answer of a pair: the worse side of {ids[best]}, {col} {scores[i]:g} vs "
                              f"{scores[best]:g} (case {case.label})")
            elif i != best:
                reasons[i] = (f"not the best or worst of its case: {col} {scores[i]:g}, between "
                              f"{scores[worst]:g} and {scores[best]:g} (case {case.label})")
        return best, worst
    for i in case.rows:
        reasons[i] = why
    return None


# ---------------------------------------------------------------------------------- the step


def _pair_columns(df: pl.DataFrame, pairs: list[tuple[int, int]], scores: list[float],
                  answers: list[str]) -> list[pl.Series]:
    """PAIR_COLUMNS, filled on each pair's best row and null elsewhere."""
    values: dict[str, list] = {name: [None] * len(df) for name in PAIR_COLUMNS}
    messages, ids = df["messages"].to_list(), df["id"].to_list()
    for best, worst in pairs:
        row = {"prompt": context_for_answer(messages[best]),
               "chosen": [{"role": "assistant", "content": answers[best]}],
               "rejected": [{"role": "assistant", "content": answers[worst]}],
               "score_chosen": scores[best], "score_rejected": scores[worst],
               "margin": scores[best] - scores[worst], "rejected_id": ids[worst]}
        for name, v in row.items():
            values[name][best] = v
    return [pl.Series(name, values[name], dtype=dtype) for name, dtype in PAIR_COLUMNS.items()]


def preference_pairs(df: pl.DataFrame, opts: PreferencePairsOptions,
                     ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Each case of two or more judged answers becomes one pair row or is rejected (module docstring)."""
    scores = _scores(df, opts)
    keys = _case_keys(df, scores, opts)
    _check_input(df, keys, opts)
    answers = [last_assistant_answer(m or []).strip() for m in df["messages"].to_list()]
    ids = df["id"].to_list()
    cases = [c for c in _cases(df, keys, opts) if len(c.rows) > 1]
    _warn_if_no_case(sum(k is not None for k in keys), cases, ctx)
    reasons: list[str | None] = [None] * len(df)
    made = [p for c in cases if (p := _judge_case(c, scores, answers, ids, opts, reasons)) is not None]
    _warn_if_no_pair(len(cases), len(made), reasons, ctx)
    marked = df.with_columns(_pair_columns(df, made, scores, answers))
    keep = pl.Series([r is None for r in reasons], dtype=pl.Boolean)
    rejected = reject(marked.filter(~keep), STAGE, pl.Series([r for r in reasons if r is not None], dtype=pl.Utf8))
    margins = np.array([scores[b] - scores[w] for b, w in made], dtype=np.float64)
    ctx.stats.update({
        "cases": len(cases), "pairs": len(made), "unpaired": int(keep.sum()) - len(made),
        "score_column": opts.score_column, "min_margin": opts.min_margin,
        "margin": distribution(margins), "margin_histogram": {f"{k:g}": v for k, v in sorted(Counter(margins).items())},
        "rejected_by_reason": dict(sorted(Counter(r.split(":", 1)[0] for r in reasons if r).items())),
    })
    return marked.filter(keep), rejected

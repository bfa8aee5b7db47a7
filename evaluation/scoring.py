"""Score one model (the base, or base + adapter) on the held-out set, row by row.

The per-row frame (`scores.parquet`) is what every later figure is made from: the token-weighted
loss, bootstrap intervals, paired differences and slices. Columns:

    id        held-out row id
    nll       summed negative log-likelihood of the reference answer tokens
    tokens    answer tokens scored (0: the answer lies past max_seq_len; the row carries no weight)
    answer    generated answer (first `n_generate` rows; null elsewhere or without generation)
    judge     pairwise score against the comparison answer: 1 win, 0.5 tie, 0 loss (NaN: not judged)
    grade     single-answer judge grade 1-10 (NaN: not graded)
    exact_match, token_f1   task metrics against the reference (NaN: not computed)
"""
from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from curation.step import recipe_path
from evaluation import judge as judging
from evaluation import loss_memo
from evaluation.config import EvaluateConfig
from evaluation.files import read_any
from synthesis.teachers import Teachers
from evaluation.metrics import (exact_match, generate_answers, is_structured, load_for_eval, prompt_and_reference,
                                references_are_short, token_f1)

SCORE_COLUMNS = ("nll", "tokens", "judge", "grade", "exact_match", "token_f1")


def load_heldout(spec: str, run_dir: Path | None = None, base_dir: Path | None = None) -> tuple[pl.DataFrame, str]:
    """Read the held-out set named by `evaluate.heldout`; returns (records, where it came from)."""
    if spec.startswith("run:") and run_dir is None:
        raise ValueError(f"held-out {spec!r} names a file in the run folder, but there is no run folder")
    path = recipe_path(spec, base_dir, run_dir)
    if not path.exists():
        raise FileNotFoundError(f"held-out set {path} not found (evaluate.heldout: {spec!r})")
    return read_any(path), str(path)


def prepare_heldout(df: pl.DataFrame, config: EvaluateConfig) -> pl.DataFrame:
    """Valid held-out rows (a conversation with an assistant answer), with what slices need."""
    rows = []
    for rid, messages in zip(df["id"].to_list(), df["messages"].to_list(), strict=True):
        prompt, reference = prompt_and_reference(messages or [])
        if not reference.strip() or not any(m["role"] == "user" for m in prompt):
            continue
        rows.append({"id": rid, "messages": messages, "prompt": prompt, "reference": reference,
                     "structured": is_structured(reference), "answer_words": len(reference.split()),
                     "turns": sum(m["role"] == "user" for m in messages)})
    out = pl.DataFrame(rows, schema={"id": pl.Utf8, "messages": df.schema["messages"],
                                     "prompt": df.schema["messages"], "reference": pl.Utf8, "structured": pl.Boolean,
                                     "answer_words": pl.Int64, "turns": pl.Int64})
    if config.limit is not None:
        out = out.head(config.limit)
    if out.height == 0:
        raise ValueError("the held-out set has no row with a user prompt and an assistant answer")
    return out


def score_model(model_path: str | Path, method: str, compute_dtype: str, heldout: pl.DataFrame,
                config: EvaluateConfig, max_seq_len: int, *, adapter_dir: Path | None = None,
                compare_answers: list[str] | None = None, ask: judging.Ask | None = None,
                grade: judging.Grade | None = None, cache_dir: Path | None = None,
                progress: Callable | None = None, memo: Path | None = None) -> pl.DataFrame:
    """Per-row scores of a model on `heldout` (from prepare_heldout); its losses from `memo` (loss_memo) when
    this model scored these rows before in the run."""
    n = heldout.height
    answers: list[str | None] = [None] * n
    k = min(config.n_generate, n)
    # the model is loaded here only when it also answers; loss_memo loads it for the losses alone
    loaded = load_for_eval(model_path, method, compute_dtype, adapter_dir=adapter_dir, cache_dir=cache_dir) if k else None
    try:
        nll, tokens = loss_memo.losses(model_path, method, compute_dtype, heldout, max_seq_len, config.batch_size,
                                       adapter_dir=adapter_dir, cache_dir=cache_dir, progress=progress, memo=memo,
                                       loaded=loaded)
        if loaded is not None:
            answers[:k] = generate_answers(*loaded, heldout["prompt"].head(k).to_list(),
                                           max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                                           progress=progress)
    finally:
        del loaded
        gc.collect()
    out = pl.DataFrame({"id": heldout["id"], "nll": nll, "tokens": tokens.astype(np.int64),
                        "answer": pl.Series(answers, dtype=pl.Utf8)})
    return add_judgements(out, heldout, config, compare_answers=compare_answers, ask=ask, grade=grade)


def add_judgements(scores: pl.DataFrame, heldout: pl.DataFrame, config: EvaluateConfig, *,
                   compare_answers: list[str] | None = None, ask: judging.Ask | None = None,
                   grade: judging.Grade | None = None) -> pl.DataFrame:
    """Judge and task-metric columns for the rows that have a generated answer."""
    n = scores.height
    judge_col = np.full(n, np.nan)
    grade_col = np.full(n, np.nan)
    em = np.full(n, np.nan)
    f1 = np.full(n, np.nan)
    answers = scores["answer"].to_list()
    have = [i for i, a in enumerate(answers) if a is not None]
    refs = heldout["reference"].to_list()
    questions = [judging.render_question(p) for p in heldout["prompt"].to_list()]
    if have and ask is not None and compare_answers is not None:
        outcomes = judging.pairwise_outcomes([questions[i] for i in have], [answers[i] for i in have],
                                             [compare_answers[i] or "" for i in have], ask)
        judge_col[have] = judging.win_scores(outcomes)
    if have and grade is not None:
        grades = grade([(questions[i], answers[i]) for i in have])
        grade_col[have] = [np.nan if g is None else float(g) for g in grades]
    wants_task = config.task_metrics == "always" or (
        config.task_metrics == "auto" and references_are_short(refs, config.short_answer_words))
    if have and wants_task:
        em[have] = [exact_match(answers[i], refs[i]) for i in have]
        f1[have] = [token_f1(answers[i], refs[i]) for i in have]
    return scores.with_columns(judge=pl.Series(judge_col), grade=pl.Series(grade_col),
                               exact_match=pl.Series(em), token_f1=pl.Series(f1))


def make_judges(config: EvaluateConfig, teachers: Teachers | None, cache_path: Path | None,
                track: Callable | None = None) -> tuple[judging.Ask | None, judging.Grade | None]:
    """The teacher-backed judge functions the config asks for (none without `judge`)."""
    if not config.judge:
        return None, None
    teacher = (teachers or Teachers()).config(config.judge)
    prompt = judging.load_prompt(config.judge_mode, config.judge_prompt) if config.judge_prompt else None
    kw = {"cache_path": cache_path, "prompt": prompt, "max_tokens": config.judge_max_tokens, "track": track}
    if config.judge_mode == "pairwise":
        return judging.teacher_ask(teacher, **kw), None
    return None, judging.teacher_grade(teacher, **kw)


def summarise(scores: pl.DataFrame) -> dict:
    """Headline figures of one model's per-row scores."""
    nll, tokens = scores["nll"].to_numpy(), scores["tokens"].to_numpy()
    total = int(tokens.sum())
    loss = float(nll.sum() / total) if total else float("nan")
    out = {"heldout_loss": loss, "perplexity": float(np.exp(loss)) if total else float("nan"),
           "answer_tokens": total, "rows": scores.height, "rows_scored": int((tokens > 0).sum())}
    for col, name in (("judge", "judge_win_rate"), ("grade", "judge_score"), ("exact_match", "exact_match"),
                      ("token_f1", "token_f1")):
        v = scores[col].to_numpy()
        v = v[~np.isnan(v)]
        if v.size:
            out[name] = float(v.mean())
            out[f"{name}_rows"] = int(v.size)
    return out

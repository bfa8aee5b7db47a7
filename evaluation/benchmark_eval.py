"""Answer a benchmark with several models (the base and adapters), then have the judge grade them.

    out_dir/answers.parquet    model, question_id, category, turn, answer, grade (NaN: not graded)
    out_dir/pairwise.parquet   model, against, question_id, category, turn, score (1 win, 0.5 tie, 0 loss)
    out_dir/answers.DONE       curation.store's marker, keyed by what the answers were made from (its facts:
                               those parts); a rerun with the same key answers nothing

Turn t of a question is asked with the model's own answers to turns 0..t-1 in the conversation,
as MT-Bench does. Generation runs first (one vLLM server holding every adapter, or transformers
one model at a time); the judge server starts only afterwards, so two servers never share the
cores. Judge calls go through the teacher cache: a rerun asks nothing twice.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from curation import store
from evaluation import judge as judging
from evaluation.benchmarks import EARLIER_CHARS, REFERENCE_CHARS, TURN_CHARS, chats, clip, judge_question
from evaluation.bootstrap import bootstrap_ci, paired_difference_ci
from evaluation.config import EvaluateConfig
from synthesis.teachers import Teachers

ANSWERS, ANSWERS_DONE = "answers.parquet", "answers.DONE"
ANSWER_SCHEMA = {"model": pl.Utf8, "question_id": pl.Utf8, "category": pl.Utf8, "turn": pl.Int64, "answer": pl.Utf8}


def generate_all(questions: pl.DataFrame, models: dict[str, Path | None], answer: Callable, turns: int
                 ) -> pl.DataFrame:
    """Every model's answers to every question, turn by turn (all models' requests of a turn go out together)."""
    earlier: dict[str, dict[str, list[str]]] = {m: {q: [] for q in questions["question_id"]} for m in models}
    rows = []
    n_turns = [min(turns, len(t)) for t in questions["turns"].to_list()]
    for t in range(max(n_turns)):
        asked = questions.filter(pl.Series([n > t for n in n_turns]))
        replies = answer({m: chats(asked, t, earlier[m]) for m in models})
        for m in models:
            for qid, cat, a in zip(asked["question_id"], asked["category"], replies[m], strict=True):
                earlier[m][qid].append(a)
                rows.append({"model": m, "question_id": qid, "category": cat, "turn": t, "answer": a})
    return pl.DataFrame(rows, schema=ANSWER_SCHEMA)


def _lookup(questions: pl.DataFrame) -> dict[str, dict]:
    return {r["question_id"]: r for r in questions.iter_rows(named=True)}


def _model_turns(answers: pl.DataFrame) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for r in answers.sort("turn").iter_rows(named=True):
        out.setdefault((r["model"], r["question_id"]), []).append(r["answer"])
    return out


def grade_all(questions: pl.DataFrame, answers: pl.DataFrame, grade: judging.Grade) -> pl.DataFrame:
    """A 1-10 grade for every answer: the judge sees earlier turns (the model's own) and the reference."""
    q = _lookup(questions)
    own = _model_turns(answers)
    items = [(judge_question(q[r["question_id"]]["turns"], own[r["model"], r["question_id"]], r["turn"],
                             q[r["question_id"]]["references"][r["turn"]]), r["answer"])
             for r in answers.iter_rows(named=True)]
    grades = grade(items)
    return answers.with_columns(grade=pl.Series([np.nan if g is None else float(g) for g in grades],
                                                dtype=pl.Float64))


def _pair_answer(turns: list[str], t: int) -> str:
    # turn t of a conversation: the judge reads the model's own earlier answers with it
    if t == 0:
        return turns[0]
    earlier = "\n\n".join(f"[Its answer to message {i + 1}]\n{clip(a, EARLIER_CHARS)}" for i, a in enumerate(turns[:t]))
    return f"{earlier}\n\n[Its answer to the latest message]\n{turns[t]}"


def pairwise_all(questions: pl.DataFrame, answers: pl.DataFrame, pairs: list[tuple[str, str]],
                 ask: judging.Ask) -> pl.DataFrame:
    """Each (model, against) pair compared on every question and turn, both orders asked."""
    q = _lookup(questions)
    own = _model_turns(answers)
    keys = answers.filter(pl.col("model") == pairs[0][0]).select("question_id", "category", "turn").rows() if pairs else []
    rows, qs, a_side, b_side = [], [], [], []
    for model, against in pairs:
        for qid, cat, t in keys:
            user_turns = q[qid]["turns"]
            context = "" if t == 0 else "(Earlier messages from the user, each assistant answered them its own way)\n" + \
                "\n".join(f"- {clip(m, TURN_CHARS)}" for m in user_turns[:t]) + "\n\n"
            ref = q[qid]["references"][t]
            qs.append(context + f"(Latest message)\n{clip(user_turns[t], TURN_CHARS)}" +
                      (f"\n\n(A reference answer, known to be correct)\n{clip(ref, REFERENCE_CHARS)}" if ref else ""))
            a_side.append(_pair_answer(own[model, qid], t))
            b_side.append(_pair_answer(own[against, qid], t))
            rows.append({"model": model, "against": against, "question_id": qid, "category": cat, "turn": t})
    scores = judging.win_scores(judging.pairwise_outcomes(qs, a_side, b_side, ask)) if rows else []
    return pl.DataFrame(rows, schema={"model": pl.Utf8, "against": pl.Utf8, "question_id": pl.Utf8,
                                      "category": pl.Utf8, "turn": pl.Int64}).with_columns(
        score=pl.Series(list(scores), dtype=pl.Float64))


def run_benchmark(out_dir: Path, questions: pl.DataFrame, models: dict[str, Path | None], config: EvaluateConfig,
                  *, answerer: Callable, teachers: Teachers | None, pairs: list[tuple[str, str]],
                  cache_path: Path | None = None,
                  track: Callable | None = None, log: Callable[[str], None] = lambda m: None
                  ) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Answers (with grades) and pairwise scores; `answerer(models)` is a context manager yielding answer().
    The judge (`teachers`' `config.judge`) is served only while it judges."""
    answers = answer_benchmark(out_dir, questions, models, config, answerer=answerer, log=log)
    teachers = teachers or Teachers()
    teacher = teachers.config(config.judge)
    kw = {"cache_path": cache_path, "max_tokens": config.judge_max_tokens, "track": track,
          "reason_chars": config.judge_reason_chars}
    pairwise = None
    with teachers.serving(config.judge):
        if "single" in config.benchmark_judge:
            prompt = judging.load_prompt("single", config.judge_prompt, benchmark=True)
            answers = grade_all(questions, answers, judging.teacher_grade(teacher, prompt=prompt, **kw))
        else:
            answers = answers.with_columns(grade=pl.lit(float("nan")))
        if "pairwise" in config.benchmark_judge and pairs:
            prompt = judging.load_prompt("pairwise", None, benchmark=True)
            pairwise = pairwise_all(questions, answers, pairs, judging.teacher_ask(teacher, prompt=prompt, **kw))
            pairwise.write_parquet(out_dir / "pairwise.parquet")
    answers.write_parquet(out_dir / "graded.parquet")
    return answers, pairwise


def answer_benchmark(out_dir: Path, questions: pl.DataFrame, models: dict[str, Path | None], config: EvaluateConfig,
                     *, answerer: Callable, log: Callable[[str], None] = lambda m: None) -> pl.DataFrame:
    """Every model's answers, saved with a key of what made them: a rerun with the same key generates nothing."""
    from evaluation.generation import adapter_fingerprint

    out_dir.mkdir(parents=True, exist_ok=True)
    key = {"questions": hashlib.blake2b(questions.write_json().encode(), digest_size=8).hexdigest(),
           "turns": config.benchmark_turns, "max_new_tokens": config.max_new_tokens,
           "models": {m: None if a is None else adapter_fingerprint(a) for m, a in sorted(models.items())}}
    if store.finished(out_dir, store.key_of(key), name=ANSWERS_DONE):
        answers = pl.read_parquet(out_dir / ANSWERS).select(list(ANSWER_SCHEMA))
        log(f"benchmark: answers of {len(models)} models found, not generated again")
    else:
        log(f"benchmark: {questions.height} questions x {config.benchmark_turns} turns x {len(models)} models "
            f"(generation: {config.generation})")
        with answerer(models) as answer:
            answers = generate_all(questions, models, answer, config.benchmark_turns)
        answers.write_parquet(out_dir / ANSWERS)
        store.mark_finished(out_dir, store.key_of(key), key, name=ANSWERS_DONE)
    return answers


# --- figures ---------------------------------------------------------------------------------


def _items(answers: pl.DataFrame) -> pl.DataFrame:
    return answers.select("question_id", "category", "turn").unique().sort("question_id", "turn")


def grade_matrix(answers: pl.DataFrame, models: list[str], items: pl.DataFrame, column: str = "grade",
                 **match) -> tuple[np.ndarray, np.ndarray]:
    """[models (seeds), items] grades aligned on items, and weights (0 where not graded)."""
    rows = []
    for m in models:
        sub = answers.filter(pl.col("model") == m, *[pl.col(k) == v for k, v in match.items()])
        joined = items.join(sub.select("question_id", "turn", column), on=["question_id", "turn"], how="left")
        rows.append(joined[column].fill_null(float("nan")).to_numpy().astype(np.float64))
    x = np.vstack(rows)
    return x, (~np.isnan(x)).astype(np.float64)


def summarise_benchmark(answers: pl.DataFrame, pairwise: pl.DataFrame | None, groups: dict[str, list[str]],
                        baseline: str, *, resamples: int = 2000, confidence: float = 0.95) -> dict:
    """Per group (an arm: its seeds' model names): mean grade [CI], per category, the paired difference
    against every other group, and the pairwise win rate against the baseline. Intervals resample
    questions x turns (paired between groups) and seeds."""
    kw = {"resamples": resamples, "confidence": confidence}
    items = _items(answers)
    cats = items["category"].to_numpy()
    out: dict = {"items": items.height, "questions": items["question_id"].n_unique(),
                 "turns": sorted(items["turn"].unique().to_list()), "categories": sorted(set(cats.tolist())),
                 "groups": {}}
    graded = answers["grade"].is_not_nan().any()
    mats = {g: grade_matrix(answers, ms, items) for g, ms in groups.items()} if graded else {}
    for g, ms in groups.items():
        entry: dict = {"models": ms}
        if graded:
            x, w = mats[g]
            entry["grade"] = bootstrap_ci(x, w, **kw).to_dict()
            entry["graded"] = int(w.sum())
            entry["by_category"] = {c: bootstrap_ci(x[:, cats == c], w[:, cats == c], **kw).to_dict()
                                    for c in out["categories"] if (w[:, cats == c].sum(axis=1) > 0).all()}
            entry["by_turn"] = {str(t): bootstrap_ci(x[:, items["turn"].to_numpy() == t],
                                                     w[:, items["turn"].to_numpy() == t], **kw).to_dict()
                                for t in out["turns"]}
            entry["minus"] = {}
            for other in groups:
                if other != g:
                    xo, wo = mats[other]
                    entry["minus"][other] = paired_difference_ci(x, xo, w, wo, **kw).to_dict()
            entry["minus_by_category"] = {}
            if g != baseline and baseline in mats:
                xb, wb = mats[baseline]
                for c in out["categories"]:
                    m = cats == c
                    if (w[:, m].sum(axis=1) > 0).all() and (wb[:, m].sum(axis=1) > 0).all():
                        entry["minus_by_category"][c] = paired_difference_ci(x[:, m], xb[:, m], w[:, m], wb[:, m],
                                                                             **kw).to_dict()
        if pairwise is not None and g != baseline:
            sub = pairwise.filter(pl.col("model").is_in(ms))
            if sub.height:
                x, w = grade_matrix(sub, ms, items, column="score")
                entry["win_rate"] = bootstrap_ci(x, w, **kw).to_dict()
                entry["win_rate_against"] = baseline
                s = sub["score"].drop_nans()
                entry["pairs"] = {"wins": int((s == 1).sum()), "ties": int((s == 0.5).sum()),
                                  "losses": int((s == 0).sum()), "failed": int(sub["score"].is_nan().sum())}
        out["groups"][g] = entry
    return out


def benchmark_figures(out_dir: Path, questions: pl.DataFrame, models: dict[str, Path | None],
                      groups: dict[str, list[str]], baseline: str, config: EvaluateConfig, *, answerer: Callable,
                      pairs: list[tuple[str, str]], teachers: Teachers | None = None, cache_path: Path | None = None,
                      count_tokens: Callable[[str], int] | None = None, resamples: int = 2000,
                      confidence: float = 0.95, track: Callable | None = None,
                      log: Callable[[str], None] = lambda m: None) -> dict:
    """A benchmark from answers to figures, for a single run and an experiment alike: IFEval is checked by
    code (evaluation.ifeval), any other benchmark is judged; the failure rates of the answers come with both."""
    from evaluation.failures import fault_table, summarise_failures
    from evaluation.ifeval import IFEVAL, score_answers, summarise_ifeval

    kw = {"resamples": resamples, "confidence": confidence}
    if config.benchmark == IFEVAL:
        answers = answer_benchmark(out_dir, questions, models, config, answerer=answerer, log=log)
        scores = score_answers(questions, answers, config.max_new_tokens)
        scores.write_parquet(out_dir / "ifeval.parquet")
        bench = summarise_ifeval(scores, groups, baseline, max_new_tokens=config.max_new_tokens, **kw)
    else:
        answers, pairwise = run_benchmark(out_dir, questions, models, config, answerer=answerer, teachers=teachers,
                                          pairs=pairs, cache_path=cache_path, track=track, log=log)
        bench = summarise_benchmark(answers, pairwise, groups, baseline, **kw)
    faults = fault_table(questions, answers, config.max_new_tokens, count_tokens)
    faults.write_parquet(out_dir / "faults.parquet")
    bench["failures"] = summarise_failures(faults, groups, baseline, **kw)
    bench["name"] = config.benchmark
    return bench

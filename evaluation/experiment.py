"""Quality vs quantity: train every arm x seed with the same budget, score each on one held-out set.

    out_dir/
      base/scores.parquet, eval.json, eval.DONE    the untrained student on the held-out set
      arms/<arm>/profile.json                  the arm's data: rows, answer length, structured share
      arms/<arm>/seed-<s>/                     training.train's folder (adapter/, train-result.json, train.DONE, ...);
                                               for a curated+dpo arm training.dpo's, from the curated arm's adapter
                         dataset.json, ids.parquet   exactly which rows it trained on (and their hash)
                         scores.parquet        per held-out row scores (evaluation.scoring)
                         eval.json, eval.DONE  its figures; the marker says this arm x seed is finished
                         reference.parquet, reference.DONE   its loss on the reference answers (if asked)
                         mlflow.json           its MLflow run id
      experiment.json, report.md, plot.png     the comparison
      mlflow.db, mlartifacts/                  the local MLflow store (unless experiment.mlflow_uri)

Calling run_experiment again resumes: a finished arm x seed (eval.DONE, curation.store's marker, holding
the key of the same settings) is neither trained nor scored again, and training.train resumes an
interrupted one from its last checkpoint. The held-out set never reaches training (no early stopping
on it, no eval loss).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curation.errors import ConfigError
from curation.settings import no_progress
from curation import store
from curation.store import frame_hash, read_json, write_json
from evaluation.arms import (arm_rows, dpo_config, plan_budget, profile, remove_heldout, remove_overlap, sft_source,
                             varies_by_seed)
from evaluation.config import CURATED_DPO, EvaluateConfig, ExperimentConfig
from evaluation.evaluate import evaluate_run
from evaluation.files import EVAL, EVAL_DONE, REPORT
from evaluation.loss_memo import memo_dir
from evaluation.report import add_benchmark, add_reference, aggregate, goal_sentence, write_plot, write_report
from evaluation.scoring import make_judges, prepare_heldout, score_model, summarise
from synthesis.cache import CACHE_FILE
from synthesis.teachers import Teachers
from training.config import TrainConfig

__all__ = ["ExperimentContext", "run_experiment", "evaluate_run"]
log = logging.getLogger(__name__)
SCORES = "scores.parquet"
REFERENCE, REFERENCE_DONE = "reference.parquet", "reference.DONE"


@dataclass(frozen=True)
class ExperimentContext:
    """The run-level context of one experiment: where its inputs live and what it may use; run_experiment's
    keywords besides `evaluate_config` (see there)."""

    seed: int = 0
    cache_dir: Path | None = None
    teachers: Teachers | None = None  # the judge's; it is served only while the experiment judges
    provenance: dict | None = None
    progress: Callable | None = None
    heldout_source: str | None = None
    base_dir: Path | None = None
    title: str | None = None
    log_fn: Callable[[str], None] = lambda m: None
    # the run the experiment belongs to (`pond run`'s folder): an arm x seed whose training is the run's own is not
    # trained again, and a model already scored there on the same rows is not scored again (loss_memo)
    run_dir: Path | None = None


@dataclass
class _Run:
    """What every part of an experiment shares: its folder, its settings, the student and the context."""

    out_dir: Path
    config: ExperimentConfig
    train: TrainConfig
    ecfg: EvaluateConfig
    ctx: ExperimentContext
    student: Path
    tokenizer: Any
    max_seq_len: int

    @property
    def track(self) -> Callable:
        return self.ctx.progress or no_progress

    @property
    def teachers(self) -> Teachers:
        return self.ctx.teachers or Teachers()

    @property
    def memo(self) -> Path | None:
        """Where the run keeps every model's losses (evaluation.loss_memo)."""
        return memo_dir(self.ctx.run_dir)

    @property
    def cache_path(self) -> Path | None:
        return (self.out_dir / CACHE_FILE) if self.ecfg.judge else None

    @property
    def name(self) -> str:
        # `pond experiment` writes into runs/NAME/experiment: name the MLflow experiment after the run.
        return self.ctx.title or (self.out_dir.resolve().parent.name if self.out_dir.name == "experiment"
                                  else self.out_dir.name)


@dataclass
class _Plan:
    """What the arms train on and for how long, and what the report says about it."""

    held: pl.DataFrame  # the held-out rows every model is scored on
    held_hash: str
    pool: pl.DataFrame
    curated: pl.DataFrame
    leaked: int  # pool rows equal to held-out rows, removed
    reference: pl.DataFrame | None
    data: dict[tuple[str, int], pl.DataFrame]  # each arm x seed's rows
    profiles: dict[str, dict]
    plans: dict[str, dict]  # each arm's budget (max_steps, epochs)
    heldout_source: str
    notes: list[str]


@dataclass
class _Scoring:
    """How each model is scored: the judges, the key a finished score must match, the base model's scores and
    the answers a pairwise judge compares with."""

    ask: Callable | None
    grade: Callable | None
    key: dict
    base: pl.DataFrame
    compare: list


def _write_json(path: Path, obj: Any) -> None:
    write_json(obj, path, indent=1, sort_keys=True)


def _train_summary(result) -> dict:
    keep = ("steps", "train_loss", "first_loss", "tokens_seen", "answer_tokens_seen", "train_seconds", "rows",
            "method", "compute_dtype", "truncated_rows", "dropped_rows")
    return {k: getattr(result, k) for k in keep} | {"adapter_dir": str(result.adapter_dir)}


_BOTH_STAGES = ("steps", "tokens_seen", "answer_tokens_seen", "train_seconds")


def _dpo_summary(result, sft: dict) -> dict:
    """A curated+dpo arm's training: the DPO stage's figures, with steps, tokens and time of both stages at the
    top level (what the arm cost, as the report's table counts it for every arm) and each stage's under
    `sft` and `dpo`. train_loss and first_loss stay DPO's (a preference loss, log 2 at the start)."""
    dpo = _train_summary(result)
    return {**dpo, **{k: sft[k] + dpo[k] for k in _BOTH_STAGES}, "dpo": dpo, "sft": sft}


def _heldout_source(heldout: pl.DataFrame) -> str:
    if "source" not in heldout.columns:
        return "the given held-out frame"
    sources = heldout["source"].unique(maintain_order=True).to_list()
    return "rows from " + ", ".join(sources[:3]) + (" …" if len(sources) > 3 else "")


def run_experiment(out_dir: Path, pool: pl.DataFrame, curated: pl.DataFrame, heldout: pl.DataFrame,
                   config: ExperimentConfig, train_config: TrainConfig, *,
                   evaluate_config: EvaluateConfig | None = None, context: ExperimentContext | None = None) -> dict:
    """Train and score every arm x seed, then write experiment.json, report.md and plot.png.

    pool: the noisy pool the `full`, `random_n` and `longest_n` arms draw from (held-out rows are
    removed from every arm); curated: the run's curated set; heldout: canonical records to score on.
    evaluate_config: the recipe's `evaluate:` section (judge, generation). `context`: progress is a
    `track(iterable, description, total)` wrapper for progress bars; teachers the run's teachers
    (synthesis.teachers), whose judge is served only for the parts that judge, so it never shares the
    cores with training or generation; heldout_source a sentence for the report saying where the
    held-out rows came from.
    """
    run = _open(Path(out_dir), config, train_config, evaluate_config or EvaluateConfig(),
                context or ExperimentContext())
    plan = _plan(run, pool, curated, heldout)
    scoring, results, mlflow_uri, mlflow_errors = _train_and_score_all(run, plan)
    return _report(run, plan, scoring, results, mlflow_uri, mlflow_errors)


def _open(out_dir: Path, config: ExperimentConfig, train_config: TrainConfig, ecfg: EvaluateConfig,
          ctx: ExperimentContext) -> _Run:
    """The experiment's folder, its metric checked against the evaluation it needs, and the student."""
    from training.model import load_tokenizer, resolve_student, set_threads

    out_dir.mkdir(parents=True, exist_ok=True)
    if config.metric in ("judge_win_rate", "judge_score") and not ecfg.judge:
        raise ConfigError(f"experiment.metric {config.metric} needs a judge: set evaluate.judge and n_generate")
    if config.metric in ("exact_match", "token_f1") and (ecfg.n_generate == 0 or ecfg.task_metrics == "never"):
        raise ConfigError(f"experiment.metric {config.metric} needs generated answers: set evaluate.n_generate")
    if config.metric == "reference_loss" and not ecfg.reference:
        raise ConfigError("experiment.metric reference_loss needs evaluate.reference (e.g. alpaca_eval)")
    if config.metric.startswith("ifeval_") and ecfg.benchmark != "ifeval":
        raise ConfigError(f"experiment.metric {config.metric} needs evaluate.benchmark: ifeval")
    for arm in config.arms:
        if arm.data == CURATED_DPO:
            dpo_config(arm, train_config)  # a method without an adapter, or a clashing base_method: one line now
    max_seq_len = ecfg.max_seq_len or train_config.max_seq_len
    set_threads(train_config.threads)
    student = resolve_student(train_config.student, ctx.cache_dir)
    return _Run(out_dir, config, train_config, ecfg, ctx, student, load_tokenizer(student), max_seq_len)


def _plan(run: _Run, pool: pl.DataFrame, curated: pl.DataFrame, heldout: pl.DataFrame) -> _Plan:
    """The held-out rows; the pool and curated set without them and without what the reference answers or the
    benchmark share with them; each arm x seed's rows, each arm's profile and its budget."""
    held = prepare_heldout(heldout, run.ecfg)
    pool, leaked = remove_heldout(pool, heldout)
    notes = []
    if leaked:
        notes.append(f"{leaked} pool rows equal to held-out rows were removed before building the arms.")
    reference = _reference_rows(run.ecfg, run.ctx.base_dir)
    evals = _evaluation_texts(run.ecfg, reference, run.ctx.base_dir)
    if evals is not None:
        pool, n = remove_overlap(pool, evals)
        curated, m = remove_overlap(curated, evals)
        notes.append(f"{n} pool rows and {m} curated rows sharing a 13-word n-gram with the reference answers or "
                     "the benchmark prompts were removed before building the arms.")
    data = _arm_data(run, pool, curated, heldout, notes)
    profiles = _profiles(run, data)
    plans = plan_budget(run.config, run.train, profiles)
    for arm in run.config.arms:
        if arm.data == CURATED_DPO:
            d = plans[arm.name]["dpo"]
            length = f"{d['max_steps']} steps" if d["max_steps"] else f"{d['epochs']:g} epoch(s)"
            notes.append(f"`{arm.name}`: the `{plans[arm.name]['sft_from']}` arm's SFT adapter of the same seed, "
                         f"trained on with DPO on the curated set's {d['pairs']} preference pairs ({length}, beta "
                         f"{d['beta']:g}, lr {d['lr']:g}, the SFT adapter the frozen reference); its steps, answer "
                         f"tokens and train time are both stages', and its difference from "
                         f"`{plans[arm.name]['sft_from']}` is the DPO stage's alone.")
    return _Plan(held, frame_hash(held), pool, curated, leaked, reference, data, profiles, plans,
                 run.ctx.heldout_source or _heldout_source(heldout), notes)


def _arm_data(run: _Run, pool: pl.DataFrame, curated: pl.DataFrame, heldout: pl.DataFrame, notes: list[str]
              ) -> dict[tuple[str, int], pl.DataFrame]:
    """Each arm's rows for every seed (only random_n differs between seeds), held-out rows removed."""
    config = run.config
    data: dict[tuple[str, int], pl.DataFrame] = {}
    for arm in config.arms:
        for s in config.seeds:
            if varies_by_seed(arm) or s == config.seeds[0]:
                rows = arm_rows(arm, pool, curated, seed=(run.ctx.seed, s), base_dir=run.ctx.base_dir)
                df, n = remove_heldout(rows, heldout)
                if n:
                    notes.append(f"arm `{arm.name}`: {n} rows equal to held-out rows were removed.")
                data[arm.name, s] = df
            else:
                data[arm.name, s] = data[arm.name, config.seeds[0]]
    return data


def _profiles(run: _Run, data: dict[tuple[str, int], pl.DataFrame]) -> dict[str, dict]:
    """Each arm's profile (of its first seed's rows); a profile.json of the same rows is read back."""
    profiles = {}
    max_seq_len = run.train.max_seq_len
    for arm in run.config.arms:
        df = data[arm.name, run.config.seeds[0]]
        h = frame_hash(df)
        path = run.out_dir / "arms" / arm.name / "profile.json"
        cached = read_json(path)
        if cached and cached.get("data_hash") == h and cached.get("max_seq_len") == max_seq_len:
            profiles[arm.name] = cached["profile"]
            continue
        profiles[arm.name] = profile(df, run.tokenizer, max_seq_len)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, {"data_hash": h, "max_seq_len": max_seq_len, "profile": profiles[arm.name]})
    return profiles


def _train_and_score_all(run: _Run, plan: _Plan) -> tuple[_Scoring, dict[tuple[str, int], dict], str | None,
                                                          list[str]]:
    """The base model's scores, then every arm x seed trained and scored (and logged to MLflow), the judge
    served meanwhile where held-out answers are judged. Returns the scoring, each arm x seed's result, the
    MLflow store and the MLflow errors."""
    ask, grade = make_judges(run.ecfg, run.teachers, run.cache_path, run.track)
    stack = contextlib.ExitStack()
    if run.ecfg.n_generate and run.ecfg.judge:  # held-out answers are judged as each arm finishes
        stack.enter_context(run.teachers.serving(run.ecfg.judge))
    key = {"heldout_hash": plan.held_hash, "evaluate": run.ecfg.model_dump(mode="json"),
           "max_seq_len": run.max_seq_len, "student": str(run.student), "method": run.train.method,
           "compute_dtype": run.train.compute_dtype,
           **({} if run.config.score_heldout else {"score_heldout": False})}
    base = _base_scores(run, _heldout_scored(run, plan), key, grade)
    compare = plan.held["reference"].to_list() if run.ecfg.judge_against == "reference" else base["answer"].to_list()
    scoring = _Scoring(ask, grade, key, base, compare)

    mlflow_uri = None
    mlflow_errors: list[str] = []
    if run.config.mlflow:
        from evaluation.tracking import tracking_uri

        mlflow_uri = tracking_uri(run.out_dir, run.config.mlflow_uri)
    # a curated+dpo arm goes on from the curated arm's adapter of the same seed: it trains after it
    jobs = sorted([(arm, s) for arm in run.config.arms for s in run.config.seeds],
                  key=lambda job: job[0].data == CURATED_DPO)
    results: dict[tuple[str, int], dict] = {}
    for arm, s in run.track(jobs, "experiment: arms x seeds", len(jobs)):
        seed_key, results[arm.name, s] = _arm_seed(run, plan, scoring, arm, s, results)
        if run.config.mlflow:
            err = _track(run, arm, s, seed_key, plan.plans[arm.name], results[arm.name, s])
            if err:
                mlflow_errors.append(err)
    stack.close()
    return scoring, results, mlflow_uri, mlflow_errors


def _heldout_scored(run: _Run, plan: _Plan) -> pl.DataFrame:
    """The held-out rows every model is scored on: none without score_heldout (the metric's rows are scored in
    _report)."""
    return plan.held if run.config.score_heldout else plan.held.head(0)


def _scored(folder: Path, key: dict) -> bool:
    """Whether this folder's model was scored with this key (its scores and eval.json are in place)."""
    return store.finished(folder, store.key_of(key), name=EVAL_DONE)


def _write_scores(folder: Path, key: dict, scores: pl.DataFrame, summary: dict) -> None:
    """A model's per-row scores and eval.json (the key among its figures), then the marker that vouches for both."""
    scores.write_parquet(folder / SCORES)
    _write_json(folder / EVAL, {"key": key, **summary})
    store.mark_finished(folder, store.key_of(key), name=EVAL_DONE)


def _base_scores(run: _Run, held: pl.DataFrame, key: dict, grade) -> pl.DataFrame:
    d = run.out_dir / "base"
    if _scored(d, key):
        return pl.read_parquet(d / SCORES)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    scores = score_model(run.student, run.train.method, run.train.compute_dtype, held, run.ecfg, run.max_seq_len,
                         grade=grade, cache_dir=run.ctx.cache_dir, progress=run.track, memo=run.memo)
    _write_scores(d, key, scores, {"metrics": summarise(scores), "eval_seconds": time.perf_counter() - t0})
    return scores


def _arm_seed(run: _Run, plan: _Plan, scoring: _Scoring, arm, s: int, results: dict[tuple[str, int], dict]
              ) -> tuple[dict, dict]:
    """Train and score one arm x seed, or read it back when it was scored with the same key. Returns (key, result).
    A curated+dpo arm reads the curated arm's result of the same seed from `results`."""
    from curation.store import file_digest
    from training.trainer import train

    seed_dir = run.out_dir / "arms" / arm.name / f"seed-{s}"
    df = plan.data[arm.name, s]
    data_hash = frame_hash(df)
    arm_train = run.train.model_copy(update={"max_steps": plan.plans[arm.name]["max_steps"],
                                             "epochs": plan.plans[arm.name]["epochs"]})
    sft = None
    if arm.data == CURATED_DPO:  # the DPO stage alone; its SFT stage is the curated arm's, trained already
        sft = results[sft_source(run.config), s]["train"]
        arm_train = dpo_config(arm, arm_train)
    key = {"arm": arm.model_dump(mode="json"), "seed": s, "data_hash": data_hash,
           "train": arm_train.model_dump(mode="json"), **scoring.key}
    if sft is not None:
        key["sft_adapter_hash"] = file_digest(Path(sft["adapter_dir"]) / "adapter_model.safetensors")
    if _scored(seed_dir, key):
        log.info("%s seed %d: finished earlier", arm.name, s)
        done = read_json(seed_dir / EVAL)
        return key, {"seed": s, "train": done["train"], "scores": pl.read_parquet(seed_dir / SCORES)}
    log.info("%s seed %d: training on %d rows (max_steps=%s)", arm.name, s, df.height, arm_train.max_steps)
    seed_dir.mkdir(parents=True, exist_ok=True)
    df.select("id").write_parquet(seed_dir / "ids.parquet")
    _write_json(seed_dir / "dataset.json", {"dataset_hash": data_hash, "rows": df.height, "arm": arm.name,
                                            "data": arm.data, "seed": s})
    prov = {**(run.ctx.provenance or {}), "dataset_hash": data_hash, "experiment_arm": arm.name}
    if sft is None:
        result = train(df, arm_train, seed_dir, seed=s, cache_dir=run.ctx.cache_dir, provenance=prov,
                       same_as=run.ctx.run_dir)
    else:
        from training.dpo import train_dpo

        result = train_dpo(df, arm_train, seed_dir, seed=s, cache_dir=run.ctx.cache_dir, provenance=prov,
                           sft_adapter=Path(sft["adapter_dir"]))
    t0 = time.perf_counter()
    scores = score_model(run.student, run.train.method, run.train.compute_dtype, _heldout_scored(run, plan), run.ecfg,
                         run.max_seq_len, adapter_dir=result.adapter_dir, compare_answers=scoring.compare,
                         ask=scoring.ask, grade=scoring.grade, cache_dir=run.ctx.cache_dir, progress=run.track,
                         memo=run.memo)
    trained = _train_summary(result) if sft is None else _dpo_summary(result, sft)
    summary = {"train": trained, "metrics": summarise(scores), "eval_seconds": time.perf_counter() - t0}
    _write_scores(seed_dir, key, scores, summary)
    return key, {"seed": s, "train": summary["train"], "scores": scores}


def _report(run: _Run, plan: _Plan, scoring: _Scoring, results: dict[tuple[str, int], dict],
            mlflow_uri: str | None, mlflow_errors: list[str]) -> dict:
    """Every arm's figures with intervals (and the reference loss and the benchmark, when asked), written as
    experiment.json, report.md and plot.png; returns the summary."""
    config, train_config = run.config, run.train
    arms_out = []
    for arm in config.arms:
        rows = [plan.data[arm.name, s].height for s in config.seeds]
        arms_out.append({"name": arm.name, "data": arm.data, "profile": plan.profiles[arm.name],
                         "plan": plan.plans[arm.name], "rows": rows[0] if len(set(rows)) == 1 else rows,
                         "seeds": [results[arm.name, s] for s in config.seeds]})
    summary = aggregate(arms_out, scoring.base, plan.held, metric=config.metric, baseline=config.baseline,
                        slices=list(config.slices) if config.score_heldout else [], resamples=config.bootstrap_resamples,
                        confidence=config.confidence)
    if plan.reference is not None:
        add_reference(summary, _reference(run, results, plan.reference))
    if run.ecfg.benchmark:
        add_benchmark(summary, _benchmark(run, results))
    summary.update({
        "heldout_source": plan.heldout_source, "heldout_hash": plan.held_hash, "budget": config.budget,
        "seeds": config.seeds, "experiment": config.model_dump(mode="json"),
        "train": train_config.model_dump(mode="json"), "evaluate": run.ecfg.model_dump(mode="json"),
        "student": str(run.student), "pool_rows": plan.pool.height, "curated_rows": plan.curated.height,
        "leaked_rows_removed": plan.leaked, "mlflow_uri": mlflow_uri, "mlflow_errors": mlflow_errors,
        "provenance": run.ctx.provenance or {}, "notes": plan.notes,
    })
    summary["summary"] = _headline(summary)
    _write_json(run.out_dir / "experiment.json", summary)
    heading = run.ctx.title or f"Quality vs quantity: {run.name}"
    budget_note = {"equal_steps": "every arm ran the same number of optimizer steps",
                   "equal_epochs": f"every arm made {train_config.epochs:g} pass(es) over its own rows",
                   "equal_tokens": "steps were set so every arm saw about the same number of answer tokens"}
    notes = [f"Budget `{config.budget}`: {budget_note[config.budget]}; seeds {config.seeds}; student "
             f"`{train_config.student}` ({train_config.method}, lr {train_config.lr:g}, batch "
             f"{train_config.batch_size}×{train_config.grad_accum}, {train_config.max_seq_len} tokens)."] + plan.notes
    if mlflow_errors:
        notes.append(f"MLflow logging failed: {mlflow_errors[0]}")
    write_report(run.out_dir / REPORT, summary, title=heading, heldout_source=plan.heldout_source, notes=notes)
    write_plot(run.out_dir / "plot.png", summary, heading)
    return summary


def _benchmark(run: _Run, results: dict) -> dict:
    """Every judged seed's adapter (and the base model) answers the benchmark; IFEval's checkers score the answers,
    or the judge grades them and compares each arm with the baseline arm of the same seed."""
    from evaluation.benchmark_eval import benchmark_figures
    from evaluation.benchmarks import load_benchmark
    from evaluation.generation import answerer
    from evaluation.ifeval import IFEVAL

    config, ecfg, train_config, track, log = run.config, run.ecfg, run.train, run.track, run.ctx.log_fn
    seeds = ecfg.benchmark_seeds or config.seeds
    missing = sorted(set(seeds) - set(config.seeds))
    if missing:
        raise ConfigError(f"evaluate.benchmark_seeds {missing} are not experiment seeds {config.seeds}")
    questions = load_benchmark(ecfg.benchmark, run.ctx.base_dir, per_category=ecfg.benchmark_per_category,
                               sample=ecfg.benchmark_sample)
    models: dict[str, Path | None] = {"base": None}
    groups: dict[str, list[str]] = {"base": ["base"]}
    for arm in config.arms:
        groups[arm.name] = [f"{arm.name}-s{s}" for s in seeds]
        for s in seeds:
            models[f"{arm.name}-s{s}"] = Path(results[arm.name, s]["train"]["adapter_dir"])
    pairs = [(f"{arm.name}-s{s}", f"{config.baseline}-s{s}") for arm in config.arms if arm.name != config.baseline
             for s in seeds]

    def make_answerer(ms):
        return answerer(run.student, ms, backend=ecfg.generation, method=train_config.method,
                        compute_dtype=train_config.compute_dtype, max_new_tokens=ecfg.max_new_tokens,
                        batch_size=ecfg.batch_size, cache_path=run.cache_path, cache_dir=run.ctx.cache_dir,
                        progress=track, log=log)

    bench = benchmark_figures(run.out_dir / "benchmark", questions, models, groups, config.baseline, ecfg,
                              answerer=make_answerer, pairs=pairs, teachers=run.teachers,
                              cache_path=run.cache_path,
                              count_tokens=lambda a: len(run.tokenizer(a, add_special_tokens=False)["input_ids"]),
                              resamples=config.bootstrap_resamples, confidence=config.confidence, track=track, log=log)
    if ecfg.benchmark == IFEVAL:
        bench["judged"] = (f"Checked by code: {bench['prompts']} IFEval prompts, seeds {seeds} of each arm plus the "
                           f"base model. Answers: greedy, at most {ecfg.max_new_tokens} new tokens, generated with "
                           f"{ecfg.generation}.")
        return bench
    refs = sum(r is not None for refs in questions["references"].to_list()
               for r in refs[:ecfg.benchmark_turns])
    judged = " and ".join({"single": "single-answer grades 1-10 (with the reference answer where the benchmark "
                                     "gives one)",
                           "pairwise": f"pairwise against `{config.baseline}` of the same seed, both orders asked, "
                                       "an inconsistent pair a tie"}[j] for j in ecfg.benchmark_judge)
    bench["judged"] = (f"Judged: {bench['questions']} questions ({', '.join(bench['categories'])}"
                       f"{f'; the first {ecfg.benchmark_per_category} of each category' if ecfg.benchmark_per_category else ''}), "
                       f"turns {', '.join(str(t + 1) for t in bench['turns'])}, seeds {seeds} of each arm plus the "
                       f"base model; {refs} question-turns with a reference answer. Judge `{ecfg.judge}`: {judged}. "
                       f"Answers: greedy, at most {ecfg.max_new_tokens} new tokens, generated with {ecfg.generation}. "
                       f"Intervals resample questions x turns (paired between arms) and seeds.")
    return bench


def _reference_rows(ecfg: EvaluateConfig, base_dir: Path | None) -> pl.DataFrame | None:
    from evaluation.reference import load_reference

    return load_reference(ecfg.reference, base_dir, rows=ecfg.reference_rows) if ecfg.reference else None


def _evaluation_texts(ecfg: EvaluateConfig, reference: pl.DataFrame | None, base_dir: Path | None
                      ) -> pl.DataFrame | None:
    """What no arm may train on besides the held-out rows: every reference row (not only the sample) and
    the prompts of a benchmark checked by code, as plain texts for the n-gram match."""
    from evaluation.ifeval import IFEVAL, load_ifeval
    from evaluation.reference import load_reference

    texts = []
    if reference is not None:
        texts += load_reference(ecfg.reference, base_dir)["text"].to_list()
    if ecfg.benchmark == IFEVAL:
        texts += load_ifeval()["turns"].list.first().to_list()
    if not texts:
        return None
    return pl.DataFrame({"messages": [[]] * len(texts), "text": texts},
                        schema={"messages": pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8})), "text": pl.Utf8})


def _reference(run: _Run, results: dict, reference: pl.DataFrame) -> dict:
    """Every arm x seed's (and the base model's) loss on the reference rows; a finished one is read back."""
    from evaluation.reference import fit, reference_losses

    ref_hash = frame_hash(reference)
    ecfg = run.ecfg
    kw = dict(batch_size=ecfg.batch_size, cache_dir=run.ctx.cache_dir, progress=run.track, memo=run.memo)

    def scored(folder: Path, adapter: Path | None) -> pl.DataFrame:
        key = {"reference": ref_hash, "max_seq_len": ecfg.reference_max_seq_len, "adapter": str(adapter),
               "trained": read_json(folder / EVAL).get("key", {}).get("data_hash")}
        if store.finished(folder, store.key_of(key), name=REFERENCE_DONE):
            return pl.read_parquet(folder / REFERENCE)
        folder.mkdir(parents=True, exist_ok=True)
        f = reference_losses(run.student, run.train.method, run.train.compute_dtype, reference,
                             ecfg.reference_max_seq_len, adapter_dir=adapter, **kw)
        f.write_parquet(folder / REFERENCE)
        store.mark_finished(folder, store.key_of(key), key, name=REFERENCE_DONE)  # the key's parts, for a reader
        return f

    arms = {arm.name: [scored(run.out_dir / "arms" / arm.name / f"seed-{s}",
                              Path(results[arm.name, s]["train"]["adapter_dir"]))
                       for s in run.config.seeds] for arm in run.config.arms}
    return {"name": ecfg.reference, "fit": fit(reference, run.tokenizer, ecfg.reference_max_seq_len),
            "base": scored(run.out_dir / "base", None), "arms": arms}


def _headline(summary: dict) -> dict:
    """A few lines for the CLI: each arm's headline metric with its interval, and the verdict."""
    metric, baseline = summary["metric"], summary["baseline"]
    arms = {}
    for a in summary["arms"]:
        m = a["metrics"].get(metric, {})
        d = a.get("vs_" + baseline, {}).get(metric)
        arms[a["name"]] = {"rows": a["rows"], metric: m.get("mean"), "ci": [m.get("low"), m.get("high")],
                           f"vs_{baseline}": None if d is None else [d["mean"], d["low"], d["high"]]}
    out = {"metric": metric, "arms": arms, "verdict": summary["verdict"]["sentence"]}
    bench = summary.get("benchmark")
    if bench and bench.get("name") == "ifeval":
        from evaluation.ifeval import headline

        out["benchmark"] = headline(bench, summary["arms"][0]["name"], baseline)
    elif bench:
        out["benchmark"] = goal_sentence(summary, summary["arms"][0]["name"])
    return out


def _track(run: _Run, arm, s: int, key: dict, plan: dict, result: dict) -> str | None:
    """Log one arm x seed to MLflow once (mlflow.json remembers it); returns an error message or None."""
    from evaluation.tracking import log_arm_seed

    config, seed_dir = run.config, run.out_dir / "arms" / arm.name / f"seed-{s}"
    marker = read_json(seed_dir / "mlflow.json")
    if marker and marker.get("key") == key:
        return None
    train = result["train"]
    params = {"arm": arm.name, "data": arm.data, "seed": s, "budget": config.budget,
              "dataset_hash": key["data_hash"], "heldout_hash": key["heldout_hash"], "max_steps": plan["max_steps"],
              **{f"train.{k}": v for k, v in key["train"].items() if v is not None}}
    metrics = {**summarise(result["scores"]), **{f"train_{k}": v for k, v in train.items()
                                                 if isinstance(v, (int, float))}}
    card = Path(train["adapter_dir"]) / "README.md"
    try:
        rid = log_arm_seed(run.out_dir, config.mlflow_uri, run.name, f"{arm.name}-seed{s}", params, metrics,
                           [card, seed_dir / "dataset.json", seed_dir / EVAL],
                           tags={"pond.arm": arm.name, "pond.seed": str(s)})
    except Exception as e:  # noqa: BLE001 — tracking must not lose a finished experiment
        log.warning("MLflow logging failed for %s seed %d: %s", arm.name, s, e)
        return f"{type(e).__name__}: {e}"
    _write_json(seed_dir / "mlflow.json", {"key": key, "run_id": rid})
    return None

"""Whole-recipe orchestration: curation (runner) -> training -> evaluation, plus the manifest.

The heavy packages (torch, the teacher client) are imported only when a recipe asks for them.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from curation.errors import DataNotFound
from curation.store import file_digest
from pond import __version__, layout, ledger, pace
from pond.recipe import Recipe
from pond.report_html import write_report_html
from pond.estimate import estimate_run  # noqa: F401  (`pond run --estimate`; its old home)
from pond.runner import Runner, write_manifest

Log = Callable[[str], None]


def _provenance(runner: Runner, curated: Path) -> dict[str, Any]:
    return {"dataset_hash": file_digest(curated), "dataset_path": str(curated), "recipe_hash": runner.recipe.digest(),
            "recipe": runner.recipe.name, "pond_version": __version__}


def _heldout(runner: Runner, recipe: Recipe, source: str | None) -> tuple[pl.DataFrame | None, str]:
    """The held-out rows: an external file, or the run's own pre-curation draw (`run:heldout.parquet`)."""
    if source is None:
        source = f"run:{layout.HELDOUT}"
    ctx = runner.context(runner.out)
    path = ctx.resolve(source)
    if not path.exists():
        return None, source
    if path.suffix == ".parquet":
        return pl.read_parquet(path), source
    from curation.ingest import read_records

    return read_records(path)[0], source


def run_pipeline(recipe: Recipe, out: Path, base_dir: Path, *, fresh: bool = False, train: bool = True,
                 track: Callable | None = None, log: Log = lambda m: None) -> str:
    """`pond run`: curate; then train, evaluate and run the experiment if the recipe has them.
    The first line logged is the plan (what the run will do, and about how long it takes here)."""
    plan = _plan(recipe, out, base_dir, fresh, train)
    log(plan["line"])
    # a resumed run's student stages may be partly done (an arm, a checkpoint) where the plan counts them whole
    first_run = fresh or not (out / layout.MANIFEST).exists()
    runner = Runner(recipe, out, base_dir, fresh=fresh, track=track, log=log)
    extra: dict[str, Any] = {"plan": plan}
    timings: dict[str, float] = {}
    with _stage("curation and synthesis", log, timings, "curation_and_synthesis"):
        curated = runner.curate()
    write_manifest(runner, {"plan": plan, "timings": timings})
    if train and recipe.train is not None:
        with _stage("training", log, timings, "train"):
            extra["train"] = _train(runner, curated, recipe, track, log)
        if recipe.evaluate is not None:
            with _stage("evaluation", log, timings, "evaluate"), ExitStack() as stack:
                extra["evaluate"] = _evaluate(runner, recipe, stack, log, track)
        if recipe.experiment is not None:
            with _stage("experiment", log, timings, "experiment"):
                extra["experiment"] = _experiment(runner, curated, recipe, track, log)
    extra["timings"] = {k: round(v, 1) for k, v in timings.items()}
    learned = pace.record(plan, timings, runner.out) if first_run else None
    if learned is not None:
        log(f"pace: the student's compute ran at x{learned:.2f} of the per-unit costs (pond/pace.py: the next plan "
            f"on this machine charges it so)")
    write_manifest(runner, extra)
    ledger.append(runner.out, "finished")
    write_report_html(runner.out)
    return summary(runner.out)


PLAN_MAX_INPUT_BYTES = 64 << 20


def _plan(recipe: Recipe, out: Path, base_dir: Path, fresh: bool, train: bool) -> dict[str, Any]:
    """The plan line from `--estimate`'s counts and costs, and its seconds per stage (kept in the manifest beside
    the timings); a run folder about to be deleted (`--fresh`) counts as empty. An input the estimate cannot read
    is the run's own error to report."""
    from curation.ingest import expand_paths
    from pond.estimate import estimate, plan_line, plan_seconds

    try:
        size = sum(p.stat().st_size for p in expand_paths(recipe.input.path, base_dir, recipe.input.format))
        if size > PLAN_MAX_INPUT_BYTES and recipe.input.limit is None:
            # the estimate reads the input in memory; a big corpus is read once, by ingest, in batches
            return {"line": f"plan: {recipe.name}: {size / 2**20:.0f} MB of input; `pond run --estimate` counts and "
                            f"times it (the plan line reads inputs under {PLAN_MAX_INPUT_BYTES >> 20} MB only)"}
        est = estimate(recipe, None if fresh else out, base_dir, train=train)
    except Exception as exc:  # noqa: BLE001 - the plan is advice; ingest reports a bad input in its own words
        return {"line": f"plan: {recipe.name}: no estimate ({type(exc).__name__}: {exc})"}
    costs = {"costs": est.costs.label, **({"pace": est.costs.pace} if est.costs.pace != 1 else {})} if est.costs else {}
    return {"line": plan_line(recipe, est), "seconds": plan_seconds(est), **costs}


@contextmanager
def _stage(name: str, log: Log, timings: dict[str, float], key: str):
    """One line as a stage starts and one as it ends, with its time (kept in the manifest's timings)."""
    log(f"── {name}: started")
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0
    log(f"── {name}: done in {timings[key]:.0f} s")


def _trainer(config) -> Callable:
    """What trains a `train:` section: training.dpo for method dpo (after its SFT stage), else training.trainer."""
    if config.method == "dpo":
        from training.dpo import train_dpo

        return train_dpo
    from training.trainer import train

    return train


def _train(runner: Runner, curated: Path, recipe: Recipe, track, log: Log) -> dict[str, Any]:
    train = _trainer(recipe.train)
    heldout, _ = _heldout(runner, recipe, recipe.evaluate.heldout if recipe.evaluate else None)
    df = pl.read_parquet(curated)
    log(f"train: {len(df)} rows, {recipe.train.method} on {recipe.train.student}")
    ledger.append(runner.out, "train", rows=len(df))
    result = train(df, recipe.train, runner.out, seed=recipe.seed, eval_df=heldout, cache_dir=runner.cache_dir,
                   provenance=_provenance(runner, curated), progress=track)
    ledger.append(runner.out, "trained", steps=result.steps, seconds=result.train_seconds)
    return {"adapter": str(result.adapter_dir), "steps": result.steps, "first_loss": result.first_loss,
            "train_loss": result.train_loss, "eval_losses": result.eval_losses, "seconds": result.train_seconds,
            "rows": result.rows, "tokens_seen": result.tokens_seen}


def _evaluate(runner: Runner, recipe: Recipe, stack: ExitStack, log: Log, track=None) -> dict[str, Any]:
    from evaluation.evaluate import evaluate_run

    heldout, source = _heldout(runner, recipe, recipe.evaluate.heldout)
    if heldout is None:
        raise DataNotFound(f"held-out set {source} not found (add a `holdout` step or set evaluate.heldout)")
    runner.teachers.keep_only(())  # the judge is served only while evaluation judges
    log(f"evaluate: {len(heldout)} held-out rows from {source}")
    ledger.append(runner.out, "evaluate", rows=len(heldout))
    result = evaluate_run(runner.out, runner.out / layout.ADAPTER, heldout, recipe.evaluate, recipe.train.as_sft(),
                          teachers=runner.teachers, cache_dir=runner.cache_dir, progress=track,
                          heldout_source=_heldout_sentence(source), base_dir=runner.base_dir, log=log)
    result = result if isinstance(result, dict) else {}
    return {"eval": str(runner.out / layout.EVAL), "report": str(runner.out / layout.REPORT),
            "headline": {k: v for k, v in result.items() if isinstance(v, (int, float, str))}}


def _heldout_sentence(source: str) -> str:
    if source.startswith("run:"):
        return ("drawn from the raw pool before curation, with validity rules only "
                "(a user prompt and a non-empty answer) — the `holdout` step")
    return f"the external file {source}"


def _experiment(runner: Runner, curated: Path, recipe: Recipe, track, log: Log) -> dict[str, Any]:
    from evaluation.experiment import ExperimentContext, run_experiment

    heldout, source = _heldout(runner, recipe, recipe.evaluate.heldout if recipe.evaluate else None)
    if heldout is None:
        raise DataNotFound(f"held-out set {source} not found (add a `holdout` step first)")
    # the noisy pool: every row that entered curation (after ingest's validity checks), minus the held-out draw
    pool = pl.read_parquet(layout.ingest_output(runner.out))
    pool = pool.filter(~pl.col("id").is_in(heldout["id"].implode()))
    log(f"experiment: {len(recipe.experiment.arms)} arms x {len(recipe.experiment.seeds)} seeds")
    # the judge is served only while the experiment judges (runner.teachers), not while it trains
    runner.teachers.keep_only(())
    context = ExperimentContext(seed=recipe.seed, cache_dir=runner.cache_dir, teachers=runner.teachers,
                                provenance=_provenance(runner, curated), progress=track,
                                heldout_source=_heldout_sentence(source), base_dir=runner.base_dir, title=recipe.name,
                                log_fn=log, run_dir=runner.out)
    result = run_experiment(runner.out / layout.EXPERIMENT, pool, pl.read_parquet(curated), heldout, recipe.experiment,
                            recipe.train.as_sft(), evaluate_config=recipe.evaluate, context=context)
    return {"dir": str(runner.out / layout.EXPERIMENT), **{k: v for k, v in result.items() if k in ("summary", "headline")}}


def train_only(data: Path, out: Path, config, track=None) -> str:
    from training.config import TrainConfig

    config = config or TrainConfig()
    df = pl.read_parquet(data)
    provenance = {"dataset_hash": file_digest(data), "dataset_path": str(data), "pond_version": __version__}
    result = _trainer(config)(df, config, out, provenance=provenance, progress=track)
    return f"adapter: {result.adapter_dir} ({result.steps} steps, loss {result.first_loss:.3f} -> {result.train_loss:.3f})"


def run_experiment_recipe(recipe: Recipe, out: Path, base_dir: Path, *, track=None, log: Log = lambda m: None) -> str:
    """`pond experiment`: curate (resuming), then train and score every arm x seed."""
    from training.config import TrainConfig

    if recipe.train is None:
        recipe = recipe.model_copy(update={"train": TrainConfig()})
    runner = Runner(recipe, out, base_dir, track=track, log=log)
    curated = runner.curate()
    result = _experiment(runner, curated, recipe, track, log)
    write_manifest(runner, {"experiment": result})
    write_report_html(runner.out)
    return summary(runner.out)


BENCHMARK_COMMAND = "pond experiment recipes/quality_vs_quantity.yaml"


def _calibration_lines(steps: list[dict]) -> list[str]:
    """Each judge's calibration in one line: passed or refused, the worst corruption, self-judging said."""
    out = []
    for stats in steps:
        cal = stats.get("calibration")
        if not cal:
            continue
        verdict = ("REFUSED, rows passed unjudged" if stats.get("refused") else
                   "passed" if (cal.get("worst_auc") or 0) >= cal["min_calibration"] else "refused")
        own = "; self-judging (this model wrote the rows it judges)" if (stats.get("options") or {}).get(
            "self_judge") else ""
        out.append(f"judge calibration ({cal['judge']}, {cal['rubric']}): {verdict}: worst AUC {cal['worst_auc']} on "
                   f"{cal['worst']} (min {cal['min_calibration']}; {cal['positives']} real rows and their "
                   f"corruptions){own}")
    return out


def _summary_details(run: Path, manifest: dict) -> list[str]:
    """Rejections by reason, teacher calls and tokens, held-out metrics of the adapter and of every arm."""
    lines: list[str] = []
    reasons: dict[str, int] = {}
    teacher = {"requests": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0, "failed": 0}
    for stats in layout.funnel(run):
        for reason, n in (stats.get("reasons") or {}).items():
            key = layout.tag_of(reason)
            reasons[key] = reasons.get(key, 0) + n
        t = stats.get("teacher") or {}
        teacher["requests"] += t.get("sent", 0)
        for k in ("cache_hits", "prompt_tokens", "completion_tokens", "failed"):
            teacher[k] += t.get(k, 0)
    if reasons:
        top = sorted(reasons.items(), key=lambda kv: -kv[1])[:6]
        lines.append("rejected: " + ", ".join(f"{k} {v}" for k, v in top) + (" …" if len(reasons) > 6 else ""))
    lines += _calibration_lines(layout.funnel(run))
    if any(teacher.values()):
        lines.append(f"teacher: {teacher['requests']} requests sent ({teacher['cache_hits']} answered from cache, "
                     f"{teacher['failed']} failed), {teacher['prompt_tokens']} prompt + "
                     f"{teacher['completion_tokens']} completion tokens")
    ev = layout.read_json(run / layout.EVAL).get("intervals", {}).get("heldout_loss", {})
    if ev:
        b, a, d = ev["base_model"], ev["adapter"], ev["adapter_minus_base"]
        lines.append(f"held-out loss: base {b['mean']:.4f} -> adapter {a['mean']:.4f} "
                     f"(difference {d['mean']:+.4f}, 95% CI {d['low']:+.4f} to {d['high']:+.4f})")
    exp = (manifest.get("experiment") or {}).get("summary") or {}
    for name, arm in (exp.get("arms") or {}).items():
        lo, hi = arm["ci"]
        lines.append(f"  arm {name:<12} {arm['rows']:>6} rows  {exp['metric']} {arm[exp['metric']]:.4f} [{lo:.4f}, {hi:.4f}]")
    if exp.get("verdict"):
        lines.append("verdict: " + exp["verdict"])
    if exp.get("benchmark"):
        lines.append("benchmark: " + exp["benchmark"])
    elif exp:
        lines.append(f"benchmark: none in this recipe; `{BENCHMARK_COMMAND}` has every arm answer IFEval, "
                     "checked by code, and counts the answers' failures (docs/quality_vs_quantity.md)")
    return lines


def summary(run: Path) -> str:
    manifest = json.loads((run / layout.MANIFEST).read_text())
    lines = [f"run: {run}"]
    for s in manifest["steps"]:
        lines.append(f"  {s['kind']:<15} {s['in']:>7} -> {s['out']:>7}  (-{s['rejected']}){'  [resumed]' if s.get('skipped') else ''}")
    lines.append(f"curated: {run / layout.CURATED}")
    lines += _summary_details(run, manifest)
    if "train" in manifest:
        t = manifest["train"]
        lines.append(f"adapter: {t['adapter']}  {t['steps']} steps, {t['tokens_seen']} tokens, "
                     f"{t['seconds']:.0f}s of training (train loss, first step {t['first_loss']:.3f}, "
                     f"last steps {t['train_loss']:.3f})")
    if "timings" in manifest:
        lines.append("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in manifest["timings"].items()))
    for name in layout.RESULT_FILES:
        if (run / name).exists():
            lines.append(f"{name}: {run / name}")
    return "\n".join(lines)

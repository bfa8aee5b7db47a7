"""Whole-recipe orchestration: curation (runner) -> training -> evaluation, plus the manifest.

The heavy packages (torch, the teacher client) are imported only when a recipe asks for them.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import polars as pl

from pond import __version__, ledger
from pond.recipe import Recipe
from pond.runner import Runner, file_digest, write_manifest

Log = Callable[[str], None]


def _provenance(runner: Runner, curated: Path) -> dict[str, Any]:
    return {"dataset_hash": file_digest(curated), "dataset_path": str(curated), "recipe_hash": runner.recipe.digest(),
            "recipe": runner.recipe.name, "pond_version": __version__}


def _heldout(runner: Runner, recipe: Recipe, source: str | None) -> tuple[pl.DataFrame | None, str]:
    """The held-out rows: an external file, or the run's own pre-curation draw (`run:heldout.parquet`)."""
    if source is None:
        source = "run:heldout.parquet"
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
    runner = Runner(recipe, out, base_dir, fresh=fresh, track=track, log=log)
    extra: dict[str, Any] = {}
    with ExitStack() as stack:
        curated = runner.curate(stack)
        write_manifest(runner)
        if train and recipe.train is not None:
            extra["train"] = _train(runner, curated, recipe, track, log)
            if recipe.evaluate is not None:
                extra["evaluate"] = _evaluate(runner, recipe, stack, log)
    write_manifest(runner, extra)
    ledger.append(runner.out, "finished")
    return summary(runner.out)


def _train(runner: Runner, curated: Path, recipe: Recipe, track, log: Log) -> dict[str, Any]:
    from training.trainer import train

    heldout, _ = _heldout(runner, recipe, recipe.evaluate.heldout if recipe.evaluate else None)
    df = pl.read_parquet(curated)
    log(f"train: {len(df)} rows, {recipe.train.method} on {recipe.train.student}")
    result = train(df, recipe.train, runner.out, seed=recipe.seed, eval_df=heldout, cache_dir=runner.cache_dir,
                   provenance=_provenance(runner, curated), progress=track)
    ledger.append(runner.out, "trained", steps=result.steps, seconds=result.train_seconds)
    return {"adapter": str(result.adapter_dir), "steps": result.steps, "first_loss": result.first_loss,
            "train_loss": result.train_loss, "eval_losses": result.eval_losses, "seconds": result.train_seconds,
            "rows": result.rows, "tokens_seen": result.tokens_seen}


def _evaluate(runner: Runner, recipe: Recipe, stack: ExitStack, log: Log) -> dict[str, Any]:
    from evaluation.experiment import evaluate_run

    heldout, source = _heldout(runner, recipe, recipe.evaluate.heldout)
    if heldout is None:
        raise FileNotFoundError(f"held-out set {source} not found (add a `holdout` step or set evaluate.heldout)")
    judge = recipe.evaluate.judge
    if judge is not None:
        _serve_if_needed(runner, judge, stack)
    log(f"evaluate: {len(heldout)} held-out rows from {source}")
    return evaluate_run(runner.out, runner.out / "adapter", heldout, recipe.evaluate, recipe.train,
                        teachers=dict(recipe.teachers), cache_dir=runner.cache_dir)


def _serve_if_needed(runner: Runner, teacher_name: str, stack: ExitStack) -> None:
    teacher = runner.recipe.teachers[teacher_name]
    if getattr(teacher, "serve", None) is not None:
        from synthesis.server import running_teacher

        stack.enter_context(running_teacher(teacher, cache_dir=runner.cache_dir, log=runner.log))


def estimate_run(recipe: Recipe, out: Path, base_dir: Path, print_fn: Callable = print) -> dict[str, int]:
    """Teacher calls and an upper bound on tokens per synthesis/judge step, without sending any.

    Rows reaching a teacher step are bounded by the rows entering curation, so the estimate reads
    the input (not the teacher) and charges every step as if all rows reached it.
    """
    from synthesis.estimate import estimate_step

    runner = Runner(recipe, out, base_dir, log=lambda m: None)
    step_dir, _ = runner.ingest()
    rows = pl.read_parquet(step_dir / "kept.parquet")
    total = {"requests": 0, "max_tokens": 0}
    for i, step in enumerate(recipe.steps, start=1):
        if step.kind not in ("synthesize", "judge"):
            continue
        est = estimate_step(step.kind, rows, step.options, recipe.teachers)
        print_fn(f"{i:02d}-{step.kind}: {est['requests']} requests, at most {est['max_tokens']} tokens")
        total["requests"] += est["requests"]
        total["max_tokens"] += est["max_tokens"]
    print_fn(f"total: {total['requests']} requests, at most {total['max_tokens']} tokens")
    return total


def train_only(data: Path, out: Path, config, track=None) -> str:
    from training.config import TrainConfig
    from training.trainer import train

    config = config or TrainConfig()
    df = pl.read_parquet(data)
    result = train(df, config, out, provenance={"dataset_hash": file_digest(data), "dataset_path": str(data),
                                                "pond_version": __version__}, progress=track)
    return f"adapter: {result.adapter_dir} ({result.steps} steps, loss {result.first_loss:.3f} -> {result.train_loss:.3f})"


def run_experiment_recipe(recipe: Recipe, out: Path, base_dir: Path, *, track=None, log: Log = lambda m: None) -> str:
    from evaluation.experiment import run_experiment
    from training.config import TrainConfig

    runner = Runner(recipe, out, base_dir, track=track, log=log)
    with ExitStack() as stack:
        curated = runner.curate(stack)
        heldout, source = _heldout(runner, recipe, recipe.evaluate.heldout if recipe.evaluate else None)
        if heldout is None:
            raise FileNotFoundError(f"held-out set {source} not found (add a `holdout` step first)")
        # the noisy pool: every row that entered curation, minus the held-out draw
        pool = pl.read_parquet(runner.out / "steps" / "00-ingest" / "kept.parquet")
        pool = pool.filter(~pl.col("id").is_in(heldout["id"].implode()))
        result = run_experiment(runner.out / "experiment", pool, pl.read_parquet(curated), heldout, recipe.experiment,
                                recipe.train or TrainConfig(), seed=recipe.seed, cache_dir=runner.cache_dir,
                                teachers=dict(recipe.teachers), provenance=_provenance(runner, curated), progress=track)
    write_manifest(runner, {"experiment": str(runner.out / "experiment" / "experiment.json")})
    return f"experiment: {runner.out / 'experiment'}\n" + json.dumps(result.get("summary", {}), indent=2, default=str)


def summary(run: Path) -> str:
    manifest = json.loads((run / "manifest.json").read_text())
    lines = [f"run: {run}"]
    for s in manifest["steps"]:
        lines.append(f"  {s['kind']:<15} {s['in']:>7} -> {s['out']:>7}  (-{s['rejected']}){'  [resumed]' if s.get('skipped') else ''}")
    lines.append(f"curated: {run / 'curated.parquet'}")
    if "train" in manifest:
        t = manifest["train"]
        lines.append(f"adapter: {t['adapter']}  loss {t['first_loss']:.3f} -> {t['train_loss']:.3f} in {t['seconds']:.0f}s")
    for name in ("report.md", "plot.png"):
        if (run / name).exists():
            lines.append(f"{name}: {run / name}")
    return "\n".join(lines)

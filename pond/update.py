"""`pond update RUN --input NEW...`: a data drop joins an existing run's pond (docs/continuous-curation.md).

A drop is a numbered generation, `drops/NNN/`, run by the runner's own step machinery (its steps
resume through DONE files and fingerprints, like `pond run`) with the run's own recipe, on the new
rows only. Two things differ from a plain run:

- the dedup steps (exact, MinHash, semantic) see the pond too: each runs on the rows that entered the
  same step in every earlier generation (after the held-out set) followed by the drop's rows, and only
  the drop's verdicts count. An earlier row always wins ("the pond wins"): nothing already curated is
  redone, and a drop row that duplicates a pond row is rejected with `duplicate_of` naming it;
- `holdout` draws nothing: the held-out set was fixed by the run, and drops are deduplicated against it.

Then `curated.parquet` is rebuilt as the union of every generation's own kept rows, oldest first, and
`lineage.parquet` names each row's drop (0: the run itself). The drift report and the retrain rule run
last; `DONE` in the drop folder comes after them.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from curation.ingest import IngestError, expand_paths
from curation.step import StepContext, split
from pond import layout, ledger
from pond.executors.shards import read_output
from pond.recipe import Recipe, Step, load_recipe
from pond.runner import Runner, file_digest, write_json, write_parquet

DEDUP_STEPS = ("exact_dedup", "minhash_dedup", "semantic_dedup")
Log = Callable[[str], None]


class UpdateError(ValueError):
    """A drop that cannot join this run; str() is one line naming the files or the run."""


# -- the run and its generations -----------------------------------------------------------------

def run_recipe(run: Path) -> Recipe:
    """The recipe the run was made with (its resolved `recipe.yaml`)."""
    return load_recipe(Path(run) / layout.RECIPE)


def run_base_dir(run: Path) -> Path:
    """The folder the run's recipe paths are relative to, as `pond run` recorded it in the ledger
    (older runs did not: then the current folder)."""
    for event in reversed(ledger.read(run)):
        if event.get("event") == "run" and event.get("base_dir"):
            return Path(event["base_dir"])
    return Path.cwd()


def is_finished(drop: Path) -> bool:
    return (Path(drop) / layout.DONE).exists()


def curated_generations(run: Path) -> list[Path]:
    """Generations whose curation finished: the run, then every drop with its own curated.parquet."""
    return [run] + [d for d in layout.drop_dirs(run) if (d / layout.CURATED).exists()]


def _generation_inputs(gen: Path) -> dict[str, str]:
    return layout.read_json(layout.step_dir(gen, layout.INGEST) / layout.STATS).get("inputs", {})


def check_run(run: Path) -> None:
    if not (Path(run) / layout.CURATED).exists():
        raise UpdateError(f"{run}: has no {layout.CURATED}; a drop joins a curated run (run `pond run` first)")
    if not (Path(run) / layout.RECIPE).exists():
        raise UpdateError(f"{run}: has no {layout.RECIPE}; not a pond run directory")


def check_new_files(run: Path, files: list[Path], pending: Path | None) -> None:
    """Refuse files already in the pond (by content), naming each file and the drop that holds it."""
    seen: dict[str, tuple[str, int]] = {}
    for gen in layout.generations(run):
        if gen == pending:
            continue
        for path, digest in _generation_inputs(gen).items():
            seen.setdefault(digest, (path, layout.generation_number(run, gen)))
    clashes = []
    for f in files:
        hit = seen.get(file_digest(f))
        if hit is not None:
            where = "the run itself (drop 000)" if hit[1] == 0 else f"drop {hit[1]:03d}"
            same = "" if Path(hit[0]) == f else f", as {hit[0]}"
            clashes.append(f"{f} (in {where}{same})")
    if clashes:
        raise UpdateError(f"{run}: files already in the pond: {'; '.join(clashes)}")


def plan_drop(run: Path, files: list[Path]) -> Path:
    """The drop folder for these files: an unfinished drop of the same files resumes; an unfinished
    drop of other files must be finished first; else the next number."""
    drops = layout.drop_dirs(run)
    wanted = sorted(str(f) for f in files)
    pending = drops[-1] if drops and not is_finished(drops[-1]) else None
    if pending is not None:
        recorded = layout.read_json(pending / layout.DROP_INPUTS).get("files", [])
        if recorded == wanted:
            return pending
        if recorded:
            raise UpdateError(f"{run}: drop {pending.name} is unfinished ({', '.join(recorded)}); rerun "
                              f"`pond update {run} --input` with those files to finish it first")
    check_new_files(run, files, pending)
    n = layout.drop_number(pending) if pending is not None else (layout.drop_number(drops[-1]) + 1 if drops else 1)
    drop = layout.drop_dir(run, n)
    drop.mkdir(parents=True, exist_ok=True)
    write_json({"files": wanted, "hashes": {str(f): file_digest(f) for f in files}}, drop / layout.DROP_INPUTS)
    return drop


# -- the dedup steps against the pond --------------------------------------------------------------

def step_input(gen: Path, index: int, step: Step) -> pl.DataFrame | None:
    """Every row that entered step `index` in generation `gen` (the rows it rejected too: a drop row
    close to a rejected pond row is in that row's cluster in a run over the union, whose kept row is
    then the one it duplicates); None if the step did not finish there."""
    this = layout.step_dir(gen, layout.step_name(index, step.kind))
    dirs = layout.step_dirs(gen)
    names = [d.name for d in dirs]
    if this.name not in names or not (this / layout.DONE).exists():
        return None
    return read_output(dirs[names.index(this.name) - 1] / layout.KEPT)


def pond_reference(run: Path, drop: Path, index: int, step: Step) -> pl.DataFrame:
    """What a drop's dedup step compares against: the held-out set, then every row that entered this
    step in each earlier generation, oldest first."""
    frames = []
    heldout = Path(run) / layout.HELDOUT
    if heldout.exists():
        frames.append(pl.read_parquet(heldout))
    for gen in curated_generations(run):
        if gen == drop:
            continue
        rows = step_input(gen, index, step)
        if rows is None:
            raise UpdateError(f"{gen}: has no finished step {layout.step_name(index, step.kind)}; the run's steps "
                              "changed since it was curated (rerun `pond run` on the run first)")
        frames.append(rows)
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def against_pond(fn: Callable, reference: pl.DataFrame) -> Callable:
    """Run a dedup step on the pond's rows followed by the drop's, and return the drop's verdicts.

    The keep rule may prefer a drop row over a pond row (keep: longest/quality); the pond wins
    anyway: that drop row is rejected as a duplicate of the pond row, with the pond row's reason
    written for it. Pond rows' own verdicts are dropped (they were curated already).
    """
    def step(df: pl.DataFrame, opts, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
        if reference.is_empty():
            return fn(df, opts, ctx)
        ref_ids = reference["id"].implode()
        joint = pl.concat([reference, df], how="diagonal_relaxed")
        kept, rejected = fn(joint, opts, ctx)
        from_pond = pl.col("id").is_in(ref_ids)
        lost = (rejected.filter(from_pond & pl.col("duplicate_of").is_not_null()
                                & ~pl.col("duplicate_of").is_in(ref_ids))
                .unique("duplicate_of", keep="first", maintain_order=True))
        winners = kept.filter(~from_pond).join(lost.select(pl.col("duplicate_of").alias("id"),
                                                           pl.col("id").alias("__pond"),
                                                           pl.col("reason").alias("__reason")),
                                               on="id", how="inner", maintain_order="left")
        reasons = [r.replace(d, p) for r, d, p in zip(winners["__reason"], winners["id"], winners["__pond"])]
        moved = winners.with_columns(
            pl.lit(rejected["stage"][0] if len(rejected) else "").alias("stage"),
            pl.Series("reason", reasons, dtype=pl.Utf8),
            pl.col("__pond").alias("duplicate_of"),
        ).drop("__pond", "__reason")
        kept_out = kept.filter(~from_pond & ~pl.col("id").is_in(moved["id"].implode()))
        rejected_out = pl.concat([rejected.filter(~from_pond), moved], how="diagonal_relaxed")
        columns = [c for c in kept.columns if c in kept_out.columns]
        kept_out = kept_out.select(columns)
        against = rejected_out.filter(pl.col("duplicate_of").is_in(ref_ids)) if "duplicate_of" in rejected_out.columns \
            else rejected_out.clear()
        # figures of the joint call describe pond + drop; these say what the drop met
        ctx.stats["against_pond"] = {"pond_rows": len(reference), "drop_rows": len(df),
                                     "duplicates_of_pond_rows": len(against), "pond_wins_over_keep_rule": len(moved)}
        return kept_out, rejected_out

    return step


def holdout_fixed(df: pl.DataFrame, opts, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A drop's holdout step draws nothing: the run's held-out set stays the one it evaluates on."""
    ctx.stats["held_out_fixed_by_run"] = True
    return split(df, pl.lit(True), "holdout", "held_out")


class DropRunner(Runner):
    """The runner, on one drop's files: its folder is the drop's, its `run:` paths and teacher cache the run's."""

    def __init__(self, recipe: Recipe, run: Path, drop: Path, files: list[Path], base_dir: Path, **kwargs):
        # a drop may come in another format or layout than the run's files: ingest detects both
        drop_input = recipe.input.model_copy(update={"path": [str(f) for f in files], "limit": None,
                                                     "format": "auto", "layout": "auto"})
        # the ray executor's distributed dedup forms do not take a reference set: drops run locally
        super().__init__(recipe.model_copy(update={"input": drop_input, "executor": "local"}), drop, base_dir,
                         **kwargs)
        self.run = Path(run)

    def context(self, step_dir: Path, index: int | None = None) -> StepContext:
        ctx = super().context(step_dir, index)
        ctx.run_dir = self.run
        return ctx

    def step_function(self, index: int, step: Step) -> Callable:
        if step.kind == "holdout":
            return holdout_fixed
        fn = super().step_function(index, step)
        if step.kind in DEDUP_STEPS:
            return against_pond(fn, pond_reference(self.run, self.out, index, step))
        return fn


# -- the pond's union ------------------------------------------------------------------------------

def write_union(run: Path) -> pl.DataFrame:
    """curated.parquet = every generation's own kept rows, oldest first; lineage.parquet: id -> drop."""
    frames, lineage = [], []
    for gen in curated_generations(run):
        rows = read_output(layout.final_kept(gen))
        frames.append(rows)
        lineage.append(rows.select("id", "source", pl.lit(layout.generation_number(run, gen), pl.Int64).alias("drop")))
    union = pl.concat(frames, how="diagonal_relaxed")
    write_parquet(union, Path(run) / layout.CURATED)
    write_parquet(pl.concat(lineage), Path(run) / layout.LINEAGE)
    return union


def resolve_inputs(inputs: list[str | Path]) -> list[Path]:
    files = expand_paths([str(Path(p).expanduser().resolve()) for p in inputs], Path.cwd())
    return [f.resolve() for f in files]


def update(run: Path, inputs: list[str | Path], *, cache_dir: Path | None = None, track: Callable | None = None,
           log: Log = lambda m: None, retrain: bool = True) -> dict[str, Any]:
    """Add one drop to the run's pond; returns what happened (drop, rows, drift, retraining)."""
    from pond.drift_report import write_drift
    from pond.retrain import maybe_retrain

    run = Path(run)
    check_run(run)
    recipe = run_recipe(run)
    files = resolve_inputs(inputs)
    drop = plan_drop(run, files)
    ledger.append(run, "update", drop=drop.name, files=[str(f) for f in files])
    log(f"drop {drop.name}: {len(files)} file(s)")
    t0 = time.perf_counter()
    runner = DropRunner(recipe, run, drop, files, run_base_dir(run), cache_dir=cache_dir, track=track, log=log)
    try:
        runner.curate()
    except IngestError as exc:
        # nothing of the drop was curated (ingest comes first): leave no unfinished drop to block the next
        shutil.rmtree(drop, ignore_errors=True)
        raise UpdateError(f"drop {drop.name}: {exc}") from None
    (drop / layout.HELDOUT).unlink(missing_ok=True)  # a drop has no held-out draw of its own
    union = write_union(run)
    stats = layout.funnel(drop)
    kept = len(read_output(layout.final_kept(drop)))
    t1 = time.perf_counter()
    drift = write_drift(run, drop, recipe, cache_dir=runner.cache_dir, log=log)
    t2 = time.perf_counter()
    decision = maybe_retrain(run, drop, recipe, drift, cache_dir=runner.cache_dir, track=track, log=log,
                             allowed=retrain)
    seconds = {"curation": round(t1 - t0, 3), "drift": round(t2 - t1, 3), "retrain": round(time.perf_counter() - t2, 3)}
    from pond.status import report_section

    report = layout.drops_dir(run) / layout.DROPS_REPORT
    report.with_name(report.name + ".tmp").write_text(report_section(run))
    report.with_name(report.name + ".tmp").replace(report)
    (drop / layout.DONE).write_text(json.dumps({"kept": kept}) + "\n")
    ledger.append(run, "updated", drop=drop.name, kept=kept, pond_rows=len(union),
                  drifted=drift.get("drifted"), retrained=decision.get("version"))
    return {"drop": drop.name, "in": stats[0].get("in") if stats else 0, "kept": kept, "pond_rows": len(union),
            "drift": drift, "retrain": decision, "seconds": seconds}

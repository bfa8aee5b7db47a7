"""`pond update RUN --input NEW...`: a data drop joins an existing run's pond (docs/continuous-curation.md).

A drop is a numbered generation, `drops/NNN/`, run by the runner's own step machinery (its steps
resume through DONE files and fingerprints, like `pond run`) with the run's own recipe and executor,
on the new rows only. Two things differ from a plain run, both read from the step table:

- a dedup step (`dedups_against_reference`) gets the pond as its reference rows (`ctx.reference`):
  the held-out set, then the rows that entered the same step in every earlier generation. The step
  itself never drops them and rejects a drop row that duplicates one, naming it in `duplicate_of`,
  whatever its keep rule prefers ("the pond wins"): nothing already curated is redone. Exact and
  MinHash dedup on the local executor get the pond as the keys each generation kept instead of its rows
  (`against_keys`, pond.generation_keys), with the same verdicts;
- the step that draws the held-out set (`writes_heldout`) draws nothing: the set was fixed by the
  run, and drops are deduplicated against it.

Then `curated.parquet` is rebuilt as the union of every generation's own kept rows, oldest first, and
`lineage.parquet` names each row's drop (0: the run itself). The drift report and the retrain rule run
last; the drop folder's `DONE` (curation.store's marker, keyed by the drop's files) comes after them.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from curation import store
from curation.errors import PondError
from curation.ingest import IngestError, expand_paths
from curation.settings import default_cache_dir
from curation.step import StepContext, split
from pond import generation_keys, layout, ledger
from pond.drift_report import keep_samples, write_drift
from pond.executors.shards import read_output
from pond.recipe import Recipe, Step, load_recipe
from pond.retrain import maybe_retrain
from pond.runner import Runner
from pond.status import report_section
from pond.steps import STEPS

Log = Callable[[str], None]


class UpdateError(PondError, ValueError):
    """A drop that cannot join this run; str() is one line naming the files or the run."""


# -- the run and its generations -----------------------------------------------------------------

def run_recipe(run: Path) -> Recipe:
    """The recipe the run was made with (its resolved `recipe.yaml`)."""
    return load_recipe(Path(run) / layout.RECIPE)


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
        hit = seen.get(store.file_digest(f))
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
    pending = drops[-1] if drops and not store.finished(drops[-1]) else None
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
    store.write_json({"files": wanted, "hashes": {str(f): store.file_digest(f) for f in files}},
                     drop / layout.DROP_INPUTS)
    return drop


# -- the dedup steps against the pond --------------------------------------------------------------

def step_input(gen: Path, index: int, step: Step) -> pl.DataFrame | None:
    """Every row that entered step `index` in generation `gen` (the rows it rejected too: a drop row
    close to a rejected pond row is in that row's cluster in a run over the union, whose kept row is
    then the one it duplicates); None if the step did not finish there."""
    folders = generation_keys.step_folders(gen, index, step)
    return None if folders is None else read_output(folders[1] / layout.KEPT)


def _unfinished(gen: Path, index: int, step: Step) -> UpdateError:
    return UpdateError(f"{gen}: has no finished step {layout.step_name(index, step.kind)}; the run's steps "
                       "changed since it was curated (rerun `pond run` on the run first)")


def pond_reference(run: Path, drop: Path, index: int, step: Step) -> pl.DataFrame:
    """What a drop's dedup step compares against: the held-out set, then every row that entered this
    step in each earlier generation, oldest first."""
    frames = []
    heldout = Path(run) / layout.HELDOUT
    if heldout.exists():
        frames.append(pl.read_parquet(heldout))
    for gen in layout.curated_generations(run):
        if gen == drop:
            continue
        rows = step_input(gen, index, step)
        if rows is None:
            raise _unfinished(gen, index, step)
        frames.append(rows)
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def holdout_fixed(stage: str) -> Callable:
    """A drop's held-out step draws nothing: the run's held-out set stays the one it evaluates on."""
    def step(df: pl.DataFrame, opts, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
        ctx.stats["held_out_fixed_by_run"] = True
        return split(df, pl.lit(True), stage, "held_out")

    return step


def against_keys(run: Path, drop: Path, index: int, step: Step, fresh: dict) -> Callable:
    """A keyed dedup step of a drop: the pond as keys (pond.generation_keys), not rows; the drop's own keys
    go to `fresh[index]`, for the drop's generation to keep once the step is done."""
    against = generation_keys.keyed_form(step.kind)[1]

    def dedup(df: pl.DataFrame, opts, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
        try:
            ref, texts_of, known = generation_keys.reference(run, drop, index, step, ctx)
        except LookupError as exc:
            raise _unfinished(exc.args[0], index, step) from None
        kept, rejected, fresh[index] = against(df, opts, ctx, ref, texts_of, known)
        return kept, rejected

    return dedup


class DropRunner(Runner):
    """The runner, on one drop's files: its folder is the drop's, its `run:` paths and teacher cache the run's."""

    def __init__(self, recipe: Recipe, run: Path, drop: Path, files: list[Path], base_dir: Path, **kwargs):
        # a drop may come in another format or layout than the run's files: ingest detects both
        drop_input = recipe.input.model_copy(update={"path": [str(f) for f in files], "limit": None,
                                                     "format": "auto", "layout": "auto"})
        super().__init__(recipe.model_copy(update={"input": drop_input}), drop, base_dir, **kwargs)
        self.run = Path(run)
        self.current: tuple[int, Step] | None = None  # the step being run, for context()
        self.fresh: dict[int, pl.DataFrame] = {}  # a keyed dedup step's keys of the drop's rows, by step index

    def run_step(self, index: int, step: Step, prev_dir: Path, prev_fp: str) -> tuple[Path, str]:
        # the runner builds a step's context without its index on the ray executor: remember it here
        self.current = (index, step)
        try:
            step_dir, fingerprint = super().run_step(index, step, prev_dir, prev_fp)
        finally:
            self.current = None
        if index in self.fresh:  # after DONE: the keys are filed under the fingerprint it holds
            generation_keys.write_step_keys(step_dir, step, self.recipe.seed, self.fresh.pop(index))
        return step_dir, fingerprint

    def keyed(self, step: Step) -> bool:
        """A dedup step that compares the drop with the pond's keys: one with a keyed form, run locally (on
        Ray the reference rows are written as shards, pond.executors.ray_dedup)."""
        distributed = self.executor is not None and self.executor.distributes(step.kind)
        return not distributed and generation_keys.keyed_form(step.kind) is not None

    def context(self, step_dir: Path, index: int | None = None) -> StepContext:
        ctx = super().context(step_dir, index)
        ctx.run_dir = self.run
        if (self.current is not None and STEPS[self.current[1].kind].dedups_against_reference
                and not self.keyed(self.current[1])):
            ctx.reference = pond_reference(self.run, self.out, *self.current)
        return ctx

    def step_function(self, index: int, step: Step) -> Callable:
        if STEPS[step.kind].writes_heldout:
            return holdout_fixed(step.kind)
        if STEPS[step.kind].dedups_against_reference and self.keyed(step):
            return against_keys(self.run, self.out, index, step, self.fresh)
        return super().step_function(index, step)


# -- the pond's union ------------------------------------------------------------------------------

def write_union(run: Path) -> pl.DataFrame:
    """curated.parquet = every generation's own kept rows, oldest first; lineage.parquet: id -> drop."""
    frames, lineage = [], []
    for gen in layout.curated_generations(run):
        rows = read_output(layout.final_kept(gen))
        frames.append(rows)
        lineage.append(rows.select("id", "source", pl.lit(layout.generation_number(run, gen), pl.Int64).alias("drop")))
    union = pl.concat(frames, how="diagonal_relaxed")
    store.write_parquet(union, Path(run) / layout.CURATED)
    store.write_parquet(pl.concat(lineage), Path(run) / layout.LINEAGE)
    return union


def keep_generation(run: Path, *, cache_dir: Path | None = None) -> None:
    """What later drops read instead of the pond's rows, for a run just curated by `pond run` (generation 0):
    its dedup steps' keys and its drift samples. A drop writes its own; without this, the first drop
    computes the run's from its rows (the runner's hook after `curate` would call this)."""
    run = Path(run)
    recipe = run_recipe(run)
    cache_dir = cache_dir or default_cache_dir()
    generation_keys.write_generation(run, recipe, StepContext(seed=recipe.seed, cache_dir=cache_dir, run_dir=run))
    keep_samples(run, recipe, cache_dir)


def resolve_inputs(inputs: list[str | Path]) -> list[Path]:
    files = expand_paths([str(Path(p).expanduser().resolve()) for p in inputs], Path.cwd())
    return [f.resolve() for f in files]


def update(run: Path, inputs: list[str | Path], *, cache_dir: Path | None = None, track: Callable | None = None,
           log: Log = lambda m: None, retrain: bool = True) -> dict[str, Any]:
    """Add one drop to the run's pond; returns what happened (drop, rows, drift, retraining)."""
    run = Path(run)
    check_run(run)
    recipe = run_recipe(run)
    files = resolve_inputs(inputs)
    drop = plan_drop(run, files)
    ledger.append(run, "update", drop=drop.name, files=[str(f) for f in files])
    log(f"drop {drop.name}: {len(files)} file(s)")
    t0, c0 = time.perf_counter(), time.process_time()
    runner = DropRunner(recipe, run, drop, files, layout.run_base_dir(run), cache_dir=cache_dir, track=track, log=log)
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
    t1, c1 = time.perf_counter(), time.process_time()
    drift = write_drift(run, drop, recipe, cache_dir=runner.cache_dir, log=log)
    t2, c2 = time.perf_counter(), time.process_time()
    decision = maybe_retrain(run, drop, recipe, drift, cache_dir=runner.cache_dir, track=track, log=log,
                             allowed=retrain)
    seconds = {"curation": round(t1 - t0, 3), "drift": round(t2 - t1, 3), "retrain": round(time.perf_counter() - t2, 3),
               # CPU seconds of this process (all its threads) beside them: a shared machine's wall time wanders
               "curation_cpu": round(c1 - c0, 3), "drift_cpu": round(c2 - c1, 3),
               "retrain_cpu": round(time.process_time() - c2, 3)}
    store.write_text(report_section(run), layout.drops_dir(run) / layout.DROPS_REPORT)
    # the drop's work is its files: the marker is keyed by them (inputs.json), written after all else
    store.mark_finished(drop, store.key_of(layout.read_json(drop / layout.DROP_INPUTS)), {"kept": kept})
    ledger.append(run, "updated", drop=drop.name, kept=kept, pond_rows=len(union),
                  drifted=drift.get("drifted"), retrained=decision.get("version"))
    return {"drop": drop.name, "in": stats[0].get("in") if stats else 0, "kept": kept, "pond_rows": len(union),
            "drift": drift, "retrain": decision, "seconds": seconds}

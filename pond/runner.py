"""The runner: executes a recipe into a resumable, auditable run directory (docs/architecture.md;
its layout: pond.layout).

Each step's fingerprint chains the previous one's with its own kind and options, so a step whose
options changed re-runs together with everything after it, and a finished step (DONE + same
fingerprint) is skipped. Files are written through curation.store (a temporary name, then a rename),
and DONE (store.mark_finished, holding the fingerprint) is written last, so a killed run never leaves
a step that a resume would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from itertools import chain
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import polars as pl

from curation import store
from curation.errors import PondError
from curation.ingest import IngestError, expand_paths, ingest_kept_schema, ingest_rejected_schema, iter_batches, source_names
from curation.settings import default_cache_dir, gpu, hardware, pick_dtype
from curation.step import StepContext
from pond import __version__
from pond import layout, ledger
from pond.executors import local, local_ingest
from pond.executors.ray_ingest import check_rows
from pond.executors.shards import (count_rows, ensure_nonempty, list_shards, output_digest, read_output, scan_output,
                                   unify_schema)
from pond.recipe import Recipe, Step
from pond.steps import ACTOR, ROWWISE, STEPS
from synthesis.teachers import Teachers

INGEST_DIR = layout.INGEST


class StepFailed(PondError, RuntimeError):
    """A step raised or broke the kept + rejected = input contract."""


def _chain(*parts: str) -> str:
    # not store.key_of: a step's fingerprint must stay what earlier runs recorded, or none would resume
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


def _finish_step(step_dir: Path, kept: pl.DataFrame | None, rejected: pl.DataFrame,
                 stats: dict[str, Any]) -> dict[str, Any]:
    """Write a step's frames (kept=None: already written), stats.json, then DONE."""
    if kept is not None:
        store.write_parquet(kept, step_dir / layout.KEPT)
        store.write_parquet(rejected, step_dir / layout.REJECTED)
    stats["reasons"] = layout.reason_counts(rejected)
    stats["outputs"] = {n: output_digest(step_dir / n) for n in (layout.KEPT, layout.REJECTED)}
    store.write_json(stats, step_dir / layout.STATS)
    store.mark_finished(step_dir, stats["fingerprint"])
    return stats


class Runner:
    """Runs one recipe into one run directory; `track` makes the progress bars (rich in the CLI)."""

    def __init__(self, recipe: Recipe, out_dir: Path, base_dir: Path, *, fresh: bool = False,
                 cache_dir: Path | None = None, track: Callable | None = None,
                 log: Callable[[str], None] = lambda msg: None):
        self.recipe = recipe
        self.out = Path(out_dir)
        self.base_dir = base_dir
        self.cache_dir = cache_dir or default_cache_dir()
        self.track = track
        self.log = log
        if fresh and self.out.exists():
            shutil.rmtree(self.out)
        layout.steps_dir(self.out).mkdir(parents=True, exist_ok=True)
        self.step_stats: list[dict[str, Any]] = []
        self.executor = None  # a RayExecutor while curate() runs with `executor: ray`
        self.teachers = Teachers(dict(recipe.teachers), self.cache_dir, log)  # served teachers, started on need

    # -- ingest -------------------------------------------------------------------------------

    def input_files(self) -> list[Path]:
        return expand_paths(self.recipe.input.path, self.base_dir, self.recipe.input.format)

    def ingest(self) -> tuple[Path, str]:
        files = self.input_files()
        input_hashes = {str(p): store.file_digest(p) for p in files}
        fingerprint = _chain(__version__, "ingest", self.recipe.input.model_dump_json(), json.dumps(input_hashes))
        step_dir = layout.step_dir(self.out, INGEST_DIR)
        if layout.is_done(step_dir, fingerprint):
            self._skipped(step_dir)
            return step_dir, fingerprint
        shutil.rmtree(step_dir, ignore_errors=True)
        step_dir.mkdir(parents=True)
        self.log(f"{INGEST_DIR}: started, reading {self.recipe.input.path}")
        t0 = time.time()
        parts = step_dir / layout.PARTS
        parts.mkdir()
        if self.executor is not None and self.recipe.input.limit is None:
            # one Ray task per input file, the same reader and normaliser; shard folders
            sources = source_names(files, self.base_dir)
            n_kept, n_rej = self.executor.ingest(files, sources, self.recipe.input.format, self.recipe.input.layout,
                                                 step_dir, ingest_kept_schema(), ingest_rejected_schema(),
                                                 columns=self.recipe.input.columns)
        else:
            n_kept, n_rej = self._ingest_local(parts, step_dir)
        if n_kept == 0:
            example = read_output(step_dir / layout.REJECTED)["detail"].head(1).to_list()
            raise IngestError(f"{self.recipe.input.path}: no usable rows "
                              f"({n_rej} rejected, e.g. {example[0] if example else 'none'})")
        ids = pl.scan_parquet(step_dir / layout.KEPT).select(pl.col("id").n_unique(), pl.len()).collect()
        if ids[0, 0] != ids[0, 1]:
            raise IngestError(f"{self.recipe.input.path}: the same input file is listed twice (duplicate row ids)")
        stats = {"kind": "ingest", "fingerprint": fingerprint, "in": n_kept + n_rej, "out": n_kept,
                 "rejected": n_rej, "seconds": round(time.time() - t0, 3), "inputs": input_hashes}
        rejected_reasons = pl.scan_parquet(step_dir / layout.REJECTED).select("reason").collect()
        self.step_stats.append(_finish_step(step_dir, None, rejected_reasons, stats))
        shutil.rmtree(parts)
        self.log(f"{INGEST_DIR}: {stats['in']} rows -> {stats['out']} kept, {stats['rejected']} rejected "
                 f"({stats['seconds']:.1f}s)")
        return step_dir, fingerprint

    def _ingest_local(self, parts: Path, step_dir: Path) -> tuple[int, int]:
        inp = self.recipe.input
        if inp.limit is None and not inp.columns:
            files = self.input_files()
            items = local_ingest.plan(files, source_names(files, self.base_dir), inp.format, local_ingest.workers())
            if items:
                return self._ingest_parallel(items, files, step_dir)
        kept_parts, rej_parts = [], []
        batches = iter_batches(self.recipe.input, self.base_dir)
        if self.track:
            batches = self.track(batches, "ingest", None)
        batches = iter(batches)
        first = next(batches, None)
        second = next(batches, None) if first is not None else None
        if first is not None and second is None:
            # one batch (a small input): written straight to its place, the same bytes the parts' combine
            # below writes, without the round trip through a part file
            kept, rejected = first
            store.write_parquet(kept if len(kept) else ingest_kept_schema(), step_dir / layout.KEPT)
            store.write_parquet(rejected if len(rejected) else ingest_rejected_schema(), step_dir / layout.REJECTED)
            return len(kept), len(rejected)
        # Each batch goes straight to a part file, so memory is bounded by the batch size; in row groups the
        # combine decodes one at a time (not a whole 50k-row part)
        groups = local.ROW_GROUP_ROWS
        for i, (kept, rejected) in enumerate(chain([first, second] if first is not None else [], batches)):
            if len(kept):
                kept.write_parquet(parts / f"kept-{i:05d}.parquet", row_group_size=groups, **store.PARQUET)
                kept_parts.append(parts / f"kept-{i:05d}.parquet")
            if len(rejected):
                rejected.write_parquet(parts / f"rej-{i:05d}.parquet", row_group_size=groups, **store.PARQUET)
                rej_parts.append(parts / f"rej-{i:05d}.parquet")
        # Parts are combined lazily (streaming), so memory stays bounded for multi-GB inputs.
        n_kept = self._combine(kept_parts, step_dir / layout.KEPT, ingest_kept_schema())
        n_rej = self._combine(rej_parts, step_dir / layout.REJECTED, ingest_rejected_schema())
        return n_kept, n_rej

    def _ingest_parallel(self, items: list[dict[str, Any]], files: list[Path], step_dir: Path) -> tuple[int, int]:
        """Big inputs read in parts by one process per core into shard folders (pond.executors.local_ingest):
        the one reader's rows, ids and order."""
        seen = local_ingest.read_parts(items, self.recipe.input.format, self.recipe.input.layout, step_dir,
                                       local_ingest.workers(), local.ROW_GROUP_ROWS)
        if self.track:
            seen = self.track(seen, "ingest", len(items))
        seen = list(seen)  # every part read (the generator closes its worker pool at its end)
        check_rows([(it["index"], n) for it, n in zip(items, seen)], files)
        for name, empty in ((layout.KEPT, ingest_kept_schema()), (layout.REJECTED, ingest_rejected_schema())):
            ensure_nonempty(step_dir / name, empty)
            unify_schema(step_dir / name)
        return count_rows(step_dir / layout.KEPT), count_rows(step_dir / layout.REJECTED)

    @staticmethod
    def _combine(parts: list[Path], dest: Path, empty: pl.DataFrame) -> int:
        return local.combine_parts(parts, dest, empty)

    def _skipped(self, step_dir: Path) -> None:
        stats = store.read_json(step_dir / layout.STATS)
        stats["skipped"] = True
        self.step_stats.append(stats)
        self.log(f"{step_dir.name}: done earlier, skipped")
        ledger.append(self.out, "skip", step=step_dir.name)

    # -- steps --------------------------------------------------------------------------------

    def context(self, step_dir: Path, index: int | None = None) -> StepContext:
        kwargs: dict[str, Any] = {}
        if self.track:
            kwargs["track"] = self.track
        if index is not None:
            kwargs["embedded_inputs"] = self.embedded_inputs(index)
        return StepContext(seed=self.recipe.seed, cache_dir=self.cache_dir, run_dir=self.out, step_dir=step_dir,
                           base_dir=self.base_dir, teachers=self.teachers, **kwargs)

    def step_function(self, index: int, step: Step) -> Callable:
        """The function that runs step `index` (pond.update wraps the dedup steps of a drop)."""
        return STEPS[step.kind].load()[1]

    def embedded_inputs(self, index: int) -> list[Path]:
        """The rows each step before step `index` (1-based) that embeds its rows read, in order."""
        out, prev = [], layout.step_dir(self.out, INGEST_DIR)
        for i, s in enumerate(self.recipe.steps[: index - 1], start=1):
            if STEPS[s.kind].embeds_rows:
                out.append(prev / layout.KEPT)
            prev = layout.step_dir(self.out, layout.step_name(i, s.kind))
        return out

    def run_step(self, index: int, step: Step, prev_dir: Path, prev_fp: str) -> tuple[Path, str]:
        fingerprint = _chain(prev_fp, step.kind, step.options.model_dump_json(), str(self.recipe.seed))
        step_dir = layout.step_dir(self.out, layout.step_name(index, step.kind))
        if layout.is_done(step_dir, fingerprint):
            self._skipped(step_dir)
            return step_dir, fingerprint
        self.teachers_for(self.recipe.steps[index - 1:], step)
        shutil.rmtree(step_dir, ignore_errors=True)
        step_dir.mkdir(parents=True)
        if self.executor is not None and self.executor.distributes(step.kind):
            return self._run_distributed(step, step_dir, prev_dir, fingerprint)
        fn = self.step_function(index, step)
        streamed = self._streamed_form(step, fn, prev_dir / layout.KEPT)
        if streamed is not None:
            return self._run_streamed(index, step, fn, streamed, step_dir, prev_dir, fingerprint)
        df = read_output(prev_dir / layout.KEPT)
        ctx = self.context(step_dir, index)
        ledger.append(self.out, "start", step=step_dir.name, rows=len(df))
        self.log(f"{step_dir.name}: started, {len(df)} rows in")
        t0 = time.time()
        try:
            kept, rejected = fn(df, step.options, ctx)
        except Exception as exc:
            ledger.append(self.out, "fail", step=step_dir.name, error=f"{type(exc).__name__}: {exc}")
            raise StepFailed(f"step {step_dir.name} failed: {type(exc).__name__}: {exc}") from exc
        added = int(ctx.stats.get("added", 0))  # generators add rows; everything else conserves
        if len(kept) + len(rejected) != len(df) + ctx.stats.get("attempted", added):
            raise StepFailed(f"step {step_dir.name} lost rows: {len(df)} in, {len(kept)} kept + "
                             f"{len(rejected)} rejected")
        stats = {"kind": step.kind, "fingerprint": fingerprint, "options": step.options.model_dump(mode="json"),
                 "in": len(df), "out": len(kept), "rejected": len(rejected),
                 "seconds": round(time.time() - t0, 3), **ctx.stats}
        self.step_stats.append(_finish_step(step_dir, kept, rejected, stats))
        if STEPS[step.kind].writes_heldout:
            store.write_parquet(rejected.drop("stage", "reason"), self.out / layout.HELDOUT)
        return self._done(step_dir, fingerprint, stats)

    def _done(self, step_dir: Path, fingerprint: str, stats: dict[str, Any], how: str = "") -> tuple[Path, str]:
        ledger.append(self.out, "done", step=step_dir.name, **{k: stats[k] for k in ("in", "out", "rejected", "seconds")})
        self.log(f"{step_dir.name}: {stats['in']} -> {stats['out']} kept, {stats['rejected']} rejected "
                 f"({stats['seconds']:.1f}s{how})")
        return step_dir, fingerprint

    @staticmethod
    def _streamed_form(step: Step, fn: Callable, prev: Path) -> Callable | None:
        """How the local executor streams this step over an input larger than one batch (pond.executors.local):
        its `streamed` form (a dedup; not where the step's function was replaced, as `pond update` does), the
        step function batch by batch (a step the Ray executor runs shard by shard), or None: the whole input
        at once (a local step, row-by-row ones included: decontaminate's boilerplate count, a judge's
        calibration and distributions see every row)."""
        batch = local.batch_rows()
        if not batch or count_rows(prev) <= batch:
            return None
        spec = STEPS[step.kind]
        marks = spec.streamed_form() if fn is spec.load()[1] else None
        return marks or (fn if spec.distribute in (ROWWISE, ACTOR) else None)

    def _run_streamed(self, index: int, step: Step, fn: Callable, streamed: Callable, step_dir: Path,
                      prev_dir: Path, fingerprint: str) -> tuple[Path, str]:
        """A step over bounded batches of its input, its outputs written in row groups, then stats and DONE."""
        prev, spec = prev_dir / layout.KEPT, STEPS[step.kind]
        kept, rejected = step_dir / layout.KEPT, step_dir / layout.REJECTED
        ctx = self.context(step_dir, index)
        n = count_rows(prev)
        ledger.append(self.out, "start", step=step_dir.name, rows=n, batch_rows=local.batch_rows())
        self.log(f"{step_dir.name}: started, {n} rows in")
        t0 = time.time()
        try:
            if streamed is fn:
                n_in, n_kept, n_rej, _ = local.run_per_row(spec, fn, step.options, prev, ctx, kept, rejected)
            else:
                n_in, n_kept, n_rej = local.run_marked(streamed, step.options, prev, ctx, kept, rejected)
        except Exception as exc:
            ledger.append(self.out, "fail", step=step_dir.name, error=f"{type(exc).__name__}: {exc}")
            raise StepFailed(f"step {step_dir.name} failed: {type(exc).__name__}: {exc}") from exc
        added = int(ctx.stats.get("added", 0))
        if n_kept + n_rej != n_in + ctx.stats.get("attempted", added):
            raise StepFailed(f"step {step_dir.name} lost rows: {n_in} in, {n_kept} kept + {n_rej} rejected")
        stats = {"kind": step.kind, "fingerprint": fingerprint, "options": step.options.model_dump(mode="json"),
                 "in": n_in, "out": n_kept, "rejected": n_rej, "seconds": round(time.time() - t0, 3), **ctx.stats}
        self.step_stats.append(_finish_step(step_dir, None, scan_output(rejected, ["reason"]), stats))
        if spec.writes_heldout:
            store.write_parquet(read_output(rejected).drop("stage", "reason"), self.out / layout.HELDOUT)
        return self._done(step_dir, fingerprint, stats, ", streamed")

    def _run_distributed(self, step: Step, step_dir: Path, prev_dir: Path, fingerprint: str) -> tuple[Path, str]:
        """A step on the ray executor: shard folders written by the workers, then stats and DONE."""
        prev = prev_dir / layout.KEPT
        ctx = self.context(step_dir)
        ledger.append(self.out, "start", step=step_dir.name, rows=count_rows(prev), executor="ray")
        self.log(f"{step_dir.name}: started on ray")
        t0 = time.time()
        try:
            figures = self.executor.run_step(step.kind, step.options, prev, step_dir, ctx)
        except Exception as exc:
            ledger.append(self.out, "fail", step=step_dir.name, error=f"{type(exc).__name__}: {exc}")
            raise StepFailed(f"step {step_dir.name} failed: {type(exc).__name__}: {exc}") from exc
        if figures["out"] + figures["rejected"] != figures["in"]:
            raise StepFailed(f"step {step_dir.name} lost rows: {figures['in']} in, {figures['out']} kept + "
                             f"{figures['rejected']} rejected")
        stats = {"kind": step.kind, "fingerprint": fingerprint, "options": step.options.model_dump(mode="json"),
                 "seconds": round(time.time() - t0, 3), **figures}
        reasons = scan_output(step_dir / layout.REJECTED, ["reason"])
        self.step_stats.append(_finish_step(step_dir, None, reasons, stats))
        return self._done(step_dir, fingerprint, stats, ", ray")

    def _prune(self, keep: set[str]) -> None:
        """Drop step folders the recipe no longer has (a changed recipe must not leave stale steps)."""
        for d in layout.steps_dir(self.out).iterdir():
            if d.is_dir() and d.name not in keep:
                shutil.rmtree(d)

    def curate(self) -> Path:
        """Ingest and run every step; returns the path of curated.parquet."""
        local.limit_malloc_arenas()  # before any step's threads: a run's memory is its peak, not its arenas'
        store.write_text(self.recipe.to_yaml(), self.out / layout.RECIPE)
        ledger.append(self.out, "run", recipe=self.recipe.name, version=__version__, executor=self.recipe.executor,
                      base_dir=str(Path(self.base_dir).resolve()))
        with ExitStack() as stack:
            if self.recipe.executor == "ray":
                from pond.executors.ray_exec import RayExecutor

                self.executor = stack.enter_context(RayExecutor(self.recipe.ray, log=self.log))
            try:
                prev_dir = self._curate_steps()
            finally:
                self.executor = None
        curated, final = self.out / layout.CURATED, prev_dir / layout.KEPT
        if final.is_dir():  # shards (the Ray executor's, or parallel ingest's): the final set is one file,
            # written in row groups, not read whole (1M ingested rows held 16 GB that way)
            tmp = curated.with_name(f".{curated.name}.tmp")
            try:
                local.combine_parts(list_shards(final), tmp, ingest_kept_schema())
                os.replace(tmp, curated)
            finally:
                tmp.unlink(missing_ok=True)
        else:  # the last step's file, byte for byte
            store.copy_file(final, curated)
        if not any(STEPS[s.kind].writes_heldout for s in self.recipe.steps):
            (self.out / layout.HELDOUT).unlink(missing_ok=True)
        return curated

    def _curate_steps(self) -> Path:
        names = {INGEST_DIR}
        try:
            self._start_teacher_early()
            prev_dir, fp = self.ingest()
            for i, step in enumerate(self.recipe.steps, start=1):
                self.teachers_for(self.recipe.steps[i - 1:], None)  # stop those no longer needed
                prev_dir, fp = self.run_step(i, step, prev_dir, fp)
                names.add(prev_dir.name)
        finally:
            self.teachers_for([], None)  # stop what pond started for curation
        self._prune(names)
        return prev_dir

    def _start_teacher_early(self) -> None:
        """The served teacher of the first step still to run that needs one starts now, without waiting: its
        start-up (~50 s of a 1.5B judge on a 2-core CPU) overlaps ingest and the steps before it. A step folder
        with a DONE marker counts as done (a rerun starts nothing ahead; a stale one only loses the overlap)."""
        for i, step in enumerate(self.recipe.steps, start=1):
            name = step.options.teacher_needed()
            folder = layout.step_dir(self.out, layout.step_name(i, step.kind))
            if name is not None and not (folder / layout.DONE).exists():
                self.teachers.start_early(name)
                return

    def teachers_for(self, remaining: list[Step], step: Step | None) -> None:
        """Keep served teachers up exactly while steps still need them (synthesis.teachers): stop those no
        remaining step names, start the one the current step needs. A step already done needs none."""
        self.teachers.keep_only(s.options.teacher_needed() for s in remaining)
        self.teachers.need(step.options.teacher_needed() if step is not None else None)


def run_dtypes(recipe: Any) -> dict[str, Any]:
    """The dtype each part of this run computes in on this machine (curation.settings.pick_dtype)."""
    device = "cuda" if gpu() else "cpu"
    out: dict[str, Any] = {"auto": pick_dtype("auto", device)}
    train = getattr(recipe, "train", None)
    if train is not None:
        out["train"] = pick_dtype(train.compute_dtype, device)
    served = {name: pick_dtype(t.serve.dtype, device) for name, t in recipe.teachers.items() if t.serve is not None}
    if served:
        out["teachers"] = served
    return out


def write_manifest(runner: Runner, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out = runner.out
    versions = {}
    for pkg in ("polars", "pydantic", "datasketch", "sentence-transformers", "torch", "transformers", "peft",
                "bitsandbytes", "trl", "httpx"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    steps = []
    for s in runner.step_stats:
        steps.append({k: s.get(k) for k in ("kind", "in", "out", "rejected", "seconds", "skipped", "fingerprint")})
    outputs = {}
    for name in (layout.CURATED, layout.HELDOUT, layout.TEACHER_CACHE, layout.EVAL, layout.REPORT):
        if (out / name).exists():
            outputs[name] = store.file_digest(out / name)
    adapter = out / layout.ADAPTER
    if adapter.is_dir():
        outputs.update({f"{layout.ADAPTER}/{p.name}": store.file_digest(p) for p in sorted(adapter.iterdir())
                        if p.is_file()})
    manifest = {
        "pond_version": __version__,
        "hardware": hardware(),
        "dtypes": run_dtypes(runner.recipe),
        "recipe": runner.recipe.name,
        "recipe_hash": runner.recipe.digest(),
        "seed": runner.recipe.seed,
        "inputs": runner.step_stats[0].get("inputs", {}) if runner.step_stats else {},
        "packages": versions,
        "steps": steps,
        "outputs": outputs,
        **(extra or {}),
    }
    store.write_json(manifest, out / layout.MANIFEST)
    return manifest

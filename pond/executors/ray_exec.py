"""The `ray` executor: the same step functions, run on Ray Data over sharded Parquet.

What runs where (docs/architecture.md, "How a step is distributed"):
- ingest (ray_ingest): input files in parts (JSONL byte ranges, Parquet row groups), each streamed
  by a Ray task through the local reader and normaliser (`curation.ingest.iter_file_batches`), so
  ids, line numbers and rejections are the local ones; written as shards of `ray.shard_rows` rows.
- each step as its StepSpec says (`pond.steps`; this module never matches on a step's name):
  `rowwise` steps: `map_batches` over shards; each shard goes through the step function itself
  and its kept/rejected rows are written by the worker; `actor` steps the same, in actors that
  keep a model loaded between shards; a named distributed form (ray_dedup, ray_embed) wires
  shuffles and joins around the step's curation functions; `local` steps are gathered on the
  driver and run by the local runner (see docs/scale-out.md for this limit).
- reference rows (`StepContext.reference`, given by `pond update` to the dedup steps) are written
  by the driver as shards of their own (`write_reference`), placed after every input position;
  the distributed forms read them with the input's shards, put them ahead of the input's rows as
  the local step does (curation.keep), and apply verdicts to the input's shards only, so they are
  never output.

The run directory is the local executor's, except that distributed steps write `kept.parquet/`
and `rejected.parquet/` as shard folders (pond.executors.shards); the runner writes stats.json,
DONE, the ledger and the manifest as usual. Workers write into the run directory, so on a
multi-node cluster it must be on storage every node mounts at the same path.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curation import store
from curation.keep import against_reference, has_reference, reference_rows
from curation.step import StepContext
from pond.executors.config import AGGREGATOR_CPUS, RayConfig
from pond.executors.shards import (POS, count_rows, ensure_nonempty, list_shards, read_output, read_shard, scan_output,
                                   shard_offset, unify_schema, write_shard)
from pond.executors.verdicts import apply_verdicts_batch, shard_summary, summaries_table, write_sorted_block
from pond.steps import ACTOR, ROWWISE, STEPS, StepSpec

REFERENCE_DIR = "_reference"  # in a step folder: the reference rows' shards while the step runs


def quiet_env() -> None:
    """Keep Ray offline and quiet (no usage stats, no dashboard, no progress bars)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def _unwrap(exc: BaseException) -> BaseException:
    """The user exception inside Ray's wrappers (RayTaskError, UserCodeException)."""
    seen = exc
    for _ in range(10):
        inner = getattr(seen, "cause", None) or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    return seen


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-shard ctx.stats combined: numbers add up, dicts merge key by key, others: first seen."""
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if k not in out:
                out[k] = v if not isinstance(v, dict) else merge_stats([v])
            elif isinstance(v, bool) or not isinstance(v, (int, float, dict)):
                continue
            elif isinstance(v, dict) and isinstance(out[k], dict):
                out[k] = merge_stats([out[k], v])
            elif isinstance(v, (int, float)) and isinstance(out[k], (int, float)):
                out[k] = out[k] + v
    return out


def ctx_args(ctx: StepContext) -> dict[str, Any]:
    return {"seed": ctx.seed, "cache_dir": ctx.cache_dir, "run_dir": ctx.run_dir, "base_dir": ctx.base_dir}


# --- worker functions (module level: pickled by reference) ---------------------------------------

def run_on_shard(path: str, spec: StepSpec, options: Any, cargs: dict, out: str) -> dict[str, Any]:
    """One shard through a step function; its kept/rejected rows written next to the others.

    The spec travels with the task (not its kind), so a worker needs only the step's module."""
    df = read_shard(Path(path))
    if df.is_empty():
        return shard_summary(0, 0, 0)
    ctx = StepContext(**cargs)
    kept, rejected = spec.load()[1](df, options, ctx)
    out_dir = Path(out)
    write_shard(kept, out_dir / "kept.parquet")
    write_shard(rejected, out_dir / "rejected.parquet")
    return shard_summary(len(df), len(kept), len(rejected), ctx.stats)


def _rowwise(batch: dict[str, np.ndarray], spec: StepSpec, options: Any, cargs: dict, out: str) -> pa.Table:
    return summaries_table([run_on_shard(p, spec, options, cargs, out) for p in batch["path"]])


class RowwiseActor:
    """Runs a row-wise step in a long-lived process (embedding models stay loaded)."""

    def __init__(self, spec: StepSpec, options: Any, cargs: dict, out: str):
        self.args = (spec, options, cargs, out)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return summaries_table([run_on_shard(p, *self.args) for p in batch["path"]])


# --- the executor ---------------------------------------------------------------------------------

class RayExecutor:
    """Connects to (or starts) a Ray cluster for one run and runs steps on it."""

    def __init__(self, config: RayConfig | None = None, log: Callable[[str], None] = lambda m: None):
        self.config = config or RayConfig()
        self.log = log
        self._started = False

    def __enter__(self) -> RayExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        quiet_env()
        import ray
        import ray.data

        if not ray.is_initialized():
            cfg = self.config
            kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": True, "logging_level": "WARNING"}
            if cfg.address:
                ray.init(address=cfg.address, **kwargs)
            else:
                ray.init(address="local", num_cpus=cfg.num_cpus, object_store_memory=cfg.object_store_memory,
                         include_dashboard=False, **kwargs)
            self._started = True
        import logging

        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
        dc = ray.data.DataContext.get_current()
        dc.enable_progress_bars = False
        dc.print_on_execution_start = False
        dc.execution_options.preserve_order = True  # results in input order, as the local executor's
        # group-bys and sorts as tasks (no aggregator actors to start per shuffle: small clusters
        # spend most of a shuffle's time starting those); joins use hash shuffles with few actors
        if os.environ.get("POND_RAY_SHUFFLE", "sort") == "sort":
            from ray.data.context import ShuffleStrategy

            dc.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        dc.hash_shuffle_operator_actor_num_cpus_override = AGGREGATOR_CPUS  # why: see there
        dc.max_hash_shuffle_aggregators = self.config.shuffle_partitions or max(
            1, int(ray.cluster_resources().get("CPU", 1)))
        self.log(f"ray: {ray.cluster_resources().get('CPU', 0):g} CPUs, "
                 f"{len([n for n in ray.nodes() if n.get('Alive')])} node(s)")

    def stop(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    @staticmethod
    def distributes(kind: str) -> bool:
        return STEPS[kind].distributed

    @property
    def partitions(self) -> int:
        import ray

        return self.config.shuffle_partitions or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def shards(self, path: Path, reference: Path | None = None):
        """A Ray dataset of shard paths: one row (and one block) per shard; then the reference's."""
        import ray.data

        paths = [str(p) for p in list_shards(path) + (list_shards(reference) if reference else [])]
        return ray.data.from_items([{"path": p} for p in paths], override_num_blocks=max(1, len(paths)))

    def write_reference(self, ctx: StepContext, prev: Path, step_dir: Path,
                        columns: list[str]) -> tuple[Path | None, int | None]:
        """ctx.reference's `columns` (typed as the input's) as shards in `step_dir/_reference`, at
        positions after every input row: (their folder, their first position), or (None, None)."""
        if not has_reference(ctx.reference):
            return None, None
        last = list_shards(prev)[-1]
        base = shard_offset(last) + count_rows(last)
        rows = reference_rows(ctx.reference, pl.read_parquet_schema(last), columns)
        folder = step_dir / REFERENCE_DIR
        for s in range(0, len(rows), self.config.shard_rows):
            part = rows.slice(s, self.config.shard_rows)
            write_shard(part.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + base + s).alias(POS)), folder)
        return folder, base

    def collect(self, ds) -> list[dict[str, Any]]:
        try:
            return ds.take_all()
        except Exception as exc:  # noqa: BLE001 - re-raise what the step function raised
            inner = _unwrap(exc)
            if inner is not exc and isinstance(inner, Exception):
                raise inner from None
            raise

    # -- ingest --

    def ingest(self, files: list[Path], sources: list[str], fmt: str, layout: str, step_dir: Path,
               empty_kept: pl.DataFrame, empty_rejected: pl.DataFrame,
               columns: dict[str, str] | None = None) -> tuple[int, int]:
        from pond.executors.ray_ingest import ingest_parts

        n_kept, n_rej, n_parts = ingest_parts(self, files, sources, fmt, layout, step_dir,
                                              self.config.split_bytes, self.config.shard_rows, columns)
        self.log(f"ray: {len(files)} input file(s) read in {n_parts} part(s)")
        ensure_nonempty(step_dir / "kept.parquet", empty_kept)
        ensure_nonempty(step_dir / "rejected.parquet", empty_rejected)
        for name in ("kept.parquet", "rejected.parquet"):
            unify_schema(step_dir / name)
        return n_kept, n_rej

    # -- steps --

    def run_step(self, kind: str, options: Any, prev: Path, step_dir: Path, ctx: StepContext) -> dict[str, Any]:
        """Run a distributed step, as its StepSpec says; returns {in, out, rejected, **step figures}."""
        spec = STEPS[kind]
        if spec.distribute in (ROWWISE, ACTOR):
            rows = self.rowwise(spec, options, prev, step_dir, ctx)
            stats = merge_stats([json.loads(r["stats"]) for r in rows])
            for key in spec.shard_figures:
                stats.pop(key, None)
        elif spec.distributed:
            rows, stats = spec.distributed_form()(self, options, prev, step_dir, ctx)
            shutil.rmtree(step_dir / REFERENCE_DIR, ignore_errors=True)  # a copy of rows kept elsewhere
        else:
            raise ValueError(f"the ray executor has no distributed form of {kind!r}")
        empty = read_output(prev).clear() if not list_shards(step_dir / "kept.parquet") else None
        if empty is not None:
            ensure_nonempty(step_dir / "kept.parquet", empty)
        if not (step_dir / "rejected.parquet").is_dir() or not list_shards(step_dir / "rejected.parquet"):
            # no row was rejected: an empty shard with the local executor's rejected columns
            probe = read_shard(list_shards(prev)[0]).clear()
            _, rej = spec.load()[1](probe.drop(POS), options, StepContext(**ctx_args(ctx)))
            ensure_nonempty(step_dir / "rejected.parquet", rej)
        return {"in": sum(r["n_in"] for r in rows), "out": sum(r["n_kept"] for r in rows),
                "rejected": sum(r["n_rej"] for r in rows), "executor": "ray", **stats}

    def rowwise(self, spec: StepSpec, options: Any, prev: Path, step_dir: Path, ctx: StepContext) -> list[dict]:
        args = {"spec": spec, "options": options, "cargs": ctx_args(ctx), "out": str(step_dir)}
        ds = self.shards(prev)
        if spec.distribute == ACTOR:
            ds = ds.map_batches(RowwiseActor, fn_constructor_kwargs=args, batch_size=1, batch_format="numpy",
                                concurrency=self.config.embed_actors)
        else:
            ds = ds.map_batches(_rowwise, fn_kwargs=args, batch_size=1, batch_format="numpy")
        return self.collect(ds)

    def write_verdicts(self, verdicts, folder: Path) -> int:
        """Sort per-row verdicts by position and write them as disjoint sorted files."""
        done = self.collect(verdicts.sort(POS).map_batches(write_sorted_block, batch_size=None,
                                                           batch_format="pyarrow", fn_kwargs={"out": str(folder)}))
        return sum(r["n"] for r in done)

    def apply_verdicts(self, prev: Path, step_dir: Path, verdict_dir: Path, finish: Callable, kwargs: dict,
                       columns: dict[str, str]) -> list[dict]:
        ds = self.shards(prev).map_batches(
            apply_verdicts_batch, batch_size=1, batch_format="numpy",
            fn_kwargs={"finish": finish, "kwargs": kwargs, "verdict_dir": str(verdict_dir), "out": str(step_dir),
                       "columns": columns})
        return self.collect(ds)


def is_reference(base: int) -> pl.Expr:
    """Per row of a distributed dedup step: whether it is a reference row (see write_reference)."""
    return pl.col(POS) >= base


def reference_first(base: int | None) -> list[pl.Expr]:
    """Sort keys for the local step's row order: the reference rows (if any), then the input's."""
    return [pl.col(POS)] if base is None else [~is_reference(base), pl.col(POS)]


def reference_figures(ctx: StepContext, prev: Path, step_dir: Path, keep: str = "first", **kwargs) -> dict:
    """The local step's `against_reference` figures, from the rejected shards (empty without a reference)."""
    if not has_reference(ctx.reference):
        return {}
    rejected_dir = step_dir / "rejected.parquet"
    columns = ["id", "duplicate_of"] + ([] if keep == "first" else [kwargs["column"]])
    columns += [kwargs["score_column"]] if keep == "quality" else []
    rejected = scan_output(rejected_dir, columns) if rejected_dir.is_dir() and list_shards(rejected_dir) \
        else pl.DataFrame(schema={"id": pl.Utf8, "duplicate_of": pl.Utf8})
    return {"against_reference": against_reference(ctx.reference, rejected, count_rows(prev), keep, **kwargs)}


def iter_output(path: Path, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
    for p in list_shards(path):
        yield pl.read_parquet(p, columns=columns)

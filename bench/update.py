"""`pond update` (a drop of 10k rows joins a pond of 100k) against `pond run` over the union of the files.

    python bench/update.py [--pond-rows 100000] [--drop-rows 10000] [--drift-backends torch,openvino-int8]
                           [--workdir /tmp/pond-update-bench]

Input: `curation.scaled_corpus` (real ShareGPT conversations, then exact and perturbed copies): the
first `--pond-rows` rows are the run's files, the next `--drop-rows` the drop. Recipe: exact_dedup,
heuristics, pii, minhash_dedup (bench/scale.py's CPU-bound curation core). Timed, in this order: the run
over the pond's files (not compared), a fresh `pond run` of the same recipe over all the files (the
baseline), then one arm per `--drift-backends` entry, each on its own copy of the run with
`retrain.drift.embedding.backend` set in its recipe (no `when:`, so nothing trains): what the run keeps
for later drops (`pond.update.keep_generation`: its dedup keys and drift samples with their embeddings;
timed apart: `pond run` does not call it yet, so without it the first drop pays it; an OpenVINO backend
builds its model there), then `update` (the drop's steps, dedup against the pond's keys, the union, the
drift report embedding the drop's samples, the retrain rule). Each arm must give the baseline's kept
rows (ids, in order). The embedding cache is emptied into a private folder first, so the drift report
pays for its embeddings as a first update would. One JSON line per figure, each with the load average
when it was taken and CPU seconds beside wall seconds (the machine is shared: a ratio of CPU seconds
is steadier when the load moves between arms).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

RECIPE = """\
name: update-bench
input: {{path: {paths}}}
seed: 0
steps:
  - exact_dedup: {{}}
  - heuristics: {{}}
  - pii: {{action: redact}}
  - minhash_dedup: {{}}
"""


class Clock:
    """Wall and CPU seconds (this process, all its threads) of one arm, and the load beside them."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.load = [round(x, 2) for x in os.getloadavg()]


def write_corpus(work: Path, pond_rows: int, drop_rows: int) -> list[Path]:
    """pond-0.jsonl and pond-1.jsonl (the run's files: the first `pond_rows` rows, halved), drop.jsonl."""
    from curation.scaled_corpus import scaled_sharegpt

    files = [work / "pond-0.jsonl", work / "pond-1.jsonl", work / "drop.jsonl"]
    handles = [open(f, "w", encoding="utf-8") for f in files]
    for i, row in enumerate(scaled_sharegpt(pond_rows + drop_rows, seed=0)):
        k = 2 if i >= pond_rows else (0 if i < pond_rows // 2 else 1)
        handles[k].write(json.dumps(row, ensure_ascii=False) + "\n")
    for h in handles:
        h.close()
    return files


def private_cache(work: Path) -> Path:
    """A cache folder whose embedding model is linked from the shared one and whose embeddings are not."""
    from curation.settings import default_cache_dir

    cache = work / "cache"
    cache.mkdir()
    for name in os.listdir(default_cache_dir()):
        if name in ("models",):
            os.symlink(default_cache_dir() / name, cache / name)
    return cache


def with_drift_backend(run: Path, backend: str) -> None:
    """Name the drift samples' embedding backend in the run's recipe (`retrain.drift.embedding`)."""
    import yaml

    from pond import layout

    path = run / layout.RECIPE
    recipe = yaml.safe_load(path.read_text())
    retrain = recipe.get("retrain") or {}
    recipe["retrain"] = {**retrain, "drift": {**(retrain.get("drift") or {}), "embedding": {"backend": backend}}}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def emit_seconds(figure: str, clock: Clock, **extra) -> None:
    """One arm's wall and CPU seconds, with the load when it ended."""
    emit(figure=figure, value=round(clock.wall, 1), unit="s", cpu_seconds=round(clock.cpu, 1), load=clock.load, **extra)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pond-rows", type=int, default=100_000)
    ap.add_argument("--drop-rows", type=int, default=10_000)
    ap.add_argument("--drift-backends", default="torch",
                    help="comma-separated embedding backends of the drift samples, one update arm each "
                         "(each on its own copy of the run; e.g. torch,openvino-int8)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pond-update-bench")
    args = ap.parse_args()

    from pond.pipeline import run_pipeline
    from pond.recipe import parse_recipe

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache = private_cache(work)
    os.environ["POND_CACHE_DIR"] = str(cache)
    files = write_corpus(work, args.pond_rows, args.drop_rows)

    def recipe(paths):
        return parse_recipe(RECIPE.format(paths=json.dumps([p.name for p in paths])))

    with Clock() as base:
        run_pipeline(recipe(files[:2]), work / "base", work, train=False)
    with Clock() as union:
        run_pipeline(recipe(files), work / "union", work, train=False)
    common = dict(pond_rows=args.pond_rows, drop_rows=args.drop_rows, recipe="exact_dedup, heuristics, pii, minhash_dedup")
    emit_seconds("update_base_run_seconds", base, **common)
    emit_seconds("update_union_rerun_seconds", union, baseline=True, **common)
    for backend in args.drift_backends.split(","):
        run = work / f"run-{backend}"
        shutil.copytree(work / "base", run)
        with_drift_backend(run, backend)
        update_arm(run, files[2], work / "union", union, cache, dict(common, drift_backend=backend))


def update_arm(run: Path, drop_file: Path, union_run: Path, union: Clock, cache: Path, common: dict) -> None:
    """keep_generation, then `pond update` with the drop, on one copy of the run; its figures against the union's."""
    import polars as pl

    from pond import layout
    from pond.update import keep_generation, update

    with Clock() as keep:
        keep_generation(run, cache_dir=cache)
    with Clock() as upd:
        result = update(run, [drop_file], cache_dir=cache)
    drop = layout.drop_dir(run, 1)
    step_s = sum(layout.read_json(d / layout.STATS).get("seconds", 0.0) for d in layout.step_dirs(drop))

    a = pl.read_parquet(run / layout.CURATED)["id"]
    b = pl.read_parquet(union_run / layout.CURATED)["id"]
    same = a.to_list() == b.to_list()
    # where they differ: order-dependent rules (docs/continuous-curation.md), e.g. a MinHash cluster that
    # a drop row bridges makes the union reject a pond row the update keeps
    only_update = a.filter(~a.is_in(b.implode()))
    lineage = pl.read_parquet(run / layout.LINEAGE)
    only_update_by_drop = {str(k): v for k, v in lineage.filter(pl.col("id").is_in(only_update.implode()))
                           .group_by("drop").len().sort("drop").iter_rows()}
    only_union = int((~b.is_in(a.implode())).sum())

    def ratio(figure: str, num: Clock, den: float, den_cpu: float, **extra) -> None:
        emit(figure=figure, value=round(num.wall / den, 2), unit="x", cpu_ratio=round(num.cpu / den_cpu, 2),
             target=5.0, meets_target=num.wall / den >= 5.0, load=[round(x, 2) for x in os.getloadavg()],
             same_kept_rows=same, **extra, **common)

    emit_seconds("update_keep_generation_seconds", keep, **common)
    parts = result["seconds"]
    emit_seconds("update_drop_seconds", upd, **common, drop_step_seconds=round(step_s, 1),
                 curation_seconds=parts["curation"], curation_cpu_seconds=parts["curation_cpu"],
                 drift_seconds=parts["drift"], drift_cpu_seconds=parts["drift_cpu"],
                 drift_p_value=result["drift"].get("p_value"), kept=result["kept"])
    # the whole update (drift report included), and its curation alone (the drop's steps and the union),
    # each against the union rerun, which has no drift report to compute
    ratio("update_speedup", union, upd.wall, upd.cpu, kept_rows=len(a), union_kept_rows=len(b),
          kept_only_by_update=len(only_update), kept_only_by_update_by_drop=only_update_by_drop,
          kept_only_by_union=only_union)
    ratio("update_curation_speedup", union, parts["curation"], parts["curation_cpu"])
    # a run made before its keys were kept: the first drop computes them (keep_generation's work) itself
    ratio("update_speedup_without_kept_generation", union, upd.wall + keep.wall, upd.cpu + keep.cpu)


if __name__ == "__main__":
    main()

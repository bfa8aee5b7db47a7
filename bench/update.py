"""`pond update` (a drop of 10k rows joins a pond of 100k) against `pond run` over the union of the files.

    python bench/update.py [--pond-rows 100000] [--drop-rows 10000] [--workdir /tmp/pond-update-bench]

Input: `curation.scaled_corpus` (real ShareGPT conversations, then exact and perturbed copies): the
first `--pond-rows` rows are the run's files, the next `--drop-rows` the drop. Recipe: exact_dedup,
heuristics, pii, minhash_dedup (bench/scale.py's CPU-bound curation core). The run is curated first
(not timed); then, timed: `update` (the drop's steps, dedup against the pond, the union, the drift
report with its embeddings, the retrain rule: no `retrain:` section, so nothing trains) and a fresh
`pond run` of the same recipe over all the files. Both must give the same kept rows (ids, in order).
The embedding cache is emptied into a private folder first, so the drift report pays for its
embeddings as a first update would. One JSON line per figure.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pond-rows", type=int, default=100_000)
    ap.add_argument("--drop-rows", type=int, default=10_000)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pond-update-bench")
    args = ap.parse_args()

    import polars as pl

    from curation.scaled_corpus import scaled_sharegpt
    from curation.settings import default_cache_dir
    from pond import layout
    from pond.pipeline import run_pipeline
    from pond.recipe import parse_recipe
    from pond.update import update

    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # a private cache: the embedding model is linked from the shared one, its embeddings are not
    cache = work / "cache"
    cache.mkdir()
    for name in os.listdir(default_cache_dir()):
        if name in ("models",):
            os.symlink(default_cache_dir() / name, cache / name)
    os.environ["POND_CACHE_DIR"] = str(cache)
    files = [work / "pond-0.jsonl", work / "pond-1.jsonl", work / "drop.jsonl"]
    handles = [open(f, "w", encoding="utf-8") for f in files]
    total = args.pond_rows + args.drop_rows
    for i, row in enumerate(scaled_sharegpt(total, seed=0)):
        k = 2 if i >= args.pond_rows else (0 if i < args.pond_rows // 2 else 1)
        handles[k].write(json.dumps(row, ensure_ascii=False) + "\n")
    for h in handles:
        h.close()

    def recipe(paths):
        return parse_recipe(RECIPE.format(paths=json.dumps([p.name for p in paths])))

    t0 = time.perf_counter()
    run_pipeline(recipe(files[:2]), work / "run", work, train=False)
    base_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = update(work / "run", [files[2]], cache_dir=cache)
    update_s = time.perf_counter() - t0
    drop = layout.drop_dir(work / "run", 1)
    step_s = sum(layout.read_json(d / layout.STATS).get("seconds", 0.0) for d in layout.step_dirs(drop))

    t0 = time.perf_counter()
    run_pipeline(recipe(files), work / "union", work, train=False)
    union_s = time.perf_counter() - t0

    a = pl.read_parquet(work / "run" / layout.CURATED)["id"]
    b = pl.read_parquet(work / "union" / layout.CURATED)["id"]
    same = a.to_list() == b.to_list()
    # where they differ: order-dependent rules (docs/continuous-curation.md), e.g. a MinHash cluster that
    # a drop row bridges makes the union reject a pond row the update keeps
    only_update = a.filter(~a.is_in(b.implode()))
    lineage = pl.read_parquet(work / "run" / layout.LINEAGE)
    only_update_by_drop = {str(k): v for k, v in lineage.filter(pl.col("id").is_in(only_update.implode()))
                           .group_by("drop").len().sort("drop").iter_rows()}
    only_union = int((~b.is_in(a.implode())).sum())
    common = dict(pond_rows=args.pond_rows, drop_rows=args.drop_rows, recipe="exact_dedup, heuristics, pii, minhash_dedup")
    emit(figure="update_base_run_seconds", value=round(base_s, 1), unit="s", **common)
    parts = result["seconds"]
    emit(figure="update_drop_seconds", value=round(update_s, 1), unit="s", drop_step_seconds=round(step_s, 1),
         curation_seconds=parts["curation"], drift_seconds=parts["drift"], drift_p_value=result["drift"].get("p_value"),
         kept=result["kept"], **common)
    emit(figure="update_union_rerun_seconds", value=round(union_s, 1), unit="s", baseline=True, **common)
    # the whole update (drift report included), and its curation alone (the drop's steps and the union),
    # each against the union rerun, which has no drift report to compute
    emit(figure="update_speedup", value=round(union_s / update_s, 2), unit="x", target=5.0,
         meets_target=union_s / update_s >= 5.0, same_kept_rows=same, kept_rows=len(a), union_kept_rows=len(b),
         kept_only_by_update=len(only_update), kept_only_by_update_by_drop=only_update_by_drop,
         kept_only_by_union=only_union, **common)
    emit(figure="update_curation_speedup", value=round(union_s / parts["curation"], 2), unit="x", target=5.0,
         meets_target=union_s / parts["curation"] >= 5.0, same_kept_rows=same, **common)


if __name__ == "__main__":
    main()

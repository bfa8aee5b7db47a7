"""Peak memory of MinHash dedup's streamed form (what the local executor runs) against another checkout, same rows.

    python bench/minhash_memory.py --base-tree DIR --input STEP_OUTPUT   # e.g. a scale run's pii kept.parquet
    python bench/minhash_memory.py --base-tree DIR --rows 100000 --base-limit 350

The rows: `--input` (a Parquet file or shard folder of pond records), or `--rows` of `curation.scaled_corpus`
made of `--base-limit` real conversations (fewer give the duplicate density of a larger corpus: at 5M rows each
of the ~17.6k conversations has ~285 copies, as 100k rows of 350 have), exact copies removed by `exact_dedup`.
Each arm is a fresh Python process with one checkout first on `sys.path` (this one, and `--base-tree`, e.g.
`git worktree add /tmp/base <commit>`) running `curation.minhash_stream.stream_marks` with default options over
the rows read in `--batch-rows` batches, as the local executor reads a step's input; RSS sampled every 0.1 s,
with each phase's peak (bench/scale_phases.py's wrappers). One JSON line per arm (peak RSS, the phases' peaks,
CPU and wall seconds, the step's pair counts) and one line comparing them, with whether the two arms' marks and
pairs.parquet are equal (`--arms this`: this checkout's line only, for inputs too large to run twice).
`--pairs-held N` sets this checkout's bound on the pairs MinHash holds in memory (a small bound shows, on a small
input, what the default bound does on a large one).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from child import add_worker_args, report, run_worker
from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

PHASES = ("candidate_pairs", "TextsOf.plan", "verify_pairs", "_cluster_info", "_write_pairs")


def worker(data: Path, out: Path, batch: int, pairs_held: int | None) -> None:
    from scale_phases import Phases

    if pairs_held:  # this checkout's bound on the pairs held in memory (curation.minhash_pairs)
        import curation.minhash_pairs as mp
        mp.PAIRS_HELD = pairs_held

    phases = Phases(python_objects=False)
    phases.install()
    try:  # what a run does before its steps (`Runner.curate`), where the checkout has it
        from pond.executors.local import limit_malloc_arenas
    except ImportError:
        pass
    else:
        limit_malloc_arenas()
    from curation.minhash import MinhashDedupOptions
    from curation.minhash_stream import stream_marks
    from curation.step import StepContext
    from pond.executors.local import Reader

    threading.Thread(target=phases.sample, daemon=True).start()
    ctx = StepContext(seed=0, step_dir=out)
    t0, c0 = time.perf_counter(), time.process_time()
    marks, _ = stream_marks(Reader(data, batch), MinhashDedupOptions(), ctx)  # the executor's own reader
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    phases.stop.set()
    marks.write_parquet(out / "marks.parquet")
    figures = {k: v for k, v in ctx.stats.items() if k in ("docs", "candidate_pairs", "verified_pairs", "clusters",
                                                           "duplicates", "verify_spill_groups",
                                                           "pairs_spilled_files")}
    report({"peak_mb": round(phases.run_peak / 2**20), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "phases_peak_mb": {p: f["peak_mb"] for name, f in phases.figures.items() for p in PHASES
                               if name == f"minhash_stream.{p}"}, **figures})


def make_rows(folder: Path, rows: int, base_limit: int | None) -> Path:
    """The scaled corpus as pond records, exact copies removed (what MinHash sees after exact_dedup): written as
    JSONL and run through ingest and exact_dedup by the local executor, streamed (a million rows built in one
    list of records took more than this machine's 24 GB)."""
    from curation.scaled_corpus import write_corpus
    from pond.recipe import parse_recipe
    from pond.runner import Runner

    write_corpus(folder / "corpus", rows, files=max(1, rows // 25_000), malformed=False, base_limit=base_limit)
    recipe = parse_recipe("name: rows\ninput: {path: 'corpus/*.jsonl'}\nseed: 0\nsteps:\n  - exact_dedup: {}\n")
    curated = Runner(recipe, folder / "run", folder, cache_dir=folder / "cache").curate()
    shutil.rmtree(folder / "corpus")
    return curated


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-tree", type=Path, help="the checkout to compare with (required)")
    ap.add_argument("--input", type=Path, help="rows to dedup: a Parquet file or shard folder of pond records")
    ap.add_argument("--rows", type=int, default=100_000, help="without --input: scaled-corpus rows")
    ap.add_argument("--base-limit", type=int, default=None, help="without --input: real conversations copied")
    ap.add_argument("--batch-rows", type=int, default=50_000, help="rows read at once (the local executor's batch)")
    ap.add_argument("--arms", default="this,base", help="'this' alone skips the base arm (and the comparison)")
    ap.add_argument("--pairs-held", type=int, default=None,
                    help="this checkout's arm: candidate pairs held in memory before they go to disk (default: "
                         "curation.minhash_pairs.PAIRS_HELD)")
    add_worker_args(ap, "--tree", "--batch", "--held")
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.tree)
        for name in [m for m in sys.modules if m.split(".")[0] in ("curation", "pond")]:
            del sys.modules[name]  # bench/figures imported this checkout's curation; the arm's own is wanted
        worker(Path(args.data), Path(args.out), int(args.batch), int(args.held) or None)
        return
    if args.base_tree is None and "base" in args.arms.split(","):
        ap.error("--base-tree is required")

    import polars as pl

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.input
        if data is None:
            data = make_rows(tmp / "rows", args.rows, args.base_limit)
        arms = {"this": Path(__file__).resolve().parents[1], "base": (args.base_tree or Path()).resolve()}
        arms = {arm: tree for arm, tree in arms.items() if arm in args.arms.split(",")}
        results = {}
        for arm, tree in arms.items():
            out = tmp / arm
            out.mkdir()
            held = str(args.pairs_held or 0) if arm == "this" else "0"
            results[arm] = run_worker(__file__, arm, data, out, ["--tree", str(tree), "--batch", str(args.batch_rows),
                                                                 "--held", held])
            emit(bench="minhash_memory", arm=arm, tree=str(tree), input=str(args.input or "scaled"),
                 pairs_held=args.pairs_held if arm == "this" else None,
                 rows=None if args.input else args.rows, base_limit=args.base_limit, batch_rows=args.batch_rows,
                 load=round(os.getloadavg()[0], 2), **results[arm])
        if len(results) < 2:
            return
        equal = all(pl.read_parquet(tmp / "this" / f).equals(pl.read_parquet(tmp / "base" / f))
                    for f in ("marks.parquet", "pairs.parquet"))
        this, base = results["this"], results["base"]
        emit(bench="minhash_memory", arm="compare", base_tree=str(args.base_tree), docs=this.get("docs"),
             candidate_pairs=this.get("candidate_pairs"), peak_mb=this["peak_mb"], base_peak_mb=base["peak_mb"],
             base_over_this_peak=round(base["peak_mb"] / this["peak_mb"], 2), cpu_s=this["cpu_s"],
             base_cpu_s=base["cpu_s"], equal_outputs=equal)


if __name__ == "__main__":
    main()

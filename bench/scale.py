"""Local vs Ray executor on the same input: rows/s and peak RSS per step, projected cost per 10M rows.

    python bench/scale.py [--rows 200000] [--executors local,ray] [--workdir /tmp/pond-scale]
    python bench/scale.py --files 1 --steps '' --split-bytes 1e12   # one big file, read whole

Input: `curation.scaled_corpus` (real ShareGPT conversations, then exact and perturbed copies) as
JSONL. Steps: exact_dedup, heuristics, pii, minhash_dedup (the CPU-bound curation core; embedding
steps are measured by bench/embed.py). One JSON line per figure. Peak RSS: the largest resident
set of this process plus its children (Ray's raylet, workers and object store processes included)
sampled every 0.2 s while the step ran. The 10M-row projection is rows / (rows/s) scaled linearly,
in CPU-hours at this machine's core count and in dollars at `--usd-per-cpu-hour`; shuffles and MinHash candidates grow faster than
linearly with duplicates, so read it as a lower bound.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

import psutil

STEPS = "exact_dedup,heuristics,pii,minhash_dedup"


class PeakRSS:
    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for c in me.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.2)

    def reset(self):
        self.peak = self._sample()

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pond-scale"))
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--shard-rows", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=4, help="input JSONL files the rows are spread over")
    ap.add_argument("--split-bytes", type=lambda v: int(float(v)), default=128 * 2**20,
                    help="ray: files above this are read in parts (a huge value: one task per file)")
    ap.add_argument("--steps", default=STEPS, help="comma-separated steps after ingest ('' for ingest only)")
    ap.add_argument("--usd-per-cpu-hour", type=float, default=0.045,
                    help="price of one vCPU-hour for the cost projection (on-demand compute-optimised, 2026)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from curation.scaled_corpus import write_corpus
    from pond.recipe import parse_recipe
    from pond.runner import Runner

    data = args.workdir / (f"data-{args.rows}" if args.files == 4 else f"data-{args.rows}-{args.files}files")
    if not data.exists():
        write_corpus(data, args.rows, files=args.files, malformed=False)
    cpus = args.num_cpus
    steps = "".join(f"\n  - {k}: {{}}" for k in args.steps.split(",") if k.strip())
    text = (f"name: scale\ninput: {{path: {data}/*.jsonl}}\nseed: 0\n"
            f"ray: {{num_cpus: {cpus}, object_store_memory: 2000000000, shard_rows: {args.shard_rows}, "
            f"split_bytes: {args.split_bytes}}}\n"
            f"steps:{steps or ' []'}")
    for executor in args.executors.split(","):
        recipe = parse_recipe(text)
        recipe.executor = executor
        rss = PeakRSS()
        peaks: dict[str, int] = {}
        last = {"t": time.time()}

        def log(msg: str) -> None:
            name = msg.split(":")[0]
            if name == "ray":  # the executor's own notes, not the end of a step
                return
            peaks[name] = rss.peak
            rss.reset()

        runner = Runner(recipe, args.workdir / f"run-{executor}", args.workdir, fresh=True,
                        cache_dir=args.workdir / "cache", log=log)
        t0 = time.time()
        with rss:
            runner.curate()
        total = time.time() - t0
        for s in runner.step_stats:
            name = "ingest" if s["kind"] == "ingest" else next((k for k in peaks if k.endswith(s["kind"])), s["kind"])
            rows_s = s["in"] / s["seconds"] if s["seconds"] else None
            emit(bench="scale", executor=executor, step=s["kind"], rows_in=s["in"], rows_out=s["out"],
                 seconds=s["seconds"], rows_per_s=round(rows_s, 1) if rows_s else None,
                 peak_rss_mb=round(peaks.get(name, 0) / 2**20, 1))
        rps = args.rows / total
        emit(bench="scale", executor=executor, step="total", rows_in=args.rows, seconds=round(total, 1),
             rows_per_s=round(rps, 1), cpus=cpus,
             projected_hours_per_10M_rows=round(10_000_000 / rps / 3600, 2),
             projected_cpu_hours_per_10M_rows=round(10_000_000 / rps / 3600 * cpus, 2),
             projected_usd_per_10M_rows=round(10_000_000 / rps / 3600 * cpus * args.usd_per_cpu_hour, 2))


if __name__ == "__main__":
    main()

"""Where the local executor's memory goes: RSS per phase of a streamed run (bench/scale.py's recipe).

    python bench/scale_phases.py --rows 250000 [--steps exact_dedup,minhash_dedup] [--tracemalloc]

Runs the recipe bench/scale.py runs (ingest, then `--steps`) through the local executor, with the
executor's and the dedups' phases wrapped: each phase's RSS when it starts, its peak while it runs
(sampled every 0.1 s), and its RSS when it ends, with pyarrow's allocated bytes at the peak (what Arrow's
pool holds, against what the process holds) and, with `--tracemalloc`, the peak of Python objects (slow).
One JSON line per phase (calls summed, peaks the largest), then the run's peak. A phase nested in another
is counted in both. Environment variables (MALLOC_ARENA_MAX, POND_LOCAL_BATCH_ROWS, ...) are the arms.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import os
import threading
import time
import tracemalloc
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

import psutil

# (module, attribute) wrapped; "Class.method" for methods. Names are where the caller looks them up.
PHASES = [
    ("pond.executors.local", "run_marked"),
    ("pond.executors.local", "run_per_row"), ("pond.executors.local", "ShardWriter.add"),
    ("pond.executors.local", "marks_for"),
    ("curation.exact_dedup", "stream_marks"), ("curation.minhash_stream", "stream_marks"),
    ("curation.minhash_stream", "candidate_pairs"), ("curation.minhash_stream", "verify_pairs"),
    ("curation.minhash_stream", "_cluster_info"), ("curation.minhash_stream", "_write_pairs"),
    ("curation.minhash_stream", "TextsOf.plan"), ("curation.minhash_stream", "id_order"),
    ("curation.exact_dedup", "split_exact"), ("curation.minhash", "split_near_duplicates"),
]


class Phases:
    def __init__(self, python_objects: bool):
        self.proc = psutil.Process()
        self.active: dict[str, dict] = {}
        self.figures: dict[str, dict] = {}
        self.run_peak = self.step_peak = 0
        self.python_objects = python_objects
        self.stop = threading.Event()

    def sample(self) -> None:
        import pyarrow as pa

        while not self.stop.is_set():
            rss = self.proc.memory_info().rss
            self.run_peak, self.step_peak = max(self.run_peak, rss), max(self.step_peak, rss)
            for f in list(self.active.values()):
                if rss > f["peak"]:
                    f["peak"], f["arrow_at_peak"] = rss, pa.total_allocated_bytes()
            time.sleep(0.1)

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*a, **k):
            rss = self.proc.memory_info().rss
            f = self.active.setdefault(name, {"peak": rss, "arrow_at_peak": 0, "enter": rss, "depth": 0})
            f["depth"] += 1
            if self.python_objects:
                tracemalloc.reset_peak()
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                f["depth"] -= 1
                out = self.figures.setdefault(name, {"calls": 0, "seconds": 0.0, "rss_enter_mb": 0, "peak_mb": 0,
                                                     "rss_exit_mb": 0, "arrow_at_peak_mb": 0, "python_peak_mb": 0})
                out["calls"] += 1
                out["seconds"] += time.perf_counter() - t0
                out["rss_enter_mb"] = max(out["rss_enter_mb"], round(f["enter"] / 2**20))
                if f["peak"] / 2**20 > out["peak_mb"]:
                    out["peak_mb"] = round(f["peak"] / 2**20)
                    out["arrow_at_peak_mb"] = round(f["arrow_at_peak"] / 2**20)
                out["rss_exit_mb"] = max(out["rss_exit_mb"], round(self.proc.memory_info().rss / 2**20))
                if self.python_objects:
                    python_peak = round(tracemalloc.get_traced_memory()[1] / 2**20)
                    out["python_peak_mb"] = max(out["python_peak_mb"], python_peak)
                if not f["depth"]:
                    del self.active[name]
        return timed

    def install(self) -> None:
        for module, attr in PHASES:
            owner = importlib.import_module(module)
            *path, last = attr.split(".")
            for p in path:
                owner = getattr(owner, p)
            setattr(owner, last, self.wrap(f"{module.split('.')[-1]}.{attr}", getattr(owner, last)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=250_000)
    ap.add_argument("--steps", default="exact_dedup,minhash_dedup")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pond-scale-phases"))
    ap.add_argument("--base-limit", type=int, default=None,
                    help="real conversations the copies are made of (default: all ~17.6k); fewer give the duplicate "
                         "density of a larger corpus: 100k rows of 350 are 5M rows' ~285 copies of each")
    ap.add_argument("--tracemalloc", action="store_true", help="peak of Python objects per phase (slow)")
    args = ap.parse_args()
    from curation.scaled_corpus import write_corpus
    from pond.recipe import parse_recipe
    from pond.runner import Runner

    data = args.workdir / (f"data-{args.rows}" + (f"-of-{args.base_limit}" if args.base_limit else ""))
    if not data.exists():
        write_corpus(data, args.rows, files=4, malformed=False, base_limit=args.base_limit)
    steps = "".join(f"\n  - {k}: {{}}" for k in args.steps.split(",") if k.strip())
    recipe = parse_recipe(f"name: phases\ninput: {{path: {data}/*.jsonl}}\nseed: 0\nsteps:{steps or ' []'}")
    phases = Phases(args.tracemalloc)
    phases.install()
    if args.tracemalloc:
        tracemalloc.start()
    step_peaks: dict[str, int] = {}

    def log(msg: str) -> None:  # a step's start or end: the peak since the last message, then a fresh count
        step_peaks[msg.split(":")[0] + (" start" if "started" in msg else "")] = phases.step_peak
        phases.step_peak = 0
        print(f"{time.strftime('%H:%M:%S')} rss={phases.proc.memory_info().rss / 2**20:.0f}MB {msg}", flush=True)

    sampler = threading.Thread(target=phases.sample, daemon=True)
    sampler.start()
    common = {"bench": "scale_phases", "rows": args.rows, "base_limit": args.base_limit, "load_before": os.getloadavg()[0],
              "env": {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "POND_", "ARROW_", "POLARS_"))}}
    t0 = time.time()
    Runner(recipe, args.workdir / "run", args.workdir, fresh=True, cache_dir=args.workdir / "cache", log=log).curate()
    phases.stop.set()
    common["load_after"] = os.getloadavg()[0]
    for name, f in phases.figures.items():
        emit(**common, phase=name, **{k: round(v, 1) if isinstance(v, float) else v for k, v in f.items()})
    emit(**common, phase="run", seconds=round(time.time() - t0, 1), peak_mb=round(phases.run_peak / 2**20),
         step_peaks_mb={k: round(v / 2**20) for k, v in step_peaks.items()})


if __name__ == "__main__":
    main()

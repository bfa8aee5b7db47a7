"""Local vs Ray executor on the same input: rows/s and peak RSS per step, against rows; projected cost per 10M rows.

    python bench/scale.py [--rows 200000] [--executors local,ray] [--workdir /tmp/pond-scale]
    python bench/scale.py --rows 100000,1000000,5000000 --executors local --ray-rows 100000
    python bench/scale.py --files 1 --steps '' --split-bytes 1e12   # one big file, read whole
    python bench/scale.py --rows 5000000 --executors local --files 100 --compress zst   # 5M rows in ~6 GB
    python bench/scale.py ... --steps exact_dedup,heuristics,pii --keep, then ... --resume   # the last step alone

Input: `curation.scaled_corpus` (real ShareGPT conversations, then exact and perturbed copies) as
JSONL. Steps: exact_dedup, heuristics, pii, minhash_dedup (the CPU-bound curation core; embedding
steps are measured by bench/embed.py). One JSON line per (rows, executor, step), printed as the step
ends, each with the CPU (`hardware`), the load average before the run and at the step's end and the local
executor's batch (rows it holds at once: pond.executors.local; `--batch-rows 0`: whole inputs, the
executor before streaming). `--rows` takes a list: the sweep that shows whether peak memory stays flat
as rows grow; `--ray-rows` limits the Ray runs to those sizes. Peak RSS: the largest resident set of this process plus its children (Ray's
raylet, workers and object store processes included) sampled every 0.2 s while the step ran. The
10M-row projection is rows / (rows/s) scaled linearly, in CPU-hours at this machine's core count and in
dollars at `--usd-per-cpu-hour`; shuffles and MinHash candidates grow faster than linearly with
duplicates, so read it as a lower bound. Each size's corpus and runs are deleted after it (`--keep`
keeps them): 1M rows are ~6.5 GB of JSONL. Where several executors ran at one size, a `same_kept_ids` line says
per step whether they kept the same ids (as sets: executors may write rows in another order).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
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




def prune_inputs(steps: Path, done: int) -> None:
    """Delete the rows of the steps before the last finished one (`--prune`): no step after it reads them."""
    for step_dir in sorted(d for d in steps.iterdir() if d.is_dir())[:max(0, done - 1)]:
        for out in ("kept.parquet", "rejected.parquet"):
            path = step_dir / out
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def kept_id_digests(run: Path) -> dict[str, str]:
    """Per finished step folder, a digest of its kept ids in sorted order (executors may write rows in another
    order; the same set is the same digest). Steps whose rows were pruned are left out."""
    from pond import layout
    from pond.executors.shards import scan_output

    out = {}
    for d in layout.step_dirs(run):
        if (d / layout.DONE).exists() and (d / layout.KEPT).exists():
            ids = scan_output(d / layout.KEPT, ["id"])["id"].sort().to_list()
            out[d.name] = hashlib.blake2b("\n".join(ids).encode(), digest_size=16).hexdigest()
    return out


def same_kept_ids(rows: int, digests: dict[str, dict[str, str]]) -> None:
    """One line: whether every executor run at this size kept the same ids at each step."""
    runs = list(digests.values())
    steps = sorted(set().union(*runs))
    emit(bench="scale", figure="same_kept_ids", rows=rows, executors=list(digests),
         steps={s: len({r.get(s) for r in runs}) == 1 and all(s in r for r in runs) for s in steps})


def run_one(args: argparse.Namespace, rows: int, executor: str) -> dict[str, str]:
    from curation.scaled_corpus import write_corpus
    from pond.recipe import parse_recipe
    from pond.runner import Runner

    data = args.workdir / (f"data-{rows}" if args.files == 4 else f"data-{rows}-{args.files}files")
    data = data.with_name(data.name + (f"-{args.compress}" if args.compress else ""))
    if not data.exists():
        write_corpus(data, rows, files=args.files, malformed=False, compress=args.compress)
    cpus = args.num_cpus
    steps = "".join(f"\n  - {k}: {{}}" for k in args.steps.split(",") if k.strip())
    text = (f"name: scale\ninput: {{path: '{data}/*.jsonl*'}}\nseed: 0\n"
            f"ray: {{num_cpus: {cpus}, object_store_memory: 2000000000, shard_rows: {args.shard_rows}, "
            f"split_bytes: {args.split_bytes}}}\n"
            f"steps:{steps or ' []'}")
    recipe = parse_recipe(text)
    recipe.executor = executor
    rss = PeakRSS()
    peaks: dict[str, int] = {}
    emitted: list[dict] = []

    from pond.executors.local import batch_rows

    common = {"bench": "scale", "executor": executor, "rows": rows, "cpus": cpus,
              "batch_rows": batch_rows() if executor == "local" else None, "load_before": os.getloadavg()[0]}

    def step_name(s: dict) -> str:
        return next((k for k in peaks if k.endswith(s["kind"])), s["kind"])

    def step_line(s: dict) -> None:
        rows_s = s["in"] / s["seconds"] if s["seconds"] else None
        emit(**common, load_at_end=os.getloadavg()[0], step=s["kind"], rows_in=s["in"], rows_out=s["out"],
             seconds=s["seconds"], rows_per_s=round(rows_s, 1) if rows_s else None,
             peak_rss_mb=round(peaks.get(step_name(s), 0) / 2**20, 1), skipped=bool(s.get("skipped")))

    def log(msg: str) -> None:
        name = msg.split(":")[0]
        if name == "ray":  # the executor's own notes, not the end of a step
            return
        peaks[name] = rss.peak
        rss.reset()
        # a finished step's line now, so a run cut short (a 1M run at a high load) still leaves its figures
        for s in runner.step_stats[len(emitted):]:
            emitted.append(s)
            step_line(s)
            if args.prune:
                prune_inputs(runner.out / "steps", len(emitted))

    runner = Runner(recipe, args.workdir / f"run-{executor}", args.workdir, fresh=not args.resume,
                    cache_dir=args.workdir / "cache", log=log)
    t0 = time.time()
    with rss:
        rss.reset()
        runner.curate()
    total = time.time() - t0
    common["load_after"] = os.getloadavg()[0]
    overall = max((peaks.get(step_name(s), 0) for s in emitted), default=0)
    rps = rows / total
    emit(**common, step="total", rows_in=rows, seconds=round(total, 1), rows_per_s=round(rps, 1),
         peak_rss_mb=round(max(overall, rss.peak) / 2**20, 1),
         projected_hours_per_10M_rows=round(10_000_000 / rps / 3600, 2),
         projected_cpu_hours_per_10M_rows=round(10_000_000 / rps / 3600 * cpus, 2),
         projected_usd_per_10M_rows=round(10_000_000 / rps / 3600 * cpus * args.usd_per_cpu_hour, 2))
    digests = kept_id_digests(runner.out)  # after the clock: reading ids is the bench's work, not the run's
    if not args.keep:
        shutil.rmtree(args.workdir / f"run-{executor}", ignore_errors=True)
    return digests


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="200000", help="rows of input, or a comma-separated list (a sweep)")
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--ray-rows", default=None, help="run Ray only at these sizes (comma-separated; default: all)")
    ap.add_argument("--batch-rows", type=int, default=None,
                    help="the local executor's batch (POND_LOCAL_BATCH_ROWS; 0: whole inputs; default: pond's)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pond-scale"))
    ap.add_argument("--keep", action="store_true", help="keep each size's corpus and run folders")
    ap.add_argument("--prune", action="store_true",
                    help="delete each step's rows once the step after it is done (5M rows: ~65 GB of step outputs "
                         "in all, ~35 GB at once when pruned); the run folder is then no longer resumable")
    ap.add_argument("--resume", action="store_true",
                    help="go on with the run folder a `--keep` run left: its finished steps are skipped (their lines "
                         "say so), e.g. to run a later step over the rows kept earlier")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--shard-rows", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=4, help="input JSONL files the rows are spread over")
    ap.add_argument("--compress", choices=["gz", "zst"], default=None,
                    help="write the corpus compressed (5M rows: ~32 GB of JSONL); each file is then one ingest part")
    ap.add_argument("--split-bytes", type=lambda v: int(float(v)), default=128 * 2**20,
                    help="ray: files above this are read in parts (a huge value: one task per file)")
    ap.add_argument("--steps", default=STEPS, help="comma-separated steps after ingest ('' for ingest only)")
    ap.add_argument("--usd-per-cpu-hour", type=float, default=0.045,
                    help="price of one vCPU-hour for the cost projection (on-demand compute-optimised, 2026)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.batch_rows is not None:
        os.environ["POND_LOCAL_BATCH_ROWS"] = str(args.batch_rows)
    sizes = [int(float(r)) for r in args.rows.split(",") if r.strip()]
    ray_sizes = None if args.ray_rows is None else {int(float(r)) for r in args.ray_rows.split(",") if r.strip()}
    for rows in sizes:
        digests = {}
        for executor in args.executors.split(","):
            if executor == "ray" and ray_sizes is not None and rows not in ray_sizes:
                continue
            digests[executor] = run_one(args, rows, executor)
        if len(digests) > 1:
            same_kept_ids(rows, digests)
        if not args.keep:
            for d in args.workdir.glob(f"data-{rows}*"):
                shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

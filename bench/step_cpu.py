"""CPU seconds of the per-row curation steps against another checkout, on the same real rows, with equal verdicts.

    python bench/step_cpu.py --base-tree DIR [--rows 20000] [--rounds 3]

The rows: the first `--rows` ShareGPT conversations (`curation.sources`, as `pond run` ingests them),
written once to Parquet. Each arm is a fresh Python process with one checkout first on `sys.path` (this
one, and `--base-tree`, e.g. `git worktree add /tmp/base <commit>`), running on those rows:
  heuristics        the step with its default options;
  answer_faults     the step with its default options (langid's model loaded before the clock starts);
  pii               the step with its default options (redact);
  exact_dedup_keys  `stream_marks`, what the local executor and `pond update` run (keys of every row);
  exact_dedup       the in-memory step.
Each step's CPU seconds (process time: both cores count) in each arm, `--rounds` times alternating, the
median taken; one JSON line per step with the ratio base / this, and whether the two arms' outputs (ids and
reasons of the rejected rows; pii's kept texts and findings) are equal.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from child import add_worker_args, report, run_worker
from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

STEPS = ("heuristics", "answer_faults", "pii", "exact_dedup_keys", "exact_dedup")


def worker(data: Path, out: Path) -> None:
    """Run every step on the rows with whatever checkout is first on sys.path; CPU seconds per step."""
    import polars as pl

    from curation import answer_faults as faults
    from curation.answer_faults_step import AnswerFaultsOptions, answer_faults
    from curation.exact_dedup import ExactDedupOptions, exact_dedup, stream_marks
    from curation.heuristics import HeuristicsOptions, heuristics
    from curation.pii import PiiOptions, pii
    from curation.step import StepContext

    df = pl.read_parquet(data)
    faults.language("Ceci est une phrase en français, assez longue pour être lue.")  # langid's model, once
    runs = {
        "heuristics": lambda: heuristics(df, HeuristicsOptions(), StepContext(seed=0))[1].select("id", "reason"),
        "answer_faults": lambda: answer_faults(df, AnswerFaultsOptions(), StepContext(seed=0))[1].select("id", "reason"),
        "pii": lambda: pii(df, PiiOptions(), StepContext(seed=0))[0].select("id", "text", "pii_count", "pii_types"),
        "exact_dedup_keys": lambda: stream_marks(lambda cols: iter([df.select(cols)]), ExactDedupOptions(),
                                                 StepContext(seed=0))[0],
        "exact_dedup": lambda: exact_dedup(df, ExactDedupOptions(), StepContext(seed=0))[1].select("id", "reason"),
    }
    cpu = {}
    for name, run in runs.items():
        t = time.process_time()
        result = run()
        cpu[name] = time.process_time() - t
        result.write_parquet(out / f"{name}.parquet")
    report({"cpu": cpu})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-tree", type=Path, help="the checkout to compare with (required)")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    add_worker_args(ap, "--tree")
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.tree)
        for name in [m for m in sys.modules if m == "curation" or m.startswith("curation.")]:
            del sys.modules[name]  # bench/figures imported this checkout's curation; the arm's own is wanted
        worker(Path(args.data), Path(args.out))
        return
    if args.base_tree is None:
        ap.error("--base-tree is required")

    import polars as pl

    from curation.ingest import records_from_dicts
    from curation.sources import iter_sharegpt

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "rows.parquet"
        records_from_dicts(list(iter_sharegpt(limit=args.rows)), source="sharegpt").write_parquet(data)
        arms = {"this": Path(__file__).resolve().parents[1], "base": args.base_tree.resolve()}
        cpu: dict[str, dict[str, list[float]]] = {a: {s: [] for s in STEPS} for a in arms}
        for r in range(args.rounds):
            for arm in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                out = tmp / arm
                out.mkdir(exist_ok=True)
                result = run_worker(__file__, arm, data, out, ["--tree", str(arms[arm])])
                for step, seconds in result["cpu"].items():
                    cpu[arm][step].append(seconds)
        for step in STEPS:
            equal = pl.read_parquet(tmp / "this" / f"{step}.parquet").equals(pl.read_parquet(tmp / "base" / f"{step}.parquet"))
            this, base = statistics.median(cpu["this"][step]), statistics.median(cpu["base"][step])
            emit(bench="step_cpu", step=step, rows=args.rows, rounds=args.rounds, base_tree=str(args.base_tree),
                 cpu_s=round(this, 2), base_cpu_s=round(base, 2), base_over_this=round(base / this, 2),
                 equal_outputs=equal, load=round(os.getloadavg()[0], 2))


if __name__ == "__main__":
    main()

"""`pond export` throughput: rows/s for every export format on N curated rows, next to a plain loop of
`json.dumps` of each row's messages to a JSONL file (no rules, no lineage, no config) in the same run.

The run is real: N generated chat rows (one in ten multi-turn, so alpaca lists some as problems)
ingested by pond's runner into `curated.parquet`. Each export is timed from the call to the last
file written, reading the rows included; every format (lm-eval too) exports the same curated rows.
Prints one JSON line per figure.

    python bench/export.py [--rows 100000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_corpus(path: Path, rows: int) -> None:
    rng = random.Random(0)
    words = "the a pond data lake model teacher student answer question noisy clean curated set".split()

    def say(lo: int, hi: int) -> str:
        return " ".join(rng.choices(words, k=rng.randint(lo, hi)))

    with open(path, "w") as f:
        for i in range(rows):
            turns = 2 if i % 10 == 9 else 1
            messages = [m for _ in range(turns) for m in ({"role": "user", "content": say(3, 12)},
                                                          {"role": "assistant", "content": say(5, 40)})]
            f.write(json.dumps({"messages": messages, "row": i}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import polars as pl

    from pond.export import FORMATS, export_run
    from pond.recipe import parse_recipe
    from pond.runner import Runner

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_corpus(tmp / "rows.jsonl", args.rows)
        recipe = parse_recipe("name: bench\ninput: {path: rows.jsonl}\nsteps:\n  - holdout: {n: 200}\n")
        runner = Runner(recipe, tmp / "run", tmp)
        runner.curate()
        curated = tmp / "run" / "curated.parquet"

        def baseline() -> float:
            t0 = time.perf_counter()
            df = pl.read_parquet(curated)
            with open(tmp / "baseline.jsonl", "w", encoding="utf-8") as f:
                for (messages,) in df.select("messages").iter_rows():
                    f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            return df.height / (time.perf_counter() - t0)

        # The machine is shared: each format runs right after its own baseline, `--repeats` times,
        # and the medians are reported, so a burst of other load moves both sides of a ratio.
        bases = []
        for fmt in FORMATS:
            rates, ratios = [], []
            for _ in range(args.repeats):
                base = baseline()
                bases.append(base)
                t0 = time.perf_counter()
                # lm-eval exports the held-out set by default; here the same curated rows as the others
                result = export_run(tmp / "run", fmt, rows="curated")
                rate = (result.rows + result.problems) / (time.perf_counter() - t0)
                rates.append(rate)
                ratios.append(rate / base)
            emit(figure="export_rows_per_s", format=fmt, value=round(statistics.median(rates)),
                 rows=result.rows + result.problems, written=result.rows, listed_as_problems=result.problems,
                 repeats=args.repeats)
            emit(figure="export_speed_ratio_vs_json_dumps", format=fmt, value=round(statistics.median(ratios), 3),
                 repeats=args.repeats)
        emit(figure="baseline_json_dumps_rows_per_s", value=round(statistics.median(bases)),
             rows=pl.scan_parquet(curated).select(pl.len()).collect().item(), repeats=len(bases))

if __name__ == "__main__":
    main()

"""Ingest throughput and memory: N short JSONL rows through pond's ingest step (as `pond run` does it),
plain and compressed (.jsonl.gz, .jsonl.zst: each beside the plain file's figure).

Prints one JSON line per figure. Baseline in the same run: `json.loads` of every line into a list
(parsing only — no layout normalisation, no ids, no Parquet), i.e. reading the whole file into
memory, so pond's throughput and its streaming peak RSS can be judged against it.

    python bench/ingest.py [--rows 1000000]
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
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
    with open(path, "w") as f:
        for i in range(rows):
            q = " ".join(rng.choices(words, k=rng.randint(3, 12)))
            a = " ".join(rng.choices(words, k=rng.randint(5, 30)))
            if i % 1000 == 999:
                f.write("{broken json\n")  # a few bad rows, as in real dumps
            elif i % 2:
                f.write(json.dumps({"prompt": q, "response": a, "row": i}) + "\n")
            else:
                f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                                 {"role": "assistant", "content": a}], "row": i}) + "\n")


def compress(path: Path) -> dict[str, Path]:
    """The corpus as .jsonl.gz (level 6, gzip's default) and .jsonl.zst (level 3, zstd's default)."""
    import gzip
    import shutil

    import zstandard

    out = {"gz": path.with_name(path.name + ".gz"), "zst": path.with_name(path.name + ".zst")}
    with open(path, "rb") as src, gzip.open(out["gz"], "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    with open(path, "rb") as src, open(out["zst"], "wb") as dst:
        zstandard.ZstdCompressor(level=3).copy_stream(src, dst)
    return out


def child(mode: str, path: Path, out: Path) -> None:
    t0 = time.perf_counter()
    if mode == "pond":
        from pond.recipe import parse_recipe
        from pond.runner import Runner

        recipe = parse_recipe(f"name: bench\ninput: {{path: {path}}}\n")
        runner = Runner(recipe, out, path.parent)
        runner.ingest()
        rows = runner.step_stats[0]["in"]
    else:
        # what a notebook does: json.loads every line into a list (polars.read_ndjson cannot skip bad lines)
        rows_list = []
        with open(path) as f:
            for line in f:
                try:
                    rows_list.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        rows = len(rows_list) + sum(1 for _ in open(path)) - len(rows_list)
    elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"mode": mode, "rows": rows, "seconds": elapsed, "peak_rss_mb": peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "FILE", "OUT"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        make_corpus(data, args.rows)
        size_mb = data.stat().st_size / 2**20
        packed = compress(data)
        results = {}
        runs = [("pond", data), ("json_loads_list", data)] + [(f"pond_{ext}", p) for ext, p in packed.items()]
        for mode, path in runs:
            proc = subprocess.run([sys.executable, __file__, "--child", mode.split("_")[0] if mode.startswith("pond")
                                   else mode, str(path), str(Path(tmp) / f"run-{mode}")],
                                  capture_output=True, text=True, check=True)
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        pond, base = results["pond"], results["json_loads_list"]
        for ext, path in packed.items():
            # the same rows, read through the decompressing stream: beside the plain file's figure
            r = results[f"pond_{ext}"]
            emit(figure=f"ingest_rows_per_s_jsonl_{ext}", value=round(r["rows"] / r["seconds"]),
                 input_mb=round(path.stat().st_size / 2**20, 1), peak_rss_mb=round(r["peak_rss_mb"]),
                 vs_uncompressed=round((r["rows"] / r["seconds"]) / (pond["rows"] / pond["seconds"]), 3))
        emit(figure="ingest_rows_per_s", value=round(pond["rows"] / pond["seconds"]), rows=pond["rows"],
             input_mb=round(size_mb, 1))
        emit(figure="ingest_peak_rss_mb", value=round(pond["peak_rss_mb"]))
        emit(figure="baseline_json_loads_list_rows_per_s", value=round(base["rows"] / base["seconds"]))
        emit(figure="baseline_json_loads_list_peak_rss_mb", value=round(base["peak_rss_mb"]))
        emit(figure="ingest_speed_ratio_vs_json_loads_list",
             value=round((pond["rows"] / pond["seconds"]) / (base["rows"] / base["seconds"]), 3))


if __name__ == "__main__":
    main()

"""Training throughput in several processes (DDP) against one, with the same global batch.

pond's QLoRA training of the student on real conversations (the first ShareGPT rows; train() drops
those without an answer), once per process count: `train.processes` = 1, then 2 (or `--processes`),
each in its own Python process so that every arm starts cold. Throughput is steady-state, from
train-result.json's log: tokens every rank trained on (`tokens_seen`) per second of rank 0's training
time, from the end of step 1 to the end of the last step; the wall time of the whole train() call, with
the workers' start-up, is reported beside it.

On a CPU the processes share the same cores (each gets cores / N threads), so no speed-up is expected
here; the figure is for a node with one GPU per process. Each line names the CPU (and GPU) and the load
average before and after its arm: a busy machine is visible in the figure it slows.

Prints one JSON line per figure.

    python bench/ddp.py                                   # SmolLM2-135M, 4 steps, global batch 8 x 256
    python bench/ddp.py --processes 1,8 --steps 30 --batch-size 64 --seq-len 1024   # an 8-GPU node
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from child import add_worker_args, report, run_worker  # noqa: E402 (bench/ is on sys.path when a bench runs)
from figures import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import TrainConfig  # noqa: E402


class Config(TrainConfig):
    """With `processes` (train.processes), which train() reads where the config has it. At module level:
    the workers train() starts import this script again to unpickle it."""

    processes: int = 1


def child(args) -> None:
    """One arm: train with `args.child` processes and print its timing."""
    import polars as pl

    from training.trainer import train

    out = Path(args.out)
    cfg = Config(student=args.model, max_steps=args.steps, batch_size=args.batch_size, max_seq_len=args.seq_len,
                 save_steps=10**6, lr=2e-4, processes=int(args.child))
    t0 = time.perf_counter()
    res = train(pl.read_parquet(args.data), cfg, out)
    wall = time.perf_counter() - t0
    log = [e for e in json.loads((out / "train-result.json").read_text())["log_history"] if "tokens_seen" in e]
    first, last = log[0], log[-1]
    report({"tokens": last["tokens_seen"] - first["tokens_seen"],
            "seconds": last["train_seconds"] - first["train_seconds"], "wall_seconds": wall,
            "steps": res.steps, "compute_dtype": res.compute_dtype, "final_loss": res.losses[-1]})


def _arm(args, processes: str, data: Path, out: str) -> dict:
    flags = ["--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
             "--seq-len", str(args.seq_len)]
    load_before = os.getloadavg()
    return run_worker(__file__, processes, data, out, flags) | {"load_before": load_before,
                                                                "load_after": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="cache name or HF model folder")
    ap.add_argument("--processes", default="1,2", help="process counts to compare, the first is the reference")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8, help="global micro-batch (split over the processes)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rows", type=int, default=256, help="ShareGPT conversations to draw batches from")
    add_worker_args(ap)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from curation.ingest import records_from_dicts
    from curation.sources import iter_sharegpt

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.parquet"
        records_from_dicts(list(iter_sharegpt(limit=args.rows)), source="sharegpt").write_parquet(data)
        runs = {n: _arm(args, n, data, f"{tmp}/p{n}") for n in args.processes.split(",")}
    import torch

    common = {"model": args.model, "steps": args.steps, "global_batch_size": args.batch_size,
              "seq_len": args.seq_len, "rows": args.rows, "backend": "nccl" if torch.cuda.is_available() else "gloo"}
    first = next(iter(runs))
    for n, r in runs.items():
        tps = r["tokens"] / r["seconds"]
        arm = {"processes": int(n), "dtype": r["compute_dtype"], "final_loss": r["final_loss"],
               "loadavg_1_5_15_before": r["load_before"], "loadavg_1_5_15_after": r["load_after"]} | common
        emit(figure=f"ddp_{n}_processes_train_tokens_per_s", value=round(tps, 1), **arm)
        emit(figure=f"ddp_{n}_processes_train_wall_s", value=round(r["wall_seconds"], 1), **arm,
             note="the whole train() call: worker start-up, model loading, tokenization, training, saving")
        if n != first:
            reference = runs[first]["tokens"] / runs[first]["seconds"]
            emit(figure=f"ddp_{n}_vs_{first}_processes_train_tokens_per_s_ratio", value=round(tps / reference, 3),
                 **arm)


if __name__ == "__main__":
    main()

"""Training throughput and peak memory: pond's QLoRA training next to a plain TRL SFTTrainer QLoRA run.

Same model, same real conversations (ShareGPT rows with an answer), same batch size, sequence
length, LoRA settings and step count. Each arm runs in its own process (so peak RSS is its own),
arms alternate when repeated, and the median is reported. Throughput is steady-state: non-padding
tokens through the model per second from the end of step 1 to the end of the last step.

The baseline is what the TRL documentation shows for QLoRA: `SFTTrainer(model=path,
quantization_config=BitsAndBytesConfig(nf4, double quant, bf16 compute), peft_config=LoraConfig(
all-linear))` on a `messages` dataset with SFTConfig defaults (bf16 autocast, gradient
checkpointing on). `--baseline-checkpointing off` turns checkpointing off there too.

Prints one JSON line per figure.

    python bench/train.py                                 # SmolLM2-135M, 4 steps, batch 8 x 256 (CPU-sized)
    python bench/train.py --steps 30 --batch-size 16 --seq-len 1024 --model /path/to/hf-model   # a GPU
    python bench/train.py --dtypes fp32,bf16 --arms pond  # pond's CPU compute dtype: fp32 vs bf16
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_data(path: Path, rows: int) -> int:
    import polars as pl

    from curation.ingest import records_from_dicts
    from curation.sources import iter_sharegpt

    df = records_from_dicts(list(iter_sharegpt(limit=rows * 2 + 50)), source="sharegpt")
    df = df.filter(pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.any())
    df.head(rows).write_parquet(path)
    return min(rows, df.height)


def now() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds over all threads)."""
    return time.perf_counter(), time.process_time()


class StepClock:
    """Wall and CPU time at the end of every optimizer step."""

    def __init__(self):
        self.times: list[tuple[float, float]] = []

    def track(self, items, description, total=None):  # pond's progress contract
        for x in items:
            self.times.append(now())
            yield x


def _timing(times: list[tuple[float, float]], tokens: list[float]) -> dict:
    """Steady state: from the end of step 1 to the end of the last step."""
    return {"tokens": tokens[-1] - tokens[0], "seconds": times[-1][0] - times[0][0],
            "cpu_seconds": times[-1][1] - times[0][1],
            "step_seconds": [round(b[0] - a[0], 2) for a, b in zip(times, times[1:])]}


def _device_peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_pond(args, data: Path, out: Path, dtype: str) -> dict:
    import polars as pl

    from training.config import TrainConfig
    from training.trainer import train

    clock = StepClock()
    cfg = TrainConfig(student=args.model, max_steps=args.steps, batch_size=args.batch_size, max_seq_len=args.seq_len,
                      compute_dtype=dtype, save_steps=10**6, lr=2e-4, lora_r=16, lora_alpha=32)
    res = train(pl.read_parquet(data), cfg, out, progress=clock.track)
    hist = json.loads((out / "train-result.json").read_text())["log_history"]
    tokens = [e["tokens_seen"] for e in hist if "tokens_seen" in e]
    # the clock ticks when a step ends; the tick for step k is clock.times[k-1] (ticks after the first are late by
    # the step's own logging, equally for both arms)
    return {**_timing(clock.times, tokens), "steps": res.steps,
            "compute_dtype": res.compute_dtype, "peak_mb": _device_peak_mb(), "final_loss": res.losses[-1]}


def run_trl(args, data: Path, out: Path, checkpointing: bool) -> dict:
    import polars as pl
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from training.model import resolve_student

    times, tokens = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            times.append(now())

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs and "loss" in logs:
                tokens.append(logs["num_tokens"])

    df = pl.read_parquet(data)
    ds = Dataset.from_dict({"messages": [[{"role": m["role"], "content": m["content"]} for m in conv]
                                         for conv in df["messages"].to_list()]})
    cuda = torch.cuda.is_available()
    sft = SFTConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                    learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0.05, max_length=args.seq_len,
                    logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=not cuda,
                    gradient_checkpointing=checkpointing, model_init_kwargs={"dtype": torch.bfloat16})
    trainer = SFTTrainer(
        model=str(resolve_student(args.model)), args=sft, train_dataset=ds,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                               task_type="CAUSAL_LM"),
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16),
        callbacks=[Clock()])
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {**_timing(times, tokens), "steps": trainer.state.global_step,
            "compute_dtype": "bfloat16", "peak_mb": _device_peak_mb(), "final_loss": losses[-1]}


def child(args) -> None:
    from training.model import set_threads

    set_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    arm, _, variant = args.child.partition(":")
    r = run_pond(args, data, out, variant or "auto") if arm == "pond" else run_trl(args, data, out, variant != "off")
    print("RESULT " + json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="cache name or HF model folder")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rows", type=int, default=256, help="ShareGPT conversations to draw batches from")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs per arm (median reported)")
    ap.add_argument("--arms", default="pond,trl", help="pond and/or trl")
    ap.add_argument("--dtypes", default="auto", help="pond compute dtypes to run, e.g. fp32,bf16")
    ap.add_argument("--baseline-checkpointing", choices=["default", "off", "both"], default="default",
                    help="TRL's gradient checkpointing: its default (on), off, or a run of each")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{len(__import__('os').sched_getaffinity(0))}"
    variants = []
    for arm in args.arms.split(","):
        if arm == "pond":
            variants += [f"pond:{d}" for d in args.dtypes.split(",")]
        elif arm == "trl":
            variants += {"default": ["trl:on"], "off": ["trl:off"], "both": ["trl:on", "trl:off"]}[args.baseline_checkpointing]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.parquet"
        rows = make_data(data, args.rows)
        for rep in range(args.repeats):
            for v in variants:
                cmd = [sys.executable, __file__, "--child", v, "--data", str(data), "--out", f"{tmp}/{v}-{rep}",
                       "--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                       "--seq-len", str(args.seq_len)] + (["--threads", str(args.threads)] if args.threads else [])
                proc = subprocess.run(cmd, capture_output=True, text=True)
                line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{v} failed:\n{proc.stderr[-3000:]}")
                runs[v].append(json.loads(line[7:]))
                print(f"# {v} run {rep}: {runs[v][-1]}", file=sys.stderr, flush=True)
    common = {"model": args.model, "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
              "rows": rows, "device": device, "repeats": args.repeats}
    tps, tpc = {}, {}
    for v, rs in runs.items():
        tps[v] = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        tpc[v] = statistics.median(r["tokens"] / r["cpu_seconds"] for r in rs)
        arm, _, variant = v.partition(":")
        name = "pond" if arm == "pond" else "trl_sft_baseline" + ("_no_checkpointing" if variant == "off" else "")
        extra = {"dtype": rs[0]["compute_dtype"]} | ({"gradient_checkpointing": variant} if arm == "trl" else {})
        emit(figure=f"{name}_train_tokens_per_s", value=round(tps[v], 1), **extra, **common,
             runs=[round(r["tokens"] / r["seconds"], 1) for r in rs])
        # CPU seconds (all threads) are far less disturbed by other processes on a shared machine than wall time
        emit(figure=f"{name}_train_tokens_per_cpu_s", value=round(tpc[v], 2), **extra, **common,
             runs=[round(r["tokens"] / r["cpu_seconds"], 2) for r in rs])
        emit(figure=f"{name}_train_peak_memory_mb", value=round(max(r["peak_mb"] for r in rs)),
             kind="cuda max_memory_allocated" if torch.cuda.is_available() else "process peak RSS", **extra, **common)
    for base in (v for v in variants if v.startswith("trl")):
        for v in (v for v in variants if v.startswith("pond")):
            emit(figure="pond_vs_trl_train_tokens_per_s_ratio", value=round(tps[v] / tps[base], 3),
                 per_cpu_s=round(tpc[v] / tpc[base], 3), pond=v, baseline=base, target=1.0, **common)


if __name__ == "__main__":
    main()

"""DPO training speed: pond's `train: {method: dpo}` against plain TRL DPOTrainer defaults, same pairs, same run.

The pairs are SYNTHETIC, FOR TIMING ONLY: real ShareGPT prompts (single-turn, short), their real answer as
`chosen` and the same answer cut to its first third as `rejected`. DPO can learn that preference, but no
judge made it and nothing here measures what DPO learns. The student is SmolLM2-135M
(curation.settings.DEFAULT_STUDENT, resolved with training.model.resolve_student).

Arms, each in its own process (arms alternate when repeated; medians reported):

- `pond:<dtype>`: training.dpo.train_dpo with `dpo.reference: base` (DPO steps only: no SFT stage in the
  timing) and pond's defaults otherwise: 4-bit NF4 base (`dpo.base_method: qlora`), LoRA r16 all-linear,
  no gradient checkpointing, compute dtype `auto` (curation.settings.pick_dtype) or the one named;
- `trl:<dtype>`: `DPOTrainer(model=<folder>, args=DPOConfig(...), peft_config=LoraConfig(the same LoRA))`
  with TRL's defaults: the model loaded in fp32 and trained under bf16 autocast (`bf16` defaults to True),
  gradient checkpointing on, no quantisation; `trl:fp32` sets `bf16=False` and nothing else.

Both get the same pairs, batch size, max_length and step count. Steps/s is steady state: from the end of
step 1 to the end of the last (loading and TRL's tokenizing are outside it); steps per CPU-second (this
process's CPU time, all threads) beside it moves far less when other work shares the machine. Arms
alternate pond, TRL, pond, TRL, so a burst of other load falls on both. TRL defaults to bf16, which a
CPU without native bf16 (AVX-512 BF16 or AMX) emulates, much slower (curation.settings); every line carries
the CPU (curation.settings.hardware(), `cpu_native_bf16` among it) and the 1-minute load average before and
after the arm, since the machine may be shared.

    python bench/dpo.py       # pond and TRL in pond's dtype and in TRL's default (bf16); 5 steps of 2 pairs x 128
    python bench/dpo.py --arms pond:bf16,trl:bf16,pond:fp32,trl:fp32 --steps 10 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)
from train import StepClock, now  # bench/train.py's step clock: the same timing rule as the SFT bench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_pairs(path: Path, n: int) -> int:
    """n synthetic timing pairs from real ShareGPT rows (module docstring), as pond rows with pair columns."""
    import polars as pl

    from curation.ingest import records_from_dicts
    from curation.records import MESSAGES
    from curation.sources import iter_sharegpt

    df = records_from_dicts(list(iter_sharegpt(limit=n * 20 + 200)), source="sharegpt")
    rows = []
    for messages in df["messages"].to_list():
        if [m["role"] for m in messages[:2]] != ["user", "assistant"] or len(messages[0]["content"]) > 400:
            continue
        answer = messages[1]["content"]
        if len(answer) < 300:
            continue
        prompt, cut = messages[:1], " ".join(answer.split()[: len(answer.split()) // 3])
        rows.append({"id": f"p{len(rows)}", "messages": messages[:2], "prompt": prompt,
                     "chosen": [messages[1]], "rejected": [{"role": "assistant", "content": cut}]})
        if len(rows) == n:
            break
    schema = {"id": pl.Utf8, "messages": MESSAGES, "prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES}
    pl.DataFrame(rows, schema=schema).with_columns(text=pl.lit(""), source=pl.lit("sharegpt")).write_parquet(path)
    return len(rows)


def run_pond(args, data: Path, out: Path, dtype: str) -> dict:
    import polars as pl

    from training.config import TrainConfig
    from training.dpo import train_dpo

    clock = StepClock()
    cfg = TrainConfig(student=args.model, method="dpo", batch_size=args.batch_size, max_seq_len=args.seq_len,
                      compute_dtype=dtype, save_steps=10**6, lora_r=16, lora_alpha=32,
                      dpo={"reference": "base", "max_steps": args.steps})
    res = train_dpo(pl.read_parquet(data), cfg, out, progress=clock.track)
    return {"times": clock.times, "steps": res.steps, "dtype": res.compute_dtype, "final_loss": res.losses[-1]}


def run_trl(args, data: Path, out: Path, dtype: str) -> dict:
    import polars as pl
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from training.model import resolve_student

    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            times.append(now())

    pairs = pl.read_parquet(data).select("prompt", "chosen", "rejected").to_dicts()
    config = DPOConfig(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                       max_length=args.seq_len, logging_steps=1, save_strategy="no", report_to="none",
                       disable_tqdm=True, use_cpu=not torch.cuda.is_available(), bf16=dtype == "bf16")
    trainer = DPOTrainer(model=str(resolve_student(args.model)), args=config, train_dataset=Dataset.from_list(pairs),
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                task_type="CAUSAL_LM"),
                         callbacks=[Clock()])
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"times": times, "steps": trainer.state.global_step, "dtype": "bfloat16" if config.bf16 else "float32",
            "final_loss": losses[-1], "gradient_checkpointing": config.activation_checkpointing}


def child(args) -> None:
    from training.model import set_threads

    set_threads(args.threads)
    arm, _, dtype = args.child.partition(":")
    load = os.getloadavg()[0]
    r = (run_pond if arm == "pond" else run_trl)(args, Path(args.data), Path(args.out), dtype)
    times = r.pop("times")
    r |= {"steps_per_s": (len(times) - 1) / (times[-1][0] - times[0][0]),
          "steps_per_cpu_s": (len(times) - 1) / (times[-1][1] - times[0][1]),
          "step_seconds": [round(b[0] - a[0], 2) for a, b in zip(times, times[1:])],
          "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)]}
    print("RESULT " + json.dumps(r))


def default_arms() -> str:
    """pond and TRL in pond's dtype (curation.settings.pick_dtype) and in TRL's default, bf16: one pair of arms
    where the two agree (a CPU with native bf16, a GPU), two where they do not."""
    from curation.settings import pick_dtype

    ours = pick_dtype("auto")
    return ",".join(f"{arm}:{dtype}" for dtype in dict.fromkeys([ours, "bf16"]) for arm in ("pond", "trl"))


def _run_arm(args, arm: str, data: Path, out: str) -> dict:
    cmd = [sys.executable, __file__, "--child", arm, "--data", str(data), "--out", out, "--model", args.model,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
    proc = subprocess.run(cmd + (["--threads", str(args.threads)] if args.threads else []), capture_output=True,
                          text=True)
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{arm} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def _emit_all(runs: dict[str, list[dict]], common: dict) -> None:
    rate = {arm: statistics.median(r["steps_per_s"] for r in rs) for arm, rs in runs.items()}
    per_cpu = {arm: statistics.median(r["steps_per_cpu_s"] for r in rs) for arm, rs in runs.items()}
    for arm, rs in runs.items():
        name = "pond_dpo" if arm.startswith("pond") else "trl_dpo_defaults"
        extra = {"gradient_checkpointing": rs[0].get("gradient_checkpointing", False),
                 "quantization": "nf4" if arm.startswith("pond") else None}
        emit(figure=f"{name}_steps_per_s", value=round(rate[arm], 4), arm=arm, dtype=rs[0]["dtype"],
             pairs_per_s=round(rate[arm] * common["batch_size"], 3), runs=[round(r["steps_per_s"], 4) for r in rs],
             steps_per_cpu_s=round(per_cpu[arm], 5),
             step_seconds=rs[0]["step_seconds"], final_loss=round(rs[0]["final_loss"], 4),
             load_avg_1m=[r["load_avg_1m"] for r in rs], **extra, **common)
    for p in (a for a in runs if a.startswith("pond")):
        for t in (a for a in runs if a.startswith("trl")):
            emit(figure="pond_vs_trl_dpo_steps_per_s_ratio", value=round(rate[p] / rate[t], 3), pond=p, baseline=t,
                 per_cpu_s=round(per_cpu[p] / per_cpu[t], 3), dtype=None, **common)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="cache name or HF model folder (default: the default student)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=2, help="pairs per step (twice as many sequences)")
    ap.add_argument("--seq-len", type=int, default=128, help="max_length of prompt + answer, both arms")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--arms", default=None, help="e.g. pond:fp32,trl:fp32 (default: default_arms())")
    ap.add_argument("--threads", type=int, default=None)
    for hidden in ("--child", "--data", "--out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model is None:
        from curation.settings import DEFAULT_STUDENT

        args.model = DEFAULT_STUDENT
    if args.child:
        child(args)
        return
    arms = (args.arms or default_arms()).split(",")
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.parquet"
        pairs = make_pairs(data, args.pairs)
        for rep in range(args.repeats):
            for arm in arms:
                runs[arm].append(_run_arm(args, arm, data, f"{tmp}/{arm}-{rep}"))
                print(f"# {arm} run {rep}: {runs[arm][-1]}", file=sys.stderr, flush=True)
    _emit_all(runs, {"model": args.model, "steps": args.steps, "batch_size": args.batch_size,
                     "seq_len": args.seq_len, "pairs": pairs, "repeats": args.repeats,
                     "pairs_are": "synthetic, for timing only: a ShareGPT answer vs its first third"})


if __name__ == "__main__":
    main()

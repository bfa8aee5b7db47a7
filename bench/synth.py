"""Edge-case yield: kept rows per teacher token and per minute, before and with the yield changes.

Same seed rows, same writer (SmolLM2-135M-Instruct, served here by pond's own server code), same
recipe seed, one run. Every configuration writes `--n` edge cases with a fresh teacher cache, so
none reuses another's replies:

  before            the generator as it was (one generic template, one case per call, no kinds):
                    the quickstart's former line, the named baseline;
  kinds             one prompt per kind, built on a real seed prompt, no other examples, one case per call;
  kinds+fewshot     the same with 3 more real prompts of the pond shown (few-shot);
  list4             few-shot, a schema'd list of 4 cases of one kind per call;
  candidates4       few-shot, one case per call, best of 4 candidates (vLLM n) by the validity checks;
  retry1            candidates4 and one retry showing the writer its rejected message and why;
  answers2          retry1 with 2 sampled answers per prompt (the first complete one kept);
  judge_picks3      retry1 with 3 sampled answers per prompt, every complete one a row, and the judge
                    keeping the best-scored of each case (with --judge; without, its rows are not cases).

"kept" counts rows past the validity checks (and past the judge with --judge, which serves the
demo's judge, Qwen2.5-Coder-1.5B, after the writer is stopped, and scores every configuration's
rows with min_score 5). Tokens are the writer's prompt + completion tokens (and the judge's with
--judge, reported apart). One JSON line per figure, each naming the CPU.

    python bench/synth.py [--pool runs/quickstart/steps/09-select/kept.parquet] [--n 24] [--judge]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from curation.step import StepContext  # noqa: E402
from synthesis import server  # noqa: E402
from synthesis.client import TeacherConfig  # noqa: E402
from synthesis.generators import SynthesizeOptions, synthesize  # noqa: E402
from synthesis.judge import JudgeOptions, judge  # noqa: E402
from synthesis.teachers import Teachers

WRITER, JUDGE = "smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct"
BASELINE = "before"
COMMON = {"generator": "edge_cases", "temperature": 0.7, "max_tokens": 192, "teacher": "writer"}
NEW = {**COMMON, "per_call": 1, "seeds_per_call": 3, "system": "Answer the user's message helpfully, in a short "
       "paragraph. Ask a question back if the request is unclear."}
CONFIGS = {
    BASELINE: {**COMMON, "per_call": 1, "prompt": "edge_cases"},
    "kinds": {**NEW, "seeds_per_call": 0},
    "kinds+fewshot": NEW,
    "list4": {**NEW, "per_call": 4},
    "candidates4": {**NEW, "candidates": 4},
    "retry1": {**NEW, "candidates": 4, "retries": 1},
    "answers2": {**NEW, "candidates": 4, "retries": 1, "answer_candidates": 2},
    "judge_picks3": {**NEW, "candidates": 4, "retries": 1, "answer_candidates": 3, "judge_picks": True},
}


def valid_cases(new: pl.DataFrame) -> int:
    """Edge cases with a row (judge_picks writes several rows a case: the judge keeps one)."""
    return new["candidate_of"].n_unique() if "candidate_of" in new.columns else len(new)


def tokens(stats: dict) -> int:
    t = stats["teacher"]
    return t.get("prompt_tokens", 0) + t.get("completion_tokens", 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=Path, required=True,
                    help="seed rows (parquet): the curated set before synthesis, e.g. the select step's kept.parquet "
                         "of `pond run recipes/quickstart.yaml --no-train`")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    ap.add_argument("--judge", action="store_true", help="also judge each configuration's rows (min_score 5)")
    ap.add_argument("--writer-url", help="an already running writer (default: serve one here)")
    ap.add_argument("--port", type=int, default=8931)
    a = ap.parse_args()
    pool = pl.read_parquet(a.pool)
    names = [c for c in a.configs.split(",") if c]
    work = Path(tempfile.mkdtemp(prefix="pond-bench-synth-"))
    handle = None
    if a.writer_url:
        writer = TeacherConfig(base_url=a.writer_url, model=WRITER, max_concurrency=16, timeout_s=1800)
    else:
        t0 = time.perf_counter()
        handle = server.serve(WRITER, port=a.port, log_dir=work / "logs", owner="run")
        emit(dtype=handle.dtype, figure="writer_server_start_s", value=round(time.perf_counter() - t0, 1))
        writer = TeacherConfig(base_url=handle.base_url, model=handle.model, max_concurrency=16, timeout_s=1800)
    results: dict[str, dict] = {}
    try:
        for name in names:
            opts = SynthesizeOptions(n=a.n, **CONFIGS[name])
            run_dir = work / name
            run_dir.mkdir()
            ctx = StepContext(seed=a.seed, run_dir=run_dir, cache_dir=work / "cache", teachers=Teachers({"writer": writer}))
            t0 = time.perf_counter()
            kept, _ = synthesize(pool, opts, ctx)
            wall = time.perf_counter() - t0
            new = kept.filter(pl.col("source").str.starts_with("synthetic:"))
            results[name] = {"new": new, "seconds": wall, "tokens": tokens(ctx.stats), "stats": ctx.stats}
            emit(figure="edge_cases_valid", config=name, baseline=BASELINE, options=CONFIGS[name], asked=a.n,
                 valid=valid_cases(new), valid_rows=len(new), writer_tokens=results[name]["tokens"], seconds=round(wall, 1),
                 valid_per_1k_tokens=round(1000 * valid_cases(new) / max(1, results[name]["tokens"]), 3),
                 valid_per_minute=round(60 * valid_cases(new) / wall, 2),
                 rejected=ctx.stats["rejected_new_by_reason"], by_kind=ctx.stats.get("by_kind"))
    finally:
        if handle is not None:
            handle.stop()
    if a.judge:
        t0 = time.perf_counter()
        jh = server.serve(JUDGE, port=a.port + 1, log_dir=work / "logs", owner="run")
        emit(dtype=jh.dtype, figure="judge_server_start_s", value=round(time.perf_counter() - t0, 1))
        jcfg = TeacherConfig(base_url=jh.base_url, model=jh.model, max_concurrency=8, timeout_s=1800)
        try:
            for name in names:
                r = results[name]
                if len(r["new"]) == 0:
                    r.update(judged=0, judge_seconds=0.0, judge_tokens=0)
                    continue
                ctx = StepContext(seed=a.seed, run_dir=work / name, cache_dir=work / "cache" / name,
                                  teachers=Teachers({"judge": jcfg}))
                t0 = time.perf_counter()
                picks = "candidate_of" if CONFIGS[name].get("judge_picks") else None
                kept, _ = judge(r["new"], JudgeOptions(rubric="helpfulness", min_score=5, teacher="judge",
                                                       best_of=picks), ctx)
                r.update(judged=len(kept), judge_seconds=time.perf_counter() - t0, judge_tokens=tokens(ctx.stats),
                         scores=ctx.stats.get("score_histogram"))
        finally:
            jh.stop()
    base = results.get(BASELINE)
    for name, r in results.items():
        kept = r["judged"] if a.judge else valid_cases(r["new"])
        minutes = (r["seconds"] + r.get("judge_seconds", 0.0)) / 60
        figure = {"config": name, "baseline": BASELINE, "asked": a.n, "kept": kept,
                  "after": "validity checks and the judge (min_score 5)" if a.judge else "validity checks",
                  "writer_tokens": r["tokens"], "judge_tokens": r.get("judge_tokens"),
                  "kept_per_1k_writer_tokens": round(1000 * kept / max(1, r["tokens"]), 3),
                  "kept_per_minute": round(kept / minutes, 2) if minutes else None,
                  "judge_scores": r.get("scores")}
        if base is not None and name != BASELINE:
            bk = base["judged"] if a.judge else valid_cases(base["new"])
            figure["kept_vs_baseline"] = f"{kept} vs {bk}"
        emit(figure="edge_cases_kept", **figure)


if __name__ == "__main__":
    main()

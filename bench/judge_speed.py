"""What a CPU judge's calibration costs, served on vLLM's default cores or on all of them (`serve.cpu_cores`).

The requests are the quickstart judge's first calibration round (`calibration_fail_fast`): --calibration-rows
real ShareGPT rows after the default heuristics and as many answers taken from other rows, asked for the
verdict alone (`max_reason_chars: 0`, a JSON schema), exactly as the `judge` step sends them. For each core
setting: the server's start, then the round's wall seconds, seconds per judgment and prompt tokens/s, and
the AUC it gives (a faster setting must not change the grades: the verdicts are compared). One JSON line each.

    python bench/judge_speed.py [--cores default,all] [--calibration-rows 6]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from judge_calibration import pool  # noqa: E402

from synthesis import calibration, server  # noqa: E402
from synthesis.client import TeacherConfig, TeacherSession  # noqa: E402
from synthesis.judge import JudgeOptions, calibration_requests, calibration_scores  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--calibration-rows", type=int, default=6)
    ap.add_argument("--cores", default="default,all", help="comma-separated: default (vLLM's) or a cpu_cores value")
    ap.add_argument("--port", type=int, default=8014)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    items = calibration.build(pool(a.rows), a.calibration_rows, seed=0)
    first = calibration.rounds(items, fail_fast=True)[0]
    items = [items[i] for i in first]
    opts = JudgeOptions(min_score=5, max_reason_chars=0, calibration_rows=a.calibration_rows)
    grades = {}
    for cores in a.cores.split(","):
        t0 = time.perf_counter()
        h = server.serve(a.judge, port=a.port, owner="run", cpu_cores=None if cores == "default" else cores)
        emit(dtype=h.dtype, figure="judge_server_start_s", value=round(time.perf_counter() - t0, 1), model=a.judge,
             cpu_cores=cores)
        try:
            session = TeacherSession(TeacherConfig(base_url=h.base_url, model=h.model, max_concurrency=a.concurrency,
                                                   timeout_s=3600), None)
            t = time.perf_counter()
            results = session.run(calibration_requests(items, opts))
            wall = time.perf_counter() - t
            ok = [r for r in results if not isinstance(r, BaseException)]
            grades[cores] = scores = calibration_scores(results)
            summary = calibration.summarise(items, scores, opts.min_score)
            emit(dtype=h.dtype, figure="judge_calibration_round", model=a.judge, cpu_cores=cores, requests=len(items),
                 wall_s=round(wall, 1), seconds_per_judgment=round(wall / len(items), 2),
                 prompt_tokens_per_s=round(sum(r.prompt_tokens for r in ok) / wall, 1),
                 worst_auc=summary["worst_auc"], same_grades_as_first=scores == next(iter(grades.values())))
        finally:
            server.stop(a.port)


if __name__ == "__main__":
    main()

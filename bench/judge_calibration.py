"""Can a CPU judge tell a good answer from a broken one? Judge calibration (synthesis.calibration) of a
served judge on the quickstart's own kind of rows, for several ways of asking.

The pool is the first --rows ShareGPT conversations after ingest and the default heuristics (what the
quickstart's judge sees as real rows); the set is --calibration-rows positives and their corruptions.
Each setup is a judge step's options (rubric, template, reason length); its figures are the AUC per
corruption and the worst one, which `min_calibration` gates. One JSON line per setup, with the seconds
it took and the CPU.

    python bench/judge_calibration.py [--judge qwen2.5-coder-1.5b-instruct] [--calibration-rows 8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.heuristics import HeuristicsOptions, heuristics  # noqa: E402
from curation.ingest import read_records  # noqa: E402
from curation.settings import default_cache_dir  # noqa: E402
from curation.step import StepContext  # noqa: E402
from synthesis import calibration, server  # noqa: E402
from synthesis.client import TeacherConfig, TeacherSession  # noqa: E402
from synthesis.judge import JudgeOptions, calibration_requests, calibration_scores  # noqa: E402

SETUPS = {
    # the quickstart's judge as it was: helpfulness rubric, a reason of up to 160 characters first
    "helpfulness-reason160": {"rubric": "helpfulness", "max_reason_chars": 160},
    # the grade after a short reason only
    "helpfulness-reason16": {"rubric": "helpfulness", "max_reason_chars": 16},
    # an anchored scale that names each fault calibration checks for
    "anchored-reason60": {"rubric": "helpfulness", "prompt": "judge_score_anchored", "max_reason_chars": 60},
    # one question per call, yes (10) or no (1): does the answer respond to this message, whole?
    "question-responds": {"prompt": "judge_score_question", "max_reason_chars": 100,
                          "rubric": "Is the user's message a sensible request, and does the assistant's answer "
                                    "respond to exactly that request, completely, in the same language?"},
    # the correctness rubric, a reason first
    "correctness-reason160": {"rubric": "correctness", "max_reason_chars": 160},
}


def pool(rows: int):
    df, _ = read_records(default_cache_dir() / "data" / "sharegpt.jsonl")
    kept, _ = heuristics(df.head(rows), HeuristicsOptions(), StepContext())
    return kept


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--judge", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--calibration-rows", type=int, default=8)
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--port", type=int, default=8013)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    items = calibration.build(pool(a.rows), a.calibration_rows, seed=0)
    t0 = time.perf_counter()
    h = server.serve(a.judge, port=a.port, max_model_len=2048, owner="run")
    emit(dtype=h.dtype, figure="judge_server_start_s", value=round(time.perf_counter() - t0, 1), model=a.judge)
    try:
        session = TeacherSession(TeacherConfig(base_url=h.base_url, model=h.model, max_concurrency=a.concurrency,
                                               timeout_s=3600), None)
        for name in a.setups.split(","):
            opts = JudgeOptions(min_score=5, **SETUPS[name])
            t = time.perf_counter()
            scores = calibration_scores(session.run(calibration_requests(items, opts)))
            summary = calibration.summarise(items, scores, opts.min_score)
            emit(dtype=h.dtype, figure="judge_calibration", setup=name, model=a.judge, items=len(items),
                 seconds=round(time.perf_counter() - t, 1), passes_0_75=(summary["worst_auc"] or 0) >= 0.75,
                 **summary)
    finally:
        server.stop(a.port)


if __name__ == "__main__":
    main()

"""The IFEval pass of one model (the base student): minutes per model, and its scores.

    python bench/ifeval.py [--prompts 541] [--max-new-tokens 1024] [--generation merged] [--out DIR]

Answers IFEval's prompts (all 541, or a fixed random sample of --prompts, the one `benchmark_sample`
draws) with the plain student SmolLM2-135M-Instruct through evaluation.generation.answerer (greedy,
the project's dtype rule), then checks them with evaluation.ifeval. Timed: generation end to end
(server start or model load included), then the checking. One JSON line: minutes per model, the four
accuracies on every instruction and on those the cap leaves fair, the capped instruction types.
--out keeps answers.parquet and scores.parquet. No response cache: every run generates, unless
--answers DIR checks the answers a run saved there again (no generation, so no minutes). A second line
gives the failure rates of the answers (evaluation.failures: curation's own detectors).

The model card gives SmolLM2-135M-Instruct 29.9 on IFEval (lighteval: the average of prompt- and
instruction-level strict? see docs/quality_vs_quantity.md, "Instruments", for what was compared).
"""
from __future__ import annotations

import time
from pathlib import Path

import polars as pl
from figures import emit  # bench/ is on sys.path when a bench runs
from plain_student import STUDENT, plain_student, student_parser  # first: the repository on sys.path, the Hub offline

from evaluation.benchmark_eval import generate_all
from evaluation.failures import fault_table, summarise_failures
from evaluation.generation import BACKENDS, answerer
from evaluation.ifeval import load_ifeval, score_answers, summarise_ifeval
from training.model import load_tokenizer


def main() -> None:
    ap = student_parser(__doc__, batch_help="transformers: prompts per generate call")
    ap.add_argument("--prompts", type=int, default=541)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--generation", choices=BACKENDS, default="merged")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--answers", type=Path, default=None, help="a DIR an earlier --out wrote: check its answers")
    args = ap.parse_args()
    student = plain_student()
    questions = load_ifeval(sample=args.prompts)
    t0 = time.perf_counter()
    if args.answers:
        answers, dtype = pl.read_parquet(args.answers / "answers.parquet"), None
    else:
        with answerer(student, {"base": None}, backend=args.generation, compute_dtype=args.dtype,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, log=lambda m: None) as answer:
            answers = generate_all(questions, {"base": None}, answer, 1)
            dtype = answer.dtype
    generated = time.perf_counter()
    scores = score_answers(questions, answers, args.max_new_tokens)
    checked = time.perf_counter()
    s = summarise_ifeval(scores, {"base": ["base"]}, "base", max_new_tokens=args.max_new_tokens, resamples=1000)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        answers.write_parquet(args.out / "answers.parquet")
        scores.write_parquet(args.out / "scores.parquet")
    g = s["groups"]["base"]
    emit(dtype, figure="ifeval_base_student", model=STUDENT, generation=args.generation,
         prompts=questions.height, max_new_tokens=args.max_new_tokens,
         minutes_per_model=None if args.answers else round((generated - t0) / 60, 2), check_s=round(checked - generated, 2),
         **{f"{lv}_{sub}": round(100 * g[sub][lv]["mean"], 1) for sub in ("all", "fair") for lv in g[sub]},
         intervals={f"{lv}_{sub}": [round(100 * g[sub][lv]["low"], 1), round(100 * g[sub][lv]["high"], 1)]
                    for sub in ("all", "fair") for lv in g[sub]},
         capped=s["capped"], capped_prompts=s["capped_prompts"],
         # the model card's 29.9 is "IFEval (Average prompt/inst)": prompt- and instruction-level strict, averaged
         average_prompt_inst_strict=round(50 * (g["all"]["prompt_strict"]["mean"] + g["all"]["instruction_strict"]["mean"]),
                                          1),
         average_prompt_inst_loose=round(50 * (g["all"]["prompt_loose"]["mean"] + g["all"]["instruction_loose"]["mean"]),
                                         1))
    tok = load_tokenizer(student)
    table = fault_table(questions, answers, args.max_new_tokens,
                        lambda a: len(tok(a, add_special_tokens=False)["input_ids"]))
    f = summarise_failures(table, {"base": ["base"]}, "base", resamples=1000)["groups"]["base"]
    emit(dtype, figure="ifeval_base_student_failures", prompts=questions.height, max_new_tokens=args.max_new_tokens,
         **{k: {"percent": round(100 * v["rate"]["mean"], 1), "count": v["count"]} for k, v in f.items()
            if k != "models"})


if __name__ == "__main__":
    main()

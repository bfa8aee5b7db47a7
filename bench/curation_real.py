"""Curation steps on the real offline corpora: Debian fortunes and ShareGPT conversations.

    python bench/curation_real.py [--sharegpt-limit N]

Runs, in recipe order, exact_dedup -> minhash_dedup -> heuristics -> pii -> decontaminate (ShareGPT:
against its last 500 conversations, held out from the rest) and prints one JSON line per step:
rows in/kept/rejected, the step's stats, seconds, and a sample of rejections (reason + snippet).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.decontaminate import DecontaminateOptions, decontaminate  # noqa: E402
from curation.heuristics import HeuristicsOptions, heuristics  # noqa: E402
from curation.minhash import MinhashDedupOptions, minhash_dedup  # noqa: E402
from curation.pii import PiiOptions, pii  # noqa: E402
from curation.records import MESSAGES, make_id  # noqa: E402
from curation.step import StepContext  # noqa: E402




def sample(rejected: pl.DataFrame, k: int = 2) -> list[dict]:
    out = []
    for (reason,), group in rejected.group_by("reason", maintain_order=True):
        for row in group.head(k).iter_rows(named=True):
            extra = {c: row[c] for c in ("duplicate_of", "dup_jaccard") if c in row}
            out.append({"reason": reason, "text": row["text"][:160].replace("\n", " | "), **extra})
        if len(out) >= 12:
            break
    return out


def run_step(dataset: str, name: str, fn, opts, df: pl.DataFrame, ctx: StepContext) -> pl.DataFrame:
    t0 = time.perf_counter()
    kept, rejected = fn(df, opts, ctx)
    emit(dataset=dataset, step=name, rows_in=len(df), kept=len(kept), rejected=len(rejected),
         seconds=round(time.perf_counter() - t0, 2), stats=ctx.stats, sample=sample(rejected))
    return kept


def fortunes() -> pl.DataFrame:
    from curation.sources import iter_fortunes

    rows = [(make_id(name, i, t), t, name) for name, i, t in iter_fortunes()]
    return pl.DataFrame({"id": [r[0] for r in rows], "messages": [[] for _ in rows], "text": [r[1] for r in rows],
                         "source": [r[2] for r in rows]}, schema_overrides={"messages": MESSAGES})


def sharegpt(limit: int | None) -> pl.DataFrame:
    from curation.ingest import records_from_dicts
    from curation.sources import iter_sharegpt

    return records_from_dicts(list(iter_sharegpt(limit=limit)), source="sharegpt")


def pipeline(dataset: str, df: pl.DataFrame, eval_path: Path | None) -> None:
    try:
        from curation.exact_dedup import ExactDedupOptions, exact_dedup
        df = run_step(dataset, "exact_dedup", exact_dedup, ExactDedupOptions(), df, StepContext())
    except ImportError:
        pass
    df = run_step(dataset, "minhash_dedup", minhash_dedup, MinhashDedupOptions(ngram=3 if dataset == "fortunes" else 5),
                  df, StepContext())
    df = run_step(dataset, "heuristics", heuristics, HeuristicsOptions(), df, StepContext())
    df = run_step(dataset, "pii", pii, PiiOptions(action="redact"), df, StepContext())
    if eval_path is not None:
        run_step(dataset, "decontaminate", decontaminate, DecontaminateOptions(against=str(eval_path)), df, StepContext())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sharegpt-limit", type=int, default=None)
    args = ap.parse_args()
    pipeline("fortunes", fortunes(), None)
    conv = sharegpt(args.sharegpt_limit)
    held_out, train = conv.tail(500), conv.head(len(conv) - 500)
    with tempfile.TemporaryDirectory() as tmp:
        eval_path = Path(tmp) / "heldout.parquet"
        held_out.select("messages").write_parquet(eval_path)
        emit(dataset="sharegpt", rows=len(conv), train=len(train), held_out=len(held_out))
        pipeline("sharegpt", train, eval_path)


if __name__ == "__main__":
    main()

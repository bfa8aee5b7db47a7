"""Canonical records from a file evaluation reads (a held-out set, a reference set, an arm's data).

Also the names of the files an evaluation writes. Light on purpose: it imports curation only, so the held-out loader (evaluation.scoring), the reference
sets (evaluation.reference) and the arms (evaluation.arms) share it without importing each other.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from curation.ingest import read_records

# What an evaluation writes in the folder it is handed (a run folder: pond.layout names them from here).
EVAL = "eval.json"
REPORT = "report.md"
SCORES = "eval"  # the per-row scores' folder
EVAL_DONE = "eval.DONE"
ADAPTER_CONFIG = "adapter_config.json"  # peft's: a folder holding it is an adapter


def read_any(path: Path) -> pl.DataFrame:
    """Canonical records from a file: pond's own parquet as is (ids kept), anything else via ingest."""
    if path.suffix == ".parquet":
        df = pl.read_parquet(path)
        if {"id", "messages", "text"} <= set(df.columns):
            return df
    df, _rejected = read_records(str(path))
    return df

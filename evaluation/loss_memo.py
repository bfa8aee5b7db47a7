"""Per-row losses of one model on one set of rows, computed once per run.

`pond run` evaluates its adapter (the base model and the adapter, on the held-out rows and on the reference
answers), and then its experiment scores the base model and every arm on the same rows. The base model, and an
arm whose training is the run's own (training.trainer's `same_as`), are the same models on the same rows: their
losses are kept in the run's `eval/losses/`, keyed by everything that decides them (the student, the adapter's
content, method, dtype, the rows' content, the length cut and the batch size), and read back, not computed again.
"""
from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from curation import store
from evaluation.files import SCORES
from evaluation.generation import adapter_fingerprint
from evaluation.metrics import load_for_eval, row_losses

FOLDER = "losses"


def memo_dir(run_dir: Path | None) -> Path | None:
    """Where a run keeps its models' losses (None: nowhere, each is computed)."""
    return None if run_dir is None else Path(run_dir) / SCORES / FOLDER


def losses(model_path: str | Path, method: str, compute_dtype: str, rows: pl.DataFrame, max_seq_len: int,
           batch_size: int, *, adapter_dir: Path | None = None, cache_dir: Path | None = None,
           progress: Callable | None = None, memo: Path | None = None, loaded: tuple | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """(summed answer-token NLL, answer tokens) per row of `rows` (metrics.row_losses), from `memo` when this model
    scored these rows before. `loaded`: the (model, tokenizer) already in memory, used and left loaded."""
    if rows.height == 0:  # nothing to score: no model is loaded
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    path = None
    if memo is not None:
        key = {"student": str(model_path), "adapter": adapter_dir and adapter_fingerprint(Path(adapter_dir)),
               "method": method, "compute_dtype": compute_dtype, "rows": store.frame_hash(rows),
               "max_seq_len": max_seq_len, "batch_size": batch_size}
        path = Path(memo) / f"{store.key_of(key)}.parquet"
        if path.is_file():
            done = pl.read_parquet(path)
            return done["nll"].to_numpy(), done["tokens"].to_numpy()
    model, tok = loaded or load_for_eval(model_path, method, compute_dtype, adapter_dir=adapter_dir,
                                         cache_dir=cache_dir)
    try:
        nll, tokens = row_losses(model, tok, rows.select("messages"), max_seq_len, batch_size, progress)
    finally:
        if loaded is None:
            del model
            gc.collect()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        store.write_parquet(pl.DataFrame({"nll": nll, "tokens": tokens}), path)
    return nll, tokens

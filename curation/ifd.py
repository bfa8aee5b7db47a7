"""IFD, Instruction-Following Difficulty (Li et al. 2024, "From Quantity to Quality"; Superfiltering,
Li et al. 2024, which shows that a GPT-2-sized scorer ranks rows about as well as a 7B one):

    ifd = loss(answer | prompt) / loss(answer alone)

each a mean token cross-entropy over the answer's tokens under a small causal LM (default: the
student). IFD at or above 1 means the prompt does not help predict the answer: a misaligned or
generic pair (`max_ifd: 1` rejects those). Below 1, a higher IFD is an answer the prompt explains
less easily: the paper keeps the highest-IFD rows below 1. `answer_ppl` = exp(loss(answer | prompt)).

Which turn is scored: the LAST assistant turn (with non-blank content). Its prompt is every
earlier turn (system, user and assistant alike) rendered with the model's chat template up to and
including the assistant header; "answer alone" is that turn after the template's assistant header
only (no system prompt, no earlier turns), so the ratio measures what the conversation adds, not
the template. Why the last turn: IFD is defined for one (instruction, answer) pair, and the last
answer is the one whose instruction is the whole row; earlier assistant turns are context for it.
Scoring every turn would need an aggregate the paper does not define.
Where the answer's tokens are is `curation.chat` (the rule training's loss mask uses): the turn's
content and its end-of-turn token, so the model is also scored on stopping.

Truncation keeps the start, as training does: prompt + answer are cut to `max_seq_len` tokens and
both losses are taken over the same surviving answer tokens. A row with no assistant answer, or
whose prompt fills `max_seq_len` so no answer token survives, is rejected as `ifd_unscorable`
with the cause, never written as NaN.

Cache: `<cache_dir>/ifd/<model>-<fingerprint>-<dtype>-<max_seq_len>-t2.sqlite` (the embedding cache's
store and model fingerprint, curation.embed), keyed by a hash of the scored turns' roles and
contents; it holds float64 (loss given the prompt, loss alone, answer tokens scored). A rerun, or
another recipe over the same rows, loads no model and runs no forward pass.

Forward passes: both sequences of every row in a chunk (with and without the prompt) are sorted by
length and cut into batches that pad little (`batches`); a batch is right-padded and runs without an
attention mask (causal attention never looks ahead, so padding changes no real token), and the output
layer runs only at the positions before answer tokens, never over the prompt or the vocabulary of every
position. On a CPU the passes themselves are most of the time: the matmuls of every token's layers and
the attention of long rows, which batching cannot shrink (bench/ifd.py measures it against a plain loop).

torch and transformers are imported only when rows are scored.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from curation.chat import last_assistant, split_last_turn
from curation.embed import EmbeddingCache, fingerprint, machine_threads, text_hashes
from curation.settings import default_device, no_progress, pick_dtype, quiet_model_loading, resolve_model
from curation.step import StepContext, StepOptions, split

STAGE = "ifd"
DEFAULT_MODEL = "smollm2-135m-instruct"
NO_ANSWER = "ifd_unscorable: no assistant answer"
TRUNCATED = "ifd_unscorable: no answer tokens after truncation to max_seq_len"
BAD_LOSS = "ifd_unscorable: zero or non-finite loss on the answer alone"
ABOVE_MAX = "ifd_above_max"
ROWS_PER_CHUNK = 128  # rows tokenised, scored and cached at a time (one progress step; a killed run keeps them)
PASS_TOKENS = 32  # a forward pass's own cost (weights read, ~750 kernels), in tokens: measured ~25-30 on this CPU
# Work actually done in this process (tests assert that a rerun adds nothing).
counters = {"rows_scored": 0, "forward_passes": 0, "model_loads": 0}


class IfdOptions(StepOptions):
    model: str | None = Field(
        None, description="scorer: a local Hugging Face causal-LM folder or a model name under "
                          "$POND_CACHE_DIR/models/; default: the student (smollm2-135m-instruct)")
    max_ifd: float | None = Field(
        None, gt=0, description="reject rows with ifd >= this as `ifd_above_max` (1.0: the prompt does not help "
                                "predict the answer); null keeps every scorable row")
    max_seq_len: int = Field(
        1024, ge=8, description="tokens of prompt + answer read (the start is kept, as in training); the last "
                                "assistant turn is scored, every earlier turn is its prompt")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass at most (two per row: with and without "
                                                 "the prompt; batches are sorted by length)")
    batch_tokens: int = Field(4096, ge=1, description="padded tokens per forward pass at most (bounds memory: long "
                                                      "sequences go in smaller batches)")
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="scorer dtype: auto = bf16 on CUDA or on a CPU with native bf16, else fp32")
    threads: int | None = Field(None, ge=1, description="torch threads; default: the CPUs this process may use")
    device: str | None = Field(None, description="torch device; default: cuda when available, else cpu")
    cache: bool = Field(True, description="read and write the on-disk score cache")

    def score_columns(self) -> list[str]:
        """The columns its scores go to (the report draws their histograms)."""
        return ["ifd", "answer_ppl"]


def check_causal_lm(path: Path) -> None:
    """One clear line when `path` cannot be a causal-LM scorer (read from config.json, no weights loaded)."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"ifd: {path} is not a Hugging Face model folder (no config.json)")
    cfg = json.loads(cfg_file.read_text())
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as causal

    archs = cfg.get("architectures") or []
    ok = any(a in set(causal.values()) for a in archs) if archs else cfg.get("model_type") in causal
    if not ok:
        named = f"architectures {archs}" if archs else f"model_type {cfg.get('model_type')!r}"
        raise ValueError(f"ifd: {path} is not a causal language model (its config.json names {named}); "
                         f"point `model:` at a causal-LM folder such as the student")


def scored_turns(messages: Sequence[dict] | None) -> list[dict] | None:
    """The turns IFD reads: up to and including the last assistant answer; None without one."""
    i = last_assistant(messages)
    return None if i is None else [{"role": m["role"], "content": m["content"]} for m in messages[: i + 1]]


def turns_hash(turns: list[dict]) -> bytes:
    return text_hashes([json.dumps(turns, ensure_ascii=False, separators=(",", ":"))])[0]


@functools.lru_cache(maxsize=2)
def _load_model(path: str, device: str, dtype: str):
    """(model, output_head(model)), once per process."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_model_loading()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32, local_files_only=True)
    model.to(device).eval()
    counters["model_loads"] += 1
    return model, output_head(model)


def output_head(model):
    """The model's output layer where its logits are exactly that layer applied to the base model's last
    hidden state (Llama, GPT-2, ...), checked on a few tokens; None for a model that does more (soft-caps or
    scales its logits): that one computes every position's logits through its own forward."""
    import torch

    head = model.get_output_embeddings()
    if head is None or model.base_model is model:
        return None
    with torch.inference_mode():
        ids = torch.arange(1, 9, device=model.device)[None]
        want = model(input_ids=ids, use_cache=False).logits.float()
        got = head(model.base_model(input_ids=ids, use_cache=False).last_hidden_state).float()
    return head if torch.allclose(got, want, rtol=1e-4, atol=1e-4) else None


@functools.lru_cache(maxsize=2)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def batches(lengths: Sequence[int], batch_size: int, batch_tokens: int) -> list[list[int]]:
    """Indices longest first, cut into runs of at most `batch_size` sequences and `batch_tokens` padded
    tokens (a sequence longer than the budget goes alone) so that padded tokens plus PASS_TOKENS per
    forward pass are fewest: a short sequence is not padded to a long one's length just because the
    budget has room for it (dynamic programming over the sorted lengths; at most 256 per chunk)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    cost, cut = [0.0] * (n + 1), [n] * (n + 1)  # cost[i]: cheapest batching of order[i:], first batch order[i:cut[i]]
    for i in range(n - 1, -1, -1):
        cost[i] = math.inf
        width = lengths[order[i]]  # the batch's padded length: its first (longest) sequence
        for j in range(i + 1, min(n, i + batch_size) + 1):
            if j > i + 1 and (j - i) * width > batch_tokens:
                break
            c = cost[j] + (j - i) * width + PASS_TOKENS
            if c < cost[i]:
                cost[i], cut[i] = c, j
    out, i = [], 0
    while i < n:
        out.append(order[i:cut[i]])
        i = cut[i]
    return out


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for the block (once for a whole scoring run), then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Scorer:
    """A resolved scorer setting: its cache key at once; tokenizer and model when first needed."""

    def __init__(self, opts: IfdOptions, cache_dir: Path | None):
        self.opts = opts
        self.path = resolve_model(opts.model or DEFAULT_MODEL, cache_dir, "model")
        check_causal_lm(self.path)
        self.device = opts.device or default_device()
        self.dtype = pick_dtype(opts.dtype, self.device)
        # "t2": rows whose prompt overflowed max_seq_len were scored before the truncation fix; not reused
        self.key = f"{self.path.name}-{fingerprint(self.path)}-{self.dtype}-{opts.max_seq_len}-t2"
        self._tok = None
        self.load_seconds = 0.0

    @property
    def model(self):
        """(model, head): see _load_model."""
        t = time.perf_counter()
        loaded = _load_model(str(self.path), self.device, self.dtype)
        self.load_seconds += time.perf_counter() - t  # ~0 once loaded (lru_cache)
        return loaded

    @property
    def tokenizer(self):
        if self._tok is None:
            tok = _load_tokenizer(str(self.path))
            if getattr(tok, "chat_template", None) is None:
                raise ValueError(f"ifd: {self.path}: the tokenizer has no chat template; conversations need one "
                                 f"(add chat_template.jinja to the model folder)")
            self._tok = tok
        return self._tok

    def encode(self, turns: list[dict]) -> tuple[tuple[list[int], int], tuple[list[int], int]] | None:
        """((ids with prompt, first answer position), (ids alone, first answer position)); None when no
        answer token survives truncation."""
        tok = self.tokenizer
        parts = split_last_turn(tok, turns)
        if parts is None:
            return None
        prompt, header, answer = (tok(t, add_special_tokens=False)["input_ids"] for t in parts)
        start = [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
        prompt, header = prompt or start, header or start  # the first answer token needs a position before it
        answer = answer[: max(0, self.opts.max_seq_len - len(prompt))]  # a prompt past the limit leaves none
        if not answer:
            return None
        return (prompt + answer, len(prompt)), (header + answer, len(header))

    def losses(self, items: Sequence[tuple[list[int], int]]) -> np.ndarray:
        """Mean cross-entropy over positions start.. of each (ids, start), in batches of similar length."""
        import torch

        out = np.empty(len(items), dtype=np.float64)
        with torch.inference_mode():
            for idx in batches([len(x[0]) for x in items], self.opts.batch_size, self.opts.batch_tokens):
                out[idx] = self.batch_losses([items[i] for i in idx])
                counters["forward_passes"] += len(idx)
        return out

    def batch_losses(self, batch: Sequence[tuple[list[int], int]]) -> list[float]:
        """One forward pass over `batch` (longest first), right-padded and without an attention mask: causal
        attention never looks ahead, so a real token never sees the padding after it, and the mask-free causal
        kernel runs. Logits are taken only where the loss reads them: the positions before answer tokens."""
        import torch

        from curation.head_nll import token_nll  # imports torch: only once rows are scored

        model, head = self.model
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(batch), len(batch[0][0])), pad, dtype=torch.long)
        for r, (seq, _) in enumerate(batch):
            ids[r, :len(seq)] = torch.tensor(seq)
        rows = torch.cat([torch.full((len(seq) - first,), r) for r, (seq, first) in enumerate(batch)])
        cols = torch.cat([torch.arange(first - 1, len(seq) - 1) for seq, first in batch])
        ids, rows, cols = ids.to(self.device), rows.to(self.device), cols.to(self.device)
        if head is None:
            states, head = model(input_ids=ids, use_cache=False).logits[rows, cols], torch.nn.Identity()
        else:
            states = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[rows, cols]
        targets = ids[rows, cols + 1]
        nll = token_nll(head, states, targets)
        return [float(part.double().mean()) for part in nll.split([len(seq) - first for seq, first in batch])]


def score_rows(messages: Sequence[Sequence[dict] | None], opts: IfdOptions, cache_dir: Path | None,
               track: Callable[..., Iterator[Any]] = no_progress, stats: dict | None = None) -> np.ndarray:
    """Per row: (loss given the prompt, loss alone, answer tokens scored); NaN losses and -1 tokens for
    a row without an answer, 0 tokens where none survived truncation. Identical rows are scored once."""
    scorer = Scorer(opts, cache_dir)
    turns = [scored_turns(m) for m in messages]
    hashes = [None if t is None else turns_hash(t) for t in turns]
    first: dict[bytes, int] = {}
    for i, h in enumerate(hashes):
        if h is not None:
            first.setdefault(h, i)
    unique = list(first)
    cache = EmbeddingCache(cache_dir / "ifd", scorer.key, dtype=np.float64) if (opts.cache and cache_dir) else None
    values: dict[bytes, np.ndarray] = cache.get(unique) if cache else {}
    from_cache = len(values)
    missing = [h for h in unique if h not in values]
    t0 = time.perf_counter()
    chunks = range(0, len(missing), ROWS_PER_CHUNK)
    with torch_threads(opts.threads or machine_threads()) if missing else contextlib.nullcontext():
        for s in track(chunks, "ifd", total=len(chunks)):
            part = missing[s:s + ROWS_PER_CHUNK]
            encoded = [scorer.encode(turns[first[h]]) for h in part]
            items = [seq for e in encoded if e is not None for seq in e]
            losses = iter(scorer.losses(items).reshape(-1, 2)) if items else iter(())
            got = np.array([[*next(losses), len(e[0][0]) - e[0][1]] if e is not None else [math.nan, math.nan, 0]
                            for e in encoded], dtype=np.float64)
            counters["rows_scored"] += len(items) // 2
            if cache:
                cache.put(part, got)
            values.update(zip(part, got))
    if cache:
        cache.close()
    out = np.array([values[h] if h is not None else [math.nan, math.nan, -1] for h in hashes],
                   dtype=np.float64).reshape(len(hashes), 3)
    if stats is not None:
        seconds = time.perf_counter() - t0 - scorer.load_seconds
        stats.update({"model": scorer.key, "unique_rows": len(unique), "from_cache": from_cache,
                      "computed": len(missing), "model_load_seconds": round(scorer.load_seconds, 3),
                      "score_seconds": round(seconds, 3),
                      "rows_per_second": round(len(missing) / seconds, 2) if missing and seconds > 0 else None})
    return out


def distribution(values: np.ndarray) -> dict[str, float | int]:
    """count, mean, p5..p95, min, max of the finite values (what stats.json and the report show)."""
    v = values[np.isfinite(values)]
    if not len(v):
        return {"count": 0}
    q = np.percentile(v, [5, 25, 50, 75, 95])
    return {"count": int(len(v)), "mean": round(float(v.mean()), 6),
            **{f"p{p}": round(float(x), 6) for p, x in zip((5, 25, 50, 75, 95), q)},
            "min": round(float(v.min()), 6), "max": round(float(v.max()), 6)}


def ifd(df: pl.DataFrame, opts: IfdOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Columns `ifd` and `answer_ppl` (Float64); unscorable rows rejected with the cause; with `max_ifd`,
    rows at or above it rejected as `ifd_above_max`."""
    messages = df["messages"].to_list() if "messages" in df.columns else [None] * len(df)
    figures: dict[str, Any] = {}
    v = score_rows(messages, opts, ctx.cache_dir, ctx.track, figures) if len(df) else np.zeros((0, 3))
    cond, alone, tokens = v[:, 0], v[:, 1], v[:, 2]
    ok = (tokens > 0) & np.isfinite(cond) & np.isfinite(alone) & (alone > 0)
    reason = np.where(tokens < 0, NO_ANSWER, np.where(tokens == 0, TRUNCATED, BAD_LOSS))
    with np.errstate(divide="ignore", invalid="ignore"):
        score, ppl = np.where(ok, cond / alone, np.nan), np.where(ok, np.exp(cond), np.nan)
    marked = df.with_columns(
        pl.Series("ifd", score, dtype=pl.Float64).fill_nan(None),
        pl.Series("answer_ppl", ppl, dtype=pl.Float64).fill_nan(None),
        pl.Series("__unscorable", [None if good else r for good, r in zip(ok, reason.tolist())], dtype=pl.Utf8),
    )
    keep = pl.col("__unscorable").is_null()
    if opts.max_ifd is not None:
        keep = keep & (pl.col("ifd") < opts.max_ifd)
    kept, rejected = split(marked, keep, STAGE, pl.col("__unscorable").fill_null(ABOVE_MAX))
    kept, rejected = kept.drop("__unscorable"), rejected.drop("__unscorable")
    ctx.stats.update({
        "rows": len(df), "scored": int(ok.sum()), **figures,
        "unscorable": {str(r): int(n) for r, n in zip(*np.unique(reason[~ok], return_counts=True))},
        "max_ifd": opts.max_ifd, "above_max_ifd": int((rejected["reason"] == ABOVE_MAX).sum()),
        "ifd": distribution(score), "answer_ppl": distribution(ppl),
    })
    return kept, rejected


def estimate_compute(df: pl.DataFrame, opts: IfdOptions, cache_dir: Path | None) -> dict[str, int]:
    """What a run would compute, without loading a model: rows to score, forward passes, rows cached."""
    scorer = Scorer(opts, cache_dir)
    messages = df["messages"].to_list() if "messages" in df.columns else [None] * len(df)
    turns = [t for t in map(scored_turns, messages) if t is not None]
    unique = list(dict.fromkeys(map(turns_hash, turns)))
    cached = 0
    if opts.cache and cache_dir and (cache_dir / "ifd" / f"{scorer.key}.sqlite").is_file():  # an estimate creates nothing
        cache = EmbeddingCache(cache_dir / "ifd", scorer.key, dtype=np.float64)
        cached = len(cache.get(unique))
        cache.close()
    to_score = len(unique) - cached
    return {"rows": len(df), "with_answer": len(turns), "unique": len(unique), "cached": cached,
            "to_score": to_score, "forward_passes": 2 * to_score, "model": scorer.key, "max_seq_len": opts.max_seq_len}

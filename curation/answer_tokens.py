"""Answer tokens: the tokens of a row that training puts in the loss, counted as training counts them.

`select`'s `budget_tokens` (curation.mixing) and the experiment's `equal_tokens` budget
(evaluation.arms.profile) count the same thing, with the student's tokenizer and the training
truncation:

- a conversation is rendered with the tokenizer's chat template and tokenised whole; its answer
  tokens are those inside the assistant spans of `curation.chat.assistant_spans` (each turn's content
  and its end-of-turn token), the rule training's loss mask uses;
- a plain-text row (no messages) is a language-modelling target: its text and the end-of-sequence
  token, every token in the loss;
- the sequence is cut to `max_seq_len` tokens keeping its start, and its first token is never counted:
  no position predicts it (training shifts its labels by one, and `profile` counts `labels[1:]`).

Curation is the bottom layer and cannot import `training.data`, so this counts beside it rather than
through it; tests/test_mixing.py holds the two equal on real rows, for fast and slow tokenizers.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import polars as pl

from curation.chat import assistant_spans
from curation.errors import ConfigError
from curation.settings import no_progress

# training.config.TrainConfig's defaults (a test holds them equal): the student whose tokenizer
# counts, and the truncation training applies, when a recipe names neither.
STUDENT = "smollm2-135m-instruct"
TRAIN_MAX_SEQ_LEN = 256
ROWS_PER_CHUNK = 256  # rows counted per progress step


@functools.lru_cache(maxsize=2)
def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _answer_positions(starts: np.ndarray, spans: Sequence[tuple[int, int]]) -> int:
    """How many tokens, by their first character, fall inside a span (spans sorted, not overlapping):
    the token belongs to the first span that ends after it starts, if that span has begun."""
    if not spans or not len(starts):
        return 0
    begins, ends = np.array(spans, dtype=np.int64).T
    k = np.searchsorted(ends, starts, side="right")
    inside = k < len(spans)
    return int((begins[k[inside]] <= starts[inside]).sum())


def _chat_fast(tokenizer, text: str, spans: list[tuple[int, int]], max_seq_len: int) -> int:
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = np.array([s for s, _e in offsets[1:max_seq_len]], dtype=np.int64)
    return _answer_positions(starts, spans)


def _chat_slow(tokenizer, text: str, spans: list[tuple[int, int]], max_seq_len: int) -> int:
    # A tokenizer without offsets: training encodes the text piece by piece (before a span, the span),
    # so the count follows the same pieces; text after the last span holds no answer token.
    count, position, cursor = 0, 0, 0
    for begin, end in spans:
        position += len(tokenizer(text[cursor:begin], add_special_tokens=False)["input_ids"]) if begin > cursor else 0
        size = len(tokenizer(text[begin:end], add_special_tokens=False)["input_ids"])
        count += max(0, min(position + size, max_seq_len) - max(position, 1))
        position, cursor = position + size, end
    return count


def _plain_text(tokenizer, text: str, max_seq_len: int) -> int:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    length = len(ids) + (eos is not None and (not ids or ids[-1] != eos))
    return max(0, min(length, max_seq_len) - 1)


def row_answer_tokens(tokenizer, messages: Sequence[dict] | None, text: str | None, max_seq_len: int) -> int:
    """Answer tokens of one row (rows with messages are conversations, as in training)."""
    if messages:
        full, spans = assistant_spans(tokenizer, messages)
        count = _chat_fast if getattr(tokenizer, "is_fast", False) else _chat_slow
        return count(tokenizer, full, spans, max_seq_len)
    return _plain_text(tokenizer, text, max_seq_len) if text else 0


def answer_tokens(df: pl.DataFrame, tokenizer, max_seq_len: int, track=no_progress) -> np.ndarray:
    """Answer tokens of every row, in order (int64)."""
    messages = df["messages"].to_list() if "messages" in df.columns else [None] * df.height
    if any(messages) and getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("the counting tokenizer has no chat template; conversations need one "
                          "(add chat_template.jinja to the model folder)")
    texts = df["text"].to_list() if "text" in df.columns else [None] * df.height
    out = np.zeros(df.height, dtype=np.int64)
    chunks = range(0, df.height, ROWS_PER_CHUNK)
    for start in track(chunks, "answer tokens", total=len(chunks)):
        for i in range(start, min(start + ROWS_PER_CHUNK, df.height)):
            out[i] = row_answer_tokens(tokenizer, messages[i], texts[i], max_seq_len)
    return out

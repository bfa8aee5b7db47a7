"""Records -> token ids and labels, with the loss on assistant tokens only: the one rule training
trains by and everything that counts answer tokens counts by (`select`'s `budget_tokens`,
curation.mixing; the experiment's `equal_tokens` budget, evaluation.arms.profile; evaluation's losses).

Conversations (`messages` non-empty) are rendered with the student's own chat template; the
labels are the token ids inside assistant turns (their content and the end-of-turn token that
follows it, so the model learns to stop) and -100 everywhere else. Where those turns are is
`curation.chat.assistant_spans`, the rule the `ifd` scorer shares.

Plain-text rows (`messages` empty) are a plain language-modelling target: the `text` followed by
the end-of-sequence token, every token in the loss, no chat template.

Sequences longer than `max_seq_len` keep their start. A row's answer tokens are its labels after the
first position that are not -100: no position predicts the first token (training shifts its labels
by one).

It sits in curation, the bottom layer, so that `select` counts with the very rule training uses
(training.data hands it on to training).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import polars as pl

from curation.chat import assistant_spans
from curation.errors import ConfigError
from curation.settings import no_progress

IGNORE = -100
ROWS_PER_CHUNK = 256  # rows counted per progress step


@functools.lru_cache(maxsize=2)
def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _encode_chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    text, spans = assistant_spans(tokenizer, messages)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [IGNORE] * len(ids)
        k = 0
        for j, (s, _e) in enumerate(enc["offset_mapping"]):
            while k < len(spans) and s >= spans[k][1]:
                k += 1
            if k < len(spans) and spans[k][0] <= s < spans[k][1]:
                labels[j] = ids[j]
        return ids, labels
    # Slow tokenizers have no offsets: encode the pieces one by one.
    ids, labels, pos = [], [], 0
    for s, e in [*spans, (len(text), len(text))]:
        for a, b, train in ((pos, s, False), (s, e, True)):
            if b > a:
                piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
                ids += piece
                labels += piece if train else [IGNORE] * len(piece)
        pos = e
    return ids, labels


def _encode_text(tokenizer, text: str) -> tuple[list[int], list[int]]:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids, list(ids)


def encode_row(tokenizer, messages: Sequence[dict] | None, text: str | None) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one row, untruncated (rows with messages are conversations)."""
    if messages:
        return _encode_chat(tokenizer, list(messages))
    return _encode_text(tokenizer, text) if text else ([], [])


def _check_template(df: pl.DataFrame, tokenizer) -> None:
    if ("messages" in df.columns and getattr(tokenizer, "chat_template", None) is None
            and df["messages"].list.len().max()):
        raise ConfigError("the student's tokenizer has no chat template; conversations need one "
                          "(add chat_template.jinja to the model folder)")


def _columns(df: pl.DataFrame) -> tuple[list, list]:
    messages = df["messages"].to_list() if "messages" in df.columns else [None] * df.height
    texts = df["text"].to_list() if "text" in df.columns else [None] * df.height
    return messages, texts


def tokenize_conversations(df: pl.DataFrame, tokenizer, max_seq_len: int) -> list[dict]:
    """One dict per row, in order: `input_ids`, `labels` (-100 outside assistant tokens), `length`
    (the untruncated token count). Rows without any assistant token have all labels -100."""
    _check_template(df, tokenizer)
    out = []
    for messages, text in zip(*_columns(df), strict=True):
        ids, labels = encode_row(tokenizer, messages, text)
        out.append({"input_ids": ids[:max_seq_len], "labels": labels[:max_seq_len], "length": len(ids)})
    return out


def row_answer_tokens(labels: Sequence[int], max_seq_len: int) -> int:
    """Answer tokens of one row's labels after the `max_seq_len` cut."""
    return sum(1 for t in labels[1:max_seq_len] if t != IGNORE)


def answer_tokens(df: pl.DataFrame, tokenizer, max_seq_len: int, track=no_progress) -> np.ndarray:
    """Answer tokens of every row, in order (int64)."""
    _check_template(df, tokenizer)
    messages, texts = _columns(df)
    out = np.zeros(df.height, dtype=np.int64)
    chunks = range(0, df.height, ROWS_PER_CHUNK)
    for start in track(chunks, "answer tokens", total=len(chunks)):
        for i in range(start, min(start + ROWS_PER_CHUNK, df.height)):
            out[i] = row_answer_tokens(encode_row(tokenizer, messages[i], texts[i])[1], max_seq_len)
    return out

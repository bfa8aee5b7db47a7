"""Records -> token ids and labels, with the loss on assistant tokens only.

Conversations (`messages` non-empty) are rendered with the student's own chat template; the
labels are the token ids inside assistant turns (their content and the end-of-turn token that
follows it, so the model learns to stop) and -100 everywhere else. Where those turns are is
`curation.chat.assistant_spans`, the one rule the `ifd` scorer shares.

Plain-text rows (`messages` empty) are a plain language-modelling target: the `text` followed by
the end-of-sequence token, every token in the loss, no chat template.

Sequences longer than `max_seq_len` keep their start.
"""
from __future__ import annotations

import polars as pl

from curation.chat import assistant_spans
from curation.errors import ConfigError

IGNORE = -100


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


def tokenize_conversations(df: pl.DataFrame, tokenizer, max_seq_len: int) -> list[dict]:
    """One dict per row, in order: `input_ids`, `labels` (-100 outside assistant tokens), `length`
    (the untruncated token count). Rows without any assistant token have all labels -100."""
    has_messages = "messages" in df.columns
    if has_messages and getattr(tokenizer, "chat_template", None) is None and df["messages"].list.len().max():
        raise ConfigError("the student's tokenizer has no chat template; conversations need one "
                         "(add chat_template.jinja to the model folder)")
    out = []
    messages_col = df["messages"].to_list() if has_messages else [None] * df.height
    texts = df["text"].to_list() if "text" in df.columns else [""] * df.height
    for messages, text in zip(messages_col, texts, strict=True):
        if messages:
            ids, labels = _encode_chat(tokenizer, messages)
        elif text:
            ids, labels = _encode_text(tokenizer, text)
        else:
            ids, labels = [], []
        out.append({"input_ids": ids[:max_seq_len], "labels": labels[:max_seq_len], "length": len(ids)})
    return out

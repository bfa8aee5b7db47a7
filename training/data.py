"""Records -> token ids and labels, with the loss on assistant tokens only.

Conversations (`messages` non-empty) are rendered with the student's own chat template; the
labels are the token ids inside assistant turns (their content and the end-of-turn token that
follows it, so the model learns to stop) and -100 everywhere else. Templates such as SmolLM2's
have no `{% generation %}` markers, so assistant spans are found by rendering prefixes: the
conversation up to turn i with the generation prompt, and up to and including turn i; the
characters between them are the assistant's. Templates that re-render history (so a prefix is
not a prefix) fall back to locating the turn's content in the full rendering.

Plain-text rows (`messages` empty) are a plain language-modelling target: the `text` followed by
the end-of-sequence token, every token in the loss, no chat template.

Sequences longer than `max_seq_len` keep their start.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import polars as pl

log = logging.getLogger(__name__)

IGNORE = -100


def _render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _strip_end(text: str, start: int, end: int) -> int:
    # The template's newline after the end-of-turn token is layout, not something the model says.
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def assistant_spans(tokenizer, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = _render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    eos = tokenizer.eos_token or ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = end = -1
        try:
            before = _render(tokenizer, messages[:i], add_generation_prompt=True)
            upto = _render(tokenizer, messages[: i + 1])
            if upto.startswith(before) and full.startswith(upto) and len(before) >= cursor:
                start, end = len(before), len(upto)
        except Exception:  # some templates refuse a prefix (e.g. no user turn yet); use the fallback
            pass
        if start < 0:
            start = full.find(m["content"], cursor)
            if start < 0:
                log.warning("assistant turn %d not found in the rendered conversation; not in the loss", i)
                continue
            end = start + len(m["content"])
            if eos and full.startswith(eos, end):
                end += len(eos)
        end = _strip_end(full, start, end)
        if end > start:
            spans.append((start, end))
            cursor = end
    return full, spans


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
        raise ValueError("the student's tokenizer has no chat template; conversations need one "
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

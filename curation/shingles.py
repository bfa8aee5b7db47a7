"""Normalised word/char n-grams hashed to 64 bits, vectorised (shared by MinHash dedup and decontamination).

Normalisation (both the vectorised path and the pure-Python reference below):
- word: lowercase, every run of non-word characters (`\\W`, Unicode-aware) is a separator;
- char: lowercase, whitespace runs folded to one space, punctuation kept.

A text shorter than `ngram` tokens yields one shingle made of all its tokens; a text with no
tokens yields none. Shingle hashes are 64-bit, so two different shingles collide with
probability ~2^-64: Jaccard on these hashes is exact for every practical purpose.

Polars' string hash is stable within one polars version (not across versions); shingle hashes
are never stored, so that is enough for reproducible runs in one environment.
"""
from __future__ import annotations

import re
from typing import Literal

import numpy as np
import polars as pl

ShingleKind = Literal["word", "char"]

_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd constant for the polynomial n-gram combination


# Every whitespace run that is not already one space: what `\s+` -> " " changes, without matching (and
# rewriting) each single space of ordinary text, which costs ~3x more.
_UNFOLDED_WHITESPACE = r"\s{2,}|[^\S ]"


def fold_whitespace(text):
    """Each whitespace run as one space, ends stripped (a polars string Expr or Series)."""
    return text.str.replace_all(_UNFOLDED_WHITESPACE, " ").str.strip_chars()


def normalised_tokens(texts: pl.Series, kind: ShingleKind) -> pl.Series:
    """Each text as a list of normalised tokens (words or characters); nulls are empty."""
    lowered = texts.fill_null("").str.to_lowercase()
    if kind == "word":
        # two cheap passes instead of one `[^\w]+` pass: in ordinary text they only match at
        # punctuation and line breaks, while `[^\w]+` matches (and rewrites) every single space
        folded = lowered.str.replace_all(r"[^\w ]+", " ").str.replace_all(" {2,}", " ").str.strip_chars(" ")
        tokens = folded.str.split(" ")
    else:
        folded = fold_whitespace(lowered)
        tokens = folded.str.split("")
    # "" splits into [""] (word) or [] (char): make both empty lists
    return pl.select(pl.when(folded == "").then(pl.lit([], dtype=pl.List(pl.Utf8))).otherwise(tokens)).to_series()


# MurmurHash3's finalisers, one shape for both word sizes: (word type, the three shifts, the two multipliers)
_FMIX = {32: (np.uint32, (16, 13, 16), (0x85EBCA6B, 0xC2B2AE35)),
         64: (np.uint64, (33, 33, 33), (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53))}


def fmix(h: np.ndarray, bits: int) -> np.ndarray:
    """MurmurHash3's `bits`-bit finaliser (32 or 64), in place on an array of that word size: spreads
    every input bit over all the output bits."""
    word, (s1, s2, s3), (m1, m2) = _FMIX[bits]
    h ^= h >> word(s1)
    h *= word(m1)
    h ^= h >> word(s2)
    h *= word(m2)
    h ^= h >> word(s3)
    return h


def window_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash of every run of `n` consecutive token hashes (len(words) - n + 1 values).

    Windows crossing a text boundary are computed too; callers mask them out.
    """
    m = len(words) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        win = words[:m].copy()
        for k in range(1, n):  # contiguous slices only: no gathers
            win *= _MUL
            win += words[k:k + m]
    return win


def boundary_windows(starts: np.ndarray, lens: np.ndarray, n: int) -> np.ndarray:
    """Positions of the windows of `n` tokens that start in a text but end past it: a text's last n - 1
    positions (all of a shorter text's). O(texts × n), where a per-token mask would be O(tokens)."""
    last = np.concatenate([np.zeros(0, np.int64)] + [starts + lens - k for k in range(1, n)])
    return last[last >= np.tile(starts, n - 1)]


def shingle_hashes(texts: pl.Series, ngram: int, kind: ShingleKind = "word", seed: int = 0,
                   short_texts: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every text's n-grams in CSR layout: (hashes, offsets).

    Shingles of text i are `hashes[offsets[i]:offsets[i+1]]` (in text order, repeats kept).
    A text with fewer than `ngram` tokens has one shingle of all its tokens, or none when
    `short_texts` is False. One batch at a time: memory is proportional to the batch's tokens.
    """
    if ngram < 1:
        raise ValueError("ngram must be >= 1")
    tokens = normalised_tokens(texts, kind)
    lens = tokens.list.len().fill_null(0).to_numpy().astype(np.int64)
    words = tokens.explode().drop_nulls().hash(seed=seed).to_numpy().astype(np.uint64, copy=False)
    n_tok = len(words)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64) if len(lens) else np.zeros(0, np.int64)
    g = np.empty(n_tok, dtype=np.uint64)
    valid = np.zeros(n_tok, dtype=bool)
    with np.errstate(over="ignore"):
        # polynomial hash of every window of `ngram` consecutive tokens (contiguous slices, no gathers)
        m = n_tok - ngram + 1
        if m > 0:
            g[:m] = window_hashes(words, ngram)
            valid[:m] = True
            valid[boundary_windows(starts, lens, ngram)] = False
        # texts shorter than `ngram` tokens: one shingle of all their tokens
        short = np.flatnonzero((lens > 0) & (lens < ngram) & short_texts)
        if len(short):
            s0, ln = starts[short], lens[short]
            acc = words[s0].copy()
            for k in range(1, ngram - 1):
                inside = k < ln
                acc = np.where(inside, acc * _MUL + words[np.where(inside, s0 + k, s0)], acc)
            g[s0] = acc
            valid[s0] = True
        hashes = fmix(g[valid], 64)
    counts = np.where(lens >= ngram, lens - ngram + 1, np.minimum(lens, 1) if short_texts else 0)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return hashes, offsets


# --- pure-Python reference (tests, benchmarks): the same shingles as sets of strings -------------

def reference_tokens(text: str, kind: ShingleKind = "word") -> list[str]:
    text = (text or "").lower()
    if kind == "word":
        return [w for w in re.split(r"[^\w]+", text) if w]
    return list(re.sub(r"\s+", " ", text).strip())


def reference_shingles(text: str, ngram: int, kind: ShingleKind = "word") -> set[tuple[str, ...]]:
    toks = reference_tokens(text, kind)
    if not toks:
        return set()
    if len(toks) < ngram:
        return {tuple(toks)}
    return {tuple(toks[i:i + ngram]) for i in range(len(toks) - ngram + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)

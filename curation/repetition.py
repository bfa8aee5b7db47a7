"""Gopher's repetition statistics, vectorised over a batch of texts (numpy + polars).

Words are whitespace-separated tokens, lowercased. For each text:
- top_n (n = 2, 3, 4): share of the text's word characters inside the most frequent word n-gram
  (its count times its characters), counting only n-grams that occur at least twice;
- dup_n (n = 5 … 10): share of word characters covered by n-grams that already occurred earlier
  in the text (the repeats, not the first occurrence).
Rae et al. 2021 (Gopher), appendix A; thresholds live in curation.heuristics.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from curation.shingles import fold_whitespace, window_hashes

# Default limits (n -> largest fraction) of heuristics' n-gram rules and of answer_faults.degenerate_repetition.
TOP_NGRAM_LIMITS = {2: 0.2, 3: 0.18, 4: 0.16}  # Gopher's values
# Gopher: 0.15 ... 0.10, which rejects ~13% of ShareGPT answers with parallel list items; these reject ~3%
DUP_NGRAM_LIMITS = {5: 0.35, 6: 0.34, 7: 0.33, 8: 0.32, 9: 0.31, 10: 0.30}


def _words(texts: pl.Series) -> pl.Series:
    folded = fold_whitespace(texts.fill_null("").str.to_lowercase())
    return pl.select(pl.when(folded == "").then(pl.lit([], dtype=pl.List(pl.Utf8)))
                     .otherwise(folded.str.split(" "))).to_series()


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order sorting the keys, start of each run of equal keys in that order); within a run the
    order is ascending, so a run's first element is the key's first occurrence.

    Fast path: pack each key's high bits with its index into one uint64 and `np.sort` that (SIMD,
    several times faster than a stable argsort). That compares 64 - log2(n) bits only, so the
    rare runs whose keys share those bits and differ in the rest are then re-sorted on full keys.
    (Left merged, as an earlier version did, such collisions depended on which texts shared the
    batch: a row's verdict changed with its neighbours, and the ray executor's shards disagreed
    with the local pass on 7 of 143,854 rows.)
    """
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bits = max(1, int(n).bit_length())
    shift, mask = np.uint64(bits), np.uint64((1 << bits) - 1)
    packed = np.sort((keys & ~mask) | np.arange(n, dtype=np.uint64))
    order = (packed & mask).astype(np.int64)
    high = packed >> shift
    new_run = np.concatenate(([True], high[1:] != high[:-1]))
    # High-bit prefixes shared by different keys, found on the sorted keys alone (a plain sort is
    # cheap; gathering every key in packed order is not); only their runs are re-sorted.
    ordered = np.sort(keys)
    distinct = ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] >> shift
    for prefix in np.unique(distinct[1:][distinct[1:] == distinct[:-1]]):
        lo, hi = np.searchsorted(high, [prefix, prefix + np.uint64(1)])
        full = keys[order[lo:hi]]
        by_key = np.argsort(full, kind="stable")  # keeps index order within each key
        order[lo:hi], full = order[lo:hi][by_key], full[by_key]
        new_run[lo + 1:hi] = full[1:] != full[:-1]
    starts = np.flatnonzero(new_run)
    return order, starts


# Texts per pass: each text's figures need only its own words, and a pass holds ~a dozen arrays of one
# 8-byte entry per word of all its texts (50k ShareGPT answers: several GB), so passes are bounded.
CHUNK_TEXTS = 5_000


def repetition_stats(texts: pl.Series, top_ns: tuple[int, ...] = (2, 3, 4),
                     dup_ns: tuple[int, ...] = (5, 6, 7, 8, 9, 10)) -> pl.DataFrame:
    """One row per text: columns `top_{n}` and `dup_{n}` (fractions in [0, 1])."""
    if len(texts) > CHUNK_TEXTS:
        return pl.concat([_repetition_stats(texts.slice(s, CHUNK_TEXTS), top_ns, dup_ns)
                          for s in range(0, len(texts), CHUNK_TEXTS)])
    return _repetition_stats(texts, top_ns, dup_ns)


def _repetition_stats(texts: pl.Series, top_ns: tuple[int, ...], dup_ns: tuple[int, ...]) -> pl.DataFrame:
    words = _words(texts)
    lens = words.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls()
    n_docs, n_tok = len(lens), len(flat)
    wh = flat.hash(seed=0).to_numpy().astype(np.uint64, copy=False)
    wl = flat.str.len_chars().to_numpy().astype(np.int64)
    doc_of = np.repeat(np.arange(n_docs), lens)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64) if n_docs else np.zeros(0, np.int64)
    end_of = np.repeat(starts + lens, lens)
    cum = np.concatenate(([0], np.cumsum(wl)))
    total = np.bincount(doc_of, weights=wl, minlength=n_docs)
    out: dict[str, np.ndarray] = {}

    def windows(n: int, among: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Start positions of the n-grams inside one text (only those in `among`, if given), and keys
        unique per (text, n-gram)."""
        keys = window_hashes(wh, n)
        pos = np.arange(len(keys)) if among is None else among[among < len(keys)]
        pos = pos[pos + n <= end_of[pos]]
        with np.errstate(over="ignore"):  # fold the text number in: one u64 key, fast to group
            keys = keys[pos] ^ (doc_of[pos].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        return pos, keys

    # An n-gram is a prefix of every longer n-gram starting where it does, so an n-gram that occurs once
    # in its text starts only longer n-grams that occur once. Each n (ascending) therefore groups only
    # the positions whose previous n-gram occurs at least twice: these are few (repeats are rare), and
    # every other position is a single occurrence, which neither rule counts.
    repeated: np.ndarray | None = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for n in sorted(set(top_ns) | set(dup_ns)):
            pos, keys = windows(n, repeated)
            order, starts = _runs(keys)
            sizes = np.diff(np.append(starts, len(keys)))
            count = np.empty(len(keys), dtype=np.int64)
            count[order] = np.repeat(sizes, sizes)
            repeated = pos[count >= 2]
            if n in top_ns:
                doc, chars = doc_of[pos], cum[pos + n] - cum[pos]
                most = np.zeros(n_docs, dtype=np.int64)
                np.maximum.at(most, doc, count)
                # characters of the most frequent n-gram (ties: the longest), times its count
                top = (count == most[doc]) & (count >= 2)
                best = np.zeros(n_docs, dtype=np.int64)
                np.maximum.at(best, doc[top], chars[top])
                out[f"top_{n}"] = np.nan_to_num(best * most / total)
            if n in dup_ns:
                repeat = np.ones(len(keys), dtype=bool)
                repeat[order[starts]] = False  # first occurrences are not repeats
                cover = np.zeros(n_tok + 1, dtype=np.int64)
                np.add.at(cover, pos[repeat], 1)
                np.add.at(cover, pos[repeat] + n, -1)
                covered = np.cumsum(cover[:n_tok]) > 0  # windows never cross texts, so one cumsum serves all
                dup_chars = np.bincount(doc_of, weights=wl * covered, minlength=n_docs)
                out[f"dup_{n}"] = np.nan_to_num(dup_chars / total)
    cols = [f"top_{n}" for n in top_ns] + [f"dup_{n}" for n in dup_ns]
    return pl.DataFrame({k: out[k] for k in cols}, schema={k: pl.Float64 for k in cols})


def exceeds_limits(text: str, top: dict[int, float], dup: dict[int, float]) -> bool:
    """Does one text break any of the limits (n -> largest `top_n` / `dup_n` fraction)?"""
    stats = repetition_stats(pl.Series([text]), tuple(sorted(top)), tuple(sorted(dup))).row(0, named=True)
    return any(stats[f"top_{n}"] > t for n, t in top.items()) or any(stats[f"dup_{n}"] > t for n, t in dup.items())

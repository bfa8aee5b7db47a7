"""MinHash signatures, LSH banding parameters, band hashes and exact pair verification (numpy).

Signatures follow datasketch's `affine32` scheme (its default since 2.0) bit for bit: each
shingle's 32-bit hash goes through the MurmurHash3 finaliser, then permutation k is
`a_k * h + b_k mod 2^32` with (a, b) drawn exactly as `datasketch.MinHash(seed=…)` draws them.
Given the same 32-bit shingle hashes, our signature equals datasketch's; only the speed differs:
the per-permutation loop runs over a whole batch of documents at once and reduces per document
with `np.minimum.reduceat`, so Python overhead is per batch, not per shingle.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from curation.shingles import fmix

EMPTY = np.uint32(0xFFFFFFFF)  # signature value of a document without shingles


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint32 arrays, identical to `datasketch.MinHash(num_perm, seed).permutations`."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (datasketch pre-mixes every input hash with it), on a copy."""
    return fmix(h.astype(np.uint32, copy=True), 32)


def hash32(shingle_hashes64: np.ndarray) -> np.ndarray:
    """Fold 64-bit shingle hashes to the 32-bit values the signature scheme takes."""
    h = shingle_hashes64.astype(np.uint64, copy=False)
    return (h ^ (h >> np.uint64(32))).astype(np.uint32)


CHUNK = 1 << 17  # shingles hashed per pass of the permutation loop: 512 KiB of uint32, held in L2 cache


def signatures(hashes32: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signatures (n_docs × num_perm, uint32) of documents given in CSR layout.

    `hashes32[offsets[i]:offsets[i+1]]` are document i's 32-bit shingle hashes (repeats are
    harmless: min is idempotent). Documents without shingles get all-`EMPTY` rows.

    The shingles are taken `CHUNK` at a time through all permutations, so every pass reads cache, not
    memory (twice as fast as whole-batch passes); a document cut by a chunk's edge gets the min of its
    parts, which is the same min.
    """
    n_docs = len(offsets) - 1
    out = np.full((n_docs, len(a)), EMPTY, dtype=np.uint32)
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    if len(nonempty) == 0:
        return out
    x = fmix32(hashes32)
    starts = offsets[:-1][nonempty]  # strictly increasing: every non-empty doc starts one reduceat segment
    cols = np.full((len(a), len(nonempty)), EMPTY, dtype=np.uint32)
    buf = np.empty(min(CHUNK, len(x)), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for c0 in range(0, len(x), CHUNK):
            c1 = min(len(x), c0 + CHUNK)
            # the docs with shingles in [c0, c1): the one holding c0, then those starting before c1
            lo, hi = np.searchsorted(starts, c0, side="right") - 1, np.searchsorted(starts, c1)
            seg = starts[lo:hi] - c0
            seg[0] = 0
            xs, part = x[c0:c1], buf[:c1 - c0]
            for k in range(len(a)):
                np.multiply(xs, a[k], out=part)
                part += b[k]
                col = cols[k, lo:hi]
                np.minimum(col, np.minimum.reduceat(part, seg), out=col)
    out[nonempty] = cols.T
    return out


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band): documents sharing a key in a band are candidates."""
    n = sig.shape[0]
    out = np.empty((n, bands), dtype=np.uint64)
    mul = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(bands):
            h = np.full(n, np.uint64(0xCBF29CE484222325) + np.uint64(j), dtype=np.uint64)
            for v in sig[:, j * rows:(j + 1) * rows].T:
                h = (h ^ v.astype(np.uint64)) * mul
            h ^= h >> np.uint64(29)  # mix high bits down so the key is well spread
            out[:, j] = h
    return out


def _integral(f: np.ndarray, x: np.ndarray) -> float:
    return float(np.trapezoid(f, x))


@lru_cache(maxsize=64)
def optimal_bands(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                  false_negative_weight: float = 0.5, min_recall: float = 0.0) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive/negative areas of the S-curve.

    The objective of `datasketch.lsh._optimal_param`: a pair of Jaccard s becomes a candidate
    with probability 1 - (1 - s^r)^b; false positives integrate it below the threshold, false
    negatives integrate its complement above (here on a fine grid instead of `quad`).
    `min_recall` > 0 keeps only settings where a pair exactly at the threshold is a candidate
    with at least that probability: with exact verification after LSH a false positive costs
    only a comparison, while a false negative is a duplicate kept for good.
    """
    lo = np.linspace(0.0, threshold, 2001)
    hi = np.linspace(threshold, 1.0, 2001)
    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            if min_recall and candidate_probability(threshold, b, r) < min_recall:
                continue
            fp = _integral(1 - (1 - lo ** r) ** b, lo)
            fn = _integral((1 - hi ** r) ** b, hi)
            err = fp * false_positive_weight + fn * false_negative_weight
            if err < best:
                best, opt = err, (b, r)
    if opt == (0, 0):  # no setting reaches min_recall: take the most sensitive one (r = 1)
        opt = (num_perm, 1)
    return opt


def candidate_probability(s: float | np.ndarray, bands: int, rows: int):
    """Probability that a pair with Jaccard `s` shares at least one band."""
    return 1 - (1 - np.asarray(s, dtype=float) ** rows) ** bands


def sorted_sets(hashes: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Each document's distinct shingle hashes, sorted (for `pair_jaccard`). A sort and a mask per document:
    3x faster than `np.unique`, which hashes before it sorts."""
    out = []
    for i in range(len(offsets) - 1):
        x = np.sort(hashes[offsets[i]:offsets[i + 1]])
        out.append(x[np.concatenate(([True], x[1:] != x[:-1]))] if len(x) > 1 else x)
    return out


def pair_jaccard(sets: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact Jaccard of pairs (a[k], b[k]) of documents given as sorted distinct shingle hashes.

    A loop over pairs with a vectorised merge inside (searchsorted): a few microseconds a pair,
    and memory for the chunk's shingles only.
    """
    out = np.zeros(len(a), dtype=np.float64)
    for k, (i, j) in enumerate(zip(a.tolist(), b.tolist())):
        x, y = sets[i], sets[j]
        if len(x) > len(y):
            x, y = y, x
        if len(x) == 0:
            continue
        hit = np.searchsorted(y, x)
        hit[hit == len(y)] = 0
        inter = int(np.count_nonzero(y[hit] == x))
        out[k] = inter / (len(x) + len(y) - inter)
    return out

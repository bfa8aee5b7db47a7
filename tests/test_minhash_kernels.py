"""The fast kernels of MinHash dedup against their plain definitions: signatures taken chunk by chunk, the
boundary windows of the shingler, the sorted distinct sets of verification, the connected components of
clustering."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import curation.minhash_signatures as ms
from curation.minhash import _components
from curation.shingles import boundary_windows, fmix, shingle_hashes


def plain_signatures(h32: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Definition: per document, per permutation, min of a * fmix32(h) + b mod 2^32."""
    x = fmix(h32.astype(np.uint32, copy=True), 32).astype(np.uint64)
    out = np.full((len(offsets) - 1, len(a)), ms.EMPTY, dtype=np.uint32)
    for i in range(len(offsets) - 1):
        seg = x[offsets[i]:offsets[i + 1]]
        if len(seg):
            out[i] = ((seg[None, :] * a[:, None].astype(np.uint64) + b[:, None]) % (1 << 32)).min(axis=1)
    return out


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 17])
def test_signatures_taken_chunk_by_chunk_equal_the_definition(monkeypatch, chunk):
    rng = np.random.default_rng(0)
    sizes = [0, 3, 0, 0, 150, 1, 40, 0, 200, 2]  # empty docs, docs cut by chunk edges, one spanning many
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    h32 = rng.integers(0, 1 << 32, offsets[-1], dtype=np.uint64).astype(np.uint32)
    a, b = ms.permutations(16, 3)
    monkeypatch.setattr(ms, "CHUNK", chunk)
    assert np.array_equal(ms.signatures(h32, offsets, a, b), plain_signatures(h32, offsets, a, b))


def test_signatures_of_no_shingles_are_empty():
    a, b = ms.permutations(8, 0)
    sig = ms.signatures(np.zeros(0, np.uint32), np.zeros(4, np.int64), a, b)
    assert sig.shape == (3, 8) and (sig == ms.EMPTY).all()


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_boundary_windows_are_those_ending_past_their_text(n):
    lens = np.array([0, 3, 12, 1, 0, 7, 5, 20])
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    ends = np.repeat(starts + lens, lens)  # each token's text end
    crossing = np.flatnonzero(np.arange(lens.sum()) + n > ends)
    assert np.array_equal(np.sort(boundary_windows(starts, lens, n)), crossing)


def test_shingles_of_texts_shorter_than_n_and_empty():
    texts = pl.Series(["a b", "", "one two three four five six", None, "x"])
    hashes, offsets = shingle_hashes(texts, 5)
    assert np.diff(offsets).tolist() == [1, 0, 2, 0, 1]
    assert len(hashes) == offsets[-1]


def test_sorted_sets_are_sorted_distinct_hashes():
    rng = np.random.default_rng(1)
    sizes = [0, 1, 2, 50, 7]
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    hashes = rng.integers(0, 9, offsets[-1], dtype=np.uint64)  # many repeats
    for got, (i, j) in zip(ms.sorted_sets(hashes, offsets), zip(offsets[:-1], offsets[1:])):
        assert np.array_equal(got, np.unique(hashes[i:j]))


@pytest.mark.parametrize("n_workers, piece, batch_size", [(3, 7, 10_000), (2, 2_000, 5), (1, 2_000, 10_000)])
def test_pieces_hashed_by_threads_give_the_one_thread_result(tmp_path, monkeypatch, n_workers, piece, batch_size):
    import random

    import curation.minhash as mh
    from curation.records import MESSAGES
    from curation.step import StepContext

    rng = random.Random(4)
    vocab = [f"w{i}" for i in range(300)]
    base = [[rng.choice(vocab) for _ in range(rng.randint(3, 60))] for _ in range(40)]
    texts = [" ".join(b if rng.random() < 0.9 else [*b[:-2], "x", "y"]) for b in base for _ in range(rng.randint(1, 3))]
    df = pl.DataFrame({"id": [f"r{i:03d}" for i in range(len(texts))][::-1], "messages": [[] for _ in texts],
                       "text": texts, "source": "t"}, schema_overrides={"messages": MESSAGES})

    def run(tag: str):
        ctx = StepContext(seed=0, step_dir=tmp_path / tag)
        kept, rejected = mh.minhash_dedup(df, mh.MinhashDedupOptions(batch_size=batch_size), ctx)
        return kept, rejected, pl.read_parquet(tmp_path / tag / "pairs.parquet")

    monkeypatch.setattr(mh, "MAX_WORKERS", 1)
    monkeypatch.setattr(mh, "PIECE", 10**9)
    one = run("one")
    monkeypatch.setattr(mh, "MAX_WORKERS", n_workers)
    monkeypatch.setattr(mh, "PIECE", piece)
    monkeypatch.setattr(pl, "thread_pool_size", lambda: 8)
    many = run("many")
    assert len(one[1]) > 0
    for a, b in zip(one, many):
        assert a.equals(b)


@pytest.mark.parametrize("n, edges, seed", [(0, 0, 0), (1, 0, 0), (5, 0, 1), (50, 30, 2), (300, 280, 3), (2000, 1500, 4),
                                            (2000, 4000, 5)])
def test_components_equal_scipys_labels(n, edges, seed):
    """The same labels as scipy's connected_components, on random graphs with isolated nodes, repeated
    edges, self-loops, chains and stars."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, max(n, 1), (2, edges)) if n else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if n > 10:  # a long chain in shuffled node order and a star: the shapes that take the most rounds
        chain = rng.permutation(n)[: n // 4]
        star = rng.permutation(n)[: n // 5]
        a = np.concatenate([a, chain[:-1], np.full(len(star) - 1, star[0]), a[:3]])
        b = np.concatenate([b, chain[1:], star[1:], a[:3]])
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    assert np.array_equal(_components(n, a, b), connected_components(graph, directed=False)[1])

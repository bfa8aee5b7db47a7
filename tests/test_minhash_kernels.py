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
    assert np.array_equal(_components(n, lambda: [(a, b)]), connected_components(graph, directed=False)[1])


def plain_bucket_pairs(keys: np.ndarray, order: np.ndarray, max_bucket: int) -> set[tuple[int, int]]:
    """Definition of the bucket rule: all pairs of a bucket of at most `max_bucket` members, else each member
    with the member of smallest order; (i, j) with order[i] < order[j]."""
    out = set()
    for key in np.unique(keys):
        members = sorted(np.flatnonzero(keys == key), key=lambda i: order[i])
        if len(members) <= max_bucket:
            out |= {(i, j) for x, i in enumerate(members) for j in members[x + 1:]}
        else:
            out |= {(members[0], j) for j in members[1:]}
    return {(int(i), int(j)) for i, j in out}


@pytest.mark.parametrize("n, n_keys, max_bucket, seed", [(0, 1, 4, 0), (1, 1, 4, 0), (40, 3, 64, 1), (300, 20, 4, 2),
                                                          (300, 60, 2, 3), (500, 5, 30, 4)])
def test_bucket_pairs_follow_the_rule(n, n_keys, max_bucket, seed):
    """Small and large buckets, single members, one bucket holding everything; members in shuffled order."""
    from curation.minhash import bucket_pair_index

    rng = np.random.default_rng(seed)
    keys = rng.integers(0, n_keys, n).astype(np.uint64)
    order = rng.permutation(n)
    i, j = bucket_pair_index([keys], order, max_bucket)
    got = list(zip(i.tolist(), j.tolist()))
    assert len(got) == len(set(got))
    assert set(got) == plain_bucket_pairs(keys, order, max_bucket)
    assert all(order[x] < order[y] for x, y in got)


def test_bucket_pairs_frame_carries_columns_by_two_bucket_columns():
    """Ray's form: buckets of (band, key), ordered by a string id, carried columns suffixed _a and _b."""
    from curation.minhash import bucket_pairs

    members = pl.DataFrame({"band": [0, 0, 0, 1, 1, 0], "key": [7, 7, 7, 7, 7, 9],
                            "id": ["c", "a", "b", "c", "a", "d"], "pos": [2, 0, 1, 2, 0, 3]})
    pairs = bucket_pairs(members, ["band", "key"], "id", 2).sort("id_a", "id_b")
    # band 0 key 7 has 3 > 2 members: a star from "a"; band 1 key 7 has 2: the pair; key 9 alone: none
    assert pairs.rows() == [("a", 0, "b", 1), ("a", 0, "c", 2), ("a", 0, "c", 2)]
    assert pairs.columns == ["id_a", "pos_a", "id_b", "pos_b"]


def test_lsh_pairs_are_every_bands_pairs_once_sorted():
    from curation.minhash import lsh_pairs

    rng = np.random.default_rng(5)
    docs = np.sort(rng.choice(1000, 200, replace=False))
    bands = [rng.integers(0, k, len(docs)).astype(np.uint64) for k in (30, 60, 10)]
    pairs = lsh_pairs(docs, iter(bands), 8)
    want = set()
    for keys in bands:
        want |= {(int(docs[i]), int(docs[j])) for i, j in plain_bucket_pairs(keys, docs, 8)}
    assert pairs.frame().rows() == sorted(want)


def test_components_by_slices_of_edges_equal_all_at_once(monkeypatch):
    import curation.minhash as mh

    rng = np.random.default_rng(6)
    n = 3000
    a, b = rng.integers(0, n, (2, 2500))
    chain = rng.permutation(n)[:700]
    a, b = np.concatenate([a, chain[:-1]]), np.concatenate([b, chain[1:]])
    whole = mh._components(n, lambda: [(a, b)])
    monkeypatch.setattr(mh, "EDGE_SLICE", 7)
    assert np.array_equal(mh._components(n, lambda: [(a, b)]), whole)


@pytest.mark.parametrize("held, stride", [(10**9, 1 << 16), (50, 4), (7, 1), (200, 64)])
def test_unique_keys_spilled_in_runs_equal_all_in_memory(tmp_path, monkeypatch, held, stride):
    """Pieces with repeats inside and across them: the sorted distinct keys as (a, b), whether merged in memory
    or written as runs and merged back range by range (ranges cut inside runs' blocks and between them)."""
    import curation.minhash_pairs as mp

    rng = np.random.default_rng(7)
    pieces = [(rng.integers(0, 40, k).astype(np.uint64) << mp.PAIR_SHIFT) | rng.integers(40, 90, k).astype(np.uint64)
              for k in (0, 300, 5, 120, 800, 1, 260)]
    monkeypatch.setattr(mp, "STRIDE", stride)
    got = mp.unique_keys(iter(pieces), tmp_path / "pairs", held)
    want = np.unique(np.concatenate(pieces))
    assert got.frame().rows() == list(zip((want >> mp.PAIR_SHIFT).tolist(), (want & mp.LOW).tolist()))
    assert got.spilled == (held < len(want))
    assert not list((tmp_path / "pairs").glob("run*"))  # runs are removed once merged
    if got.spilled:
        assert max(len(f) for f in got.frames()) <= held + len(pieces) * stride


def test_pairs_held_in_memory_until_past_their_bound(tmp_path):
    from curation.minhash_pairs import Pairs

    pairs = Pairs(tmp_path / "p", held=5)
    pairs.add(pl.DataFrame({"a": [0, 1], "b": [2, 3]}))
    assert not pairs.spilled and not (tmp_path / "p").exists()
    pairs.add(pl.DataFrame({"a": [4, 5, 6, 7], "b": [8, 9, 9, 9]}))
    assert pairs.spilled and len(list((tmp_path / "p").iterdir())) == 2 and len(pairs) == 6
    assert [f.rows() for f in pairs.map(lambda f: f.filter(pl.col("b") == 9), tmp_path / "q").frames()] == [
        [], [(5, 9), (6, 9), (7, 9)]]
    pairs.drop()
    assert len(pairs) == 0 and not list((tmp_path / "p").iterdir())

"""Near-duplicate removal: MinHash LSH proposes candidate pairs, exact Jaccard decides.

1. Signatures, in pieces of a few thousand texts hashed by a few threads at once (never more than
   `batch_size` texts' shingles in memory): normalised word or char n-grams -> 64-bit hashes
   (curation.shingles) -> datasketch-compatible MinHash (curation.minhash_signatures) -> one 64-bit
   key per LSH band. Only the band keys are kept.
2. Candidates: per band, documents sharing a key are pairs (in a bucket larger than `max_bucket_size`,
   every member pairs with the bucket's smallest id only, so one huge bucket cannot make quadratically
   many pairs; `bucket_pair_pieces`, in numpy). A pair is one uint64 while the bands are merged, then two
   Int32 document numbers. Pairs, not rows, set this step's memory when near-duplicates abound, so they are
   held in `curation.minhash_pairs.Pairs`: in memory up to `PAIRS_HELD`, past it (the streamed form, which
   gives a folder) in files, read back a frame at a time.
3. Verification: the exact Jaccard of every candidate pair, computed from the pair's shingle sets,
   one chunk of connected candidates at a time (their pairs a group of chunks at a time); pairs below
   `threshold` are discarded. MinHash estimates near the threshold are noisy both ways; this step removes
   that noise.
   With a step folder, all verified pairs go to `pairs.parquet` (id_a, id_b, jaccard, duplicate).
4. Clusters: connected components of the verified pairs. A cluster's id is its smallest row id,
   so the same rows give the same clusters and ids whatever their order in the input. One row per
   cluster is kept (`keep`); the others are rejected with `duplicate_of` = the kept row's id.
   Reference rows (`ctx.reference`) join the comparison and are never in the output; a cluster
   holding one keeps a reference row, whatever `keep` says.

An input larger than the local executor's batch goes through curation.minhash_stream's `stream_marks`:
the same rules and functions, holding ids, band keys and verdicts instead of the rows.

Documents are processed in id order internally, which is what makes every tie-break independent
of the input's row order. Clusters are transitive: A~B and B~C put A, B, C together even when
A and C are below the threshold (as in datatrove and NeMo Curator).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curation import store
from curation.keep import Keep, against_reference, check_score_column, keeper, with_reference
from curation.minhash_pairs import PAIR_SHIFT, Pairs, unique_keys
from curation.minhash_signatures import (band_hashes, hash32, optimal_bands, pair_jaccard, permutations, signatures,
                                         sorted_sets)
from curation.shingles import shingle_hashes
from curation.step import StepContext, StepOptions, reject

STAGE = "minhash_dedup"
PIECE = 2_000  # texts per signature task: more pieces balance the threads, and smaller temporaries are
# reused by the allocators instead of faulting in fresh pages (a third of the system time of 10k-text batches)
MAX_WORKERS = 4


def workers() -> int:
    """Threads that hash signatures at once: polars' thread count (POLARS_MAX_THREADS), at most MAX_WORKERS."""
    return max(1, min(pl.thread_pool_size(), MAX_WORKERS))


class MinhashDedupOptions(StepOptions):
    threshold: float = Field(0.8, gt=0.0, lt=1.0,
                             description="exact Jaccard similarity of shingle sets at or above which two rows are duplicates")
    num_perm: int = Field(128, ge=8, le=1024, description="MinHash permutations per signature")
    ngram: int = Field(5, ge=1, le=64, description="shingle length in tokens (words or characters)")
    shingle: Literal["word", "char"] = Field("word", description="shingle tokens: normalised words or characters")
    keep: Keep = Field(
        "first", description="which row of a cluster stays: the first in input order, the longest text, "
                             "or the highest `score_column` (ties: longer text, then smaller id)")
    score_column: str = Field("quality", description="numeric column read when keep=quality")
    column: str = Field("text", description="column whose text is compared")
    seed: int | None = Field(None, description="permutation seed; default: the run's seed")
    bands: int | None = Field(None, ge=1, description="LSH bands; default: chosen from threshold and num_perm")
    rows: int | None = Field(None, ge=1, description="signature rows per band; default: chosen with `bands`")
    min_recall: float = Field(
        0.995, ge=0.0, lt=1.0,
        description="when choosing bands x rows: least probability that a pair exactly at the threshold "
                    "becomes a candidate (false positives only cost a verification)")
    max_bucket_size: int = Field(
        64, ge=2, description="LSH buckets larger than this pair each member with the bucket's smallest id only")
    batch_size: int = Field(10_000, ge=1, description="texts per signature batch (bounds memory)")
    verify_batch_docs: int = Field(20_000, ge=1, description="documents whose shingles are held at once while verifying")

    @model_validator(mode="after")
    def _bands_rows(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both `bands` and `rows`, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


def lsh_params(opts: MinhashDedupOptions) -> tuple[int, int]:
    if opts.bands is not None:
        return opts.bands, opts.rows
    return optimal_bands(opts.threshold, opts.num_perm, 0.5, 0.5, opts.min_recall)


def band_keys(texts: pl.Series, opts: MinhashDedupOptions, seed: int, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch function: (band keys n×bands uint64, has-shingles mask) for a batch of texts."""
    a, b = permutations(opts.num_perm, seed)
    hashes, offsets = shingle_hashes(texts, opts.ngram, opts.shingle)
    sig = signatures(hash32(hashes), offsets, a, b)
    return band_hashes(sig, bands, rows), np.diff(offsets) > 0


def bucket_pair_pieces(buckets: list[np.ndarray], order: np.ndarray, max_bucket: int,
                       piece: int = 1 << 22) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The bucket rule, both executors': (i, j) positions of members that share every `buckets` column, with
    order[i] < order[j], in pieces of about `piece` pairs (a band of a heavily duplicated corpus has tens of
    millions). A bucket of at most `max_bucket` members pairs all of them; a larger one pairs each member with
    its smallest only (no quadratic blow-up). In numpy: a polars self-join on the bucket held its output's pages
    long after (0.17-0.25 GB more RSS after 1.1M pairs, against none)."""
    o = np.lexsort((order, *buckets[::-1]))
    same = np.ones(max(len(o) - 1, 0), dtype=bool)
    for column in buckets:
        c = column[o]
        same &= c[1:] == c[:-1]
    start = np.flatnonzero(np.r_[True, ~same]) if len(o) else np.empty(0, dtype=np.int64)
    size = np.diff(np.r_[start, len(o)])
    for k in np.unique(size[(size > 1) & (size <= max_bucket)]):
        i, j = np.triu_indices(k, 1)  # every pair of a k-member bucket, smaller position first
        at = start[size == k][:, None]
        step = max(1, piece // len(i))
        for s in range(0, len(at), step):
            yield o[at[s:s + step] + i].ravel(), o[at[s:s + step] + j].ravel()
    big = size > max_bucket
    if big.any():
        at = np.flatnonzero(np.repeat(big, size))  # the positions in large buckets, and their bucket's first
        first = np.repeat(start[big], size[big])
        at, first = at[at != first], first[at != first]
        for s in range(0, len(at), piece):
            yield o[first[s:s + piece]], o[at[s:s + piece]]


def bucket_pair_index(buckets: list[np.ndarray], order: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """`bucket_pair_pieces`, all at once."""
    pieces = list(bucket_pair_pieces(buckets, order, max_bucket))
    if not pieces:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate([i for i, _ in pieces]), np.concatenate([j for _, j in pieces])


def bucket_pairs(members: pl.DataFrame, bucket: list[str], by: str, max_bucket: int) -> pl.DataFrame:
    """Candidate pairs from LSH buckets (`bucket_pair_index`) as a frame: `members` has the bucket columns and
    per member `by` (its order: pairs are a < b) plus any columns to carry; every carried column c comes
    back as c_a and c_b."""
    cols = [c for c in members.columns if c not in bucket]
    order = members[by].rank("dense").to_numpy()
    i, j = bucket_pair_index([members[c].to_numpy() for c in bucket], order, max_bucket)
    carried = members.select(cols)
    return pl.concat([carried[i].rename({c: f"{c}_a" for c in cols}),
                      carried[j].rename({c: f"{c}_b" for c in cols})], how="horizontal")


def lsh_pairs(docs: np.ndarray, band_columns: Iterable[np.ndarray], max_bucket: int,
              folder: Path | None = None) -> Pairs:
    """Candidate pairs (a, b: a < b, sorted; Int32) of `docs` from each band's keys of them, as `Pairs`: each
    band's pairs, a piece at a time, as uint64 keys (a << 32 | b) made distinct in bounded memory
    (`minhash_pairs.unique_keys`; spilled under `folder` when they are many)."""
    if len(docs) and docs.max() >= 2**31:
        raise ValueError(f"minhash_dedup: document number {docs.max()}; pairs hold at most 2**31 documents")

    def pieces():
        for keys in band_columns:
            for i, j in bucket_pair_pieces([keys], docs, max_bucket):
                yield (docs[i].astype(np.uint64) << PAIR_SHIFT) | docs[j].astype(np.uint64)

    return unique_keys(pieces(), folder)


EDGE_SLICE = 1 << 22  # edges whose labels are looked up at once (bounds the temporaries of large graphs)


def _components(n: int, edges: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]) -> np.ndarray:
    """Connected components of the undirected graph of `n` nodes and edges (a[k], b[k]), given as a pass over
    (a, b) arrays (`edges()`: `Pairs.ends`, which may read them from disk): labels 0..k-1 numbered by each
    component's smallest node, as scipy's `connected_components` numbers them.

    Min-label hooking with pointer jumping, in numpy: each round hooks, slice of edges by slice, every edge's
    larger label to its smaller, then points every node at its root; a few rounds on real graphs. A label is
    always a node of the same component and never larger than the node, so when no edge joins two labels the
    label of each component is its smallest node. Not scipy's: importing scipy.sparse costs every MinHash run
    0.2 s, more than the clustering itself."""
    label = np.arange(n, dtype=np.int64)
    while True:
        hooked = False
        for a, b in edges():
            for s in range(0, len(a), EDGE_SLICE):
                la, lb = label[a[s:s + EDGE_SLICE]], label[b[s:s + EDGE_SLICE]]
                apart = la != lb
                if not apart.any():
                    continue
                hooked = True
                la, lb = la[apart], lb[apart]
                low = np.minimum(la, lb)
                np.minimum.at(label, la, low)
                np.minimum.at(label, lb, low)
        if not hooked:
            break
        while not np.array_equal(up := label[label], label):
            label = up
    return np.unique(label, return_inverse=True)[1]


def _pieces(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) pieces of range(n), at most `PIECE` long and small enough that the pieces `workers()`
    threads hold at once are no more than `batch_size` texts (the memory bound)."""
    piece = max(1, min(PIECE, batch_size // workers()))
    return [(s, min(n, s + piece)) for s in range(0, n, piece)]


def _threaded(fn, pieces: list[tuple[int, int]]):
    """fn(start, stop) of every piece, in order, computed by `workers()` threads: polars and numpy let go
    of the GIL, and one polars string op on one column runs on one core only."""
    with ThreadPoolExecutor(workers()) as pool:
        yield from pool.map(lambda piece: fn(*piece), pieces)


def all_band_keys(batches: Iterable[pl.Series], rank: np.ndarray, opts: MinhashDedupOptions, seed: int, bands: int,
                  rows: int, ctx: StepContext) -> tuple[np.ndarray, np.ndarray]:
    """`band_keys` of every text, the texts given as consecutive batches (row `rank[i]` holds text i's), and
    whether it has shingles."""
    n = len(rank)
    keys = np.empty((n, bands), dtype=np.uint64)
    has = np.zeros(n, dtype=bool)
    lo = 0
    for texts in batches:
        pieces = _pieces(len(texts), opts.batch_size)
        found = _threaded(lambda s, e, t=texts: band_keys(t.slice(s, e - s), opts, seed, bands, rows), pieces)
        for (s, e), (k, h) in zip(pieces, ctx.track(found, "minhash signatures", total=len(pieces))):
            keys[rank[lo + s:lo + e]], has[rank[lo + s:lo + e]] = k, h
        lo += len(texts)
    return keys, has


def candidate_pairs(texts: Iterable[pl.Series], rank: np.ndarray, opts: MinhashDedupOptions, seed: int,
                    ctx: StepContext, folder: Path | None = None) -> tuple[Pairs, dict]:
    """All candidate pairs (a < b, internal document numbers) and figures about how they were found.

    `texts` are the rows' texts in row order, as consecutive batches, hashed in contiguous slices (no copy
    of the text column); `rank[row]` is the row's internal document number. With a `folder`, pairs beyond
    `PAIRS_HELD` go to disk there.
    """
    n = len(rank)
    bands, rows = lsh_params(opts)
    t0 = time.perf_counter()
    keys, has = all_band_keys(texts, rank, opts, seed, bands, rows, ctx)
    t1 = time.perf_counter()
    docs = np.flatnonzero(has)  # a text without shingles would collide with every other such text
    pairs = lsh_pairs(docs, (keys[docs, j] for j in ctx.track(range(bands), "lsh bands", total=bands)),
                      opts.max_bucket_size, None if folder is None else folder / "candidates")
    del keys
    figures = {"bands": bands, "rows": rows, "docs_without_shingles": int(n - len(docs)),
               "candidate_pairs": len(pairs), "signature_seconds": round(t1 - t0, 3),
               "candidate_seconds": round(time.perf_counter() - t1, 3)}
    return pairs, figures


def verify_pairs(texts: pl.Series | Any, order: np.ndarray, pairs: Pairs, opts: MinhashDedupOptions,
                 ctx: StepContext, folder: Path | None = None) -> Pairs:
    """Exact Jaccard of every candidate pair: `Pairs` of (a, b, jaccard) in the candidates' order; `order[doc]`
    is a document's row.

    Candidates are split into connected groups and packed into chunks of about `verify_batch_docs`
    documents, so each document's shingles are computed once and only one chunk's shingles are held at a
    time. `texts`: the text column in row order, or (streamed) a `curation.minhash_stream.TextsOf` that is
    told each chunk's documents first (`plan`) and then hands their texts. Pairs are verified a group of
    chunks at a time (`_by_chunk_group`), so that with a `folder` only a group's pairs are in memory.
    """
    if not len(pairs):
        return pairs.map(lambda f: f.with_columns(pl.lit(0.0).alias("jaccard")))
    comp = _components(len(order), pairs.ends)
    in_pair = np.zeros(len(order), dtype=bool)
    for a, b in pairs.ends():
        in_pair[a], in_pair[b] = True, True
    cand = np.flatnonzero(in_pair)
    comp_sizes = np.bincount(comp[cand])
    # components in order of their label; a chunk starts where the running size crosses a multiple
    chunk_of_comp = ((np.cumsum(comp_sizes) - comp_sizes) // opts.verify_batch_docs).astype(np.int32)
    doc_chunk = chunk_of_comp[comp[cand]]
    chunks = np.unique(doc_chunk)
    if isinstance(texts, pl.Series):
        column = texts
        texts_of = lambda c, rows: column.gather(rows)  # noqa: E731
    else:
        texts.plan(cand, doc_chunk, order)
        texts_of = texts

    def chunk_of(a: np.ndarray) -> np.ndarray:  # a pair's chunk is its first document's
        return chunk_of_comp[comp[a]]

    grouped, sources, group_of_chunk = _by_chunk_group(pairs, chunk_of, int(chunks[-1]) + 1, folder)
    # each frame's Jaccards, a piece per group its pairs are in, in group order (on disk with the pairs)
    results = [Pairs(None if folder is None else folder / f"jaccard{p:05d}", _spill_all(pairs))
               for p in range(len(pairs.parts))]
    current, jac = -1, np.empty(0)
    for c in ctx.track(chunks, "verify candidates", total=len(chunks)):
        if group_of_chunk[c] != current:
            if current >= 0:
                _scatter(sources[current], jac, results)
            current = group_of_chunk[c]
            frame = grouped[current].frame()
            grouped[current].drop()
            in_chunk, a, b = frame["chunk"].to_numpy(), frame["a"].to_numpy(), frame["b"].to_numpy()
            jac = np.zeros(len(frame), dtype=np.float64)
            del frame
        docs = cand[doc_chunk == c]  # sorted
        chunk = texts_of(c, order[docs])
        sets = [x for part in _threaded(lambda s, e: sorted_sets(*shingle_hashes(
            chunk.slice(s, e - s), opts.ngram, opts.shingle)), _pieces(len(docs), opts.batch_size)) for x in part]
        sel = np.flatnonzero(in_chunk == c)
        jac[sel] = pair_jaccard(sets, np.searchsorted(docs, a[sel]), np.searchsorted(docs, b[sel]))
    _scatter(sources[current], jac, results)
    del jac, in_chunk, a, b
    verified = Pairs(None if folder is None else folder / "verified", pairs.held)
    for f, found in zip(pairs.frames(), results):
        of_group = group_of_chunk[chunk_of(f["a"].to_numpy())]
        jac = np.empty(len(f), dtype=np.float64)
        for g, r in zip(np.unique(of_group), found.frames()):
            jac[of_group == g] = r["jaccard"].to_numpy()
        found.drop()
        verified.add(f.with_columns(pl.Series("jaccard", jac)))
    return verified


def _by_chunk_group(pairs: Pairs, chunk_of: Callable[[np.ndarray], np.ndarray], chunks: int,
                    folder: Path | None) -> tuple[list[Pairs], list[list[tuple[int, int]]], np.ndarray]:
    """Every pair with its verification chunk, sorted into groups of consecutive chunks that hold at most
    `pairs.held` pairs together (a larger chunk is a group alone), in their frames' order: each group's pairs
    (a, b, chunk), a piece per candidate frame they come from (its sources: the frame's index, the piece's
    length), and each chunk's group."""
    per_chunk = np.zeros(chunks, dtype=np.int64)
    for a, _ in pairs.ends():
        per_chunk += np.bincount(chunk_of(a), minlength=chunks)
    group_of_chunk = np.zeros(chunks, dtype=np.int64)
    g, total = 0, 0
    for c, count in enumerate(per_chunk):
        if total and total + count > pairs.held:
            g, total = g + 1, 0
        group_of_chunk[c], total = g, total + count
    grouped = [Pairs(None if folder is None else folder / f"group{k:05d}", _spill_all(pairs)) for k in range(g + 1)]
    sources: list[list[tuple[int, int]]] = [[] for _ in range(g + 1)]
    for p, f in enumerate(pairs.frames(["a", "b"])):
        chunk = chunk_of(f["a"].to_numpy())
        tagged = f.with_columns(pl.Series("chunk", chunk), pl.Series("group", group_of_chunk[chunk]))
        for (k,), sub in tagged.partition_by("group", as_dict=True, include_key=False).items():
            grouped[k].add(sub)
            sources[k].append((p, len(sub)))
    return grouped, sources, group_of_chunk


def _spill_all(pairs: Pairs) -> int:
    """The bound of the many frames that share out `pairs` (groups, results): each is under `held`, but
    together they are as many as `pairs`, so they go to disk, every one of them, when `pairs` went."""
    return 0 if pairs.spilled else pairs.held


def _scatter(sources: list[tuple[int, int]], jaccard: np.ndarray, results: list[Pairs]) -> None:
    """A verified group's Jaccards, piece by piece, to the results of the frames its pairs came from."""
    at = 0
    for p, length in sources:
        results[p].add(pl.DataFrame({"jaccard": jaccard[at:at + length]}))
        at += length


def edges_of(verified: Pairs, threshold: float, folder: Path | None = None) -> Pairs:
    """The verified pairs at or above the threshold: the duplicate graph's edges."""
    return verified.map(lambda f: f.filter(pl.col("jaccard") >= threshold),
                        None if folder is None else folder / "edges")


def split_near_duplicates(marked: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows marked with dup_cluster (null outside a cluster), duplicate_of and dup_jaccard ->
    (kept with dup_cluster, rejected as near duplicates); both executors end here."""
    is_kept = pl.col("dup_cluster").is_null() | (pl.col("duplicate_of") == pl.col("id"))
    kept = marked.filter(is_kept).drop("duplicate_of", "dup_jaccard")
    return kept, reject(marked.filter(~is_kept), STAGE, "near_duplicate")


def narrow_rows(rows: pl.DataFrame, opts: MinhashDedupOptions) -> pl.DataFrame:
    """What clustering reads of a row, without its text: id, __len (the text's characters), the score."""
    return rows.select("id", pl.col(opts.column).fill_null("").str.len_chars().cast(pl.Int64).alias("__len"),
                       *([opts.score_column] if opts.keep == "quality" else []))


def _cluster_info(rows: pl.DataFrame, order: np.ndarray, edges: Pairs, opts: MinhashDedupOptions,
                  n_ref: int) -> pl.DataFrame:
    """One small row per document (no text), in row order: dup_cluster, duplicate_of (the kept row
    of its cluster: a reference row, of the first `n_ref` rows, if the cluster has one), dup_jaccard.
    `rows`: `narrow_rows` of every row."""
    n = len(rows)
    comp = _components(n, edges.ends)
    best = np.full(n, np.nan)  # a document's highest Jaccard with a duplicate
    for f in edges.frames():
        a, b, jaccard = f["a"].to_numpy(), f["b"].to_numpy(), f["jaccard"].to_numpy()
        np.fmax.at(best, a, jaccard)
        np.fmax.at(best, b, jaccard)
    # in internal order
    info = pl.DataFrame({
        "__doc": np.arange(n, dtype=np.int64), "__row": order.astype(np.int64), "__comp": comp,
        "id": rows["id"].gather(order),
        "__len": rows["__len"].gather(order),
        "dup_jaccard": pl.Series("dup_jaccard", best, nan_to_null=True),
    })
    if opts.keep == "quality":
        info = info.with_columns(rows[opts.score_column].gather(order).alias("__score"))
    if n_ref:
        info = info.with_columns((pl.col("__row") < n_ref).alias("__ref"))
    in_cluster = pl.len().over("__comp") > 1
    return (info.with_columns(
        # the smallest internal doc has the smallest id
        pl.when(in_cluster).then(pl.col("id").first().over("__comp")).alias("dup_cluster"),
        keeper(opts.keep, "__comp", position="__row", length="__len", score="__score", tiebreak="__doc",
               first="__ref" if n_ref else None).alias("duplicate_of"),
        in_cluster.alias("__in"),
    ).sort("__row"))


def id_order(ids: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(order, rank): a document's internal number is the rank of its row's id, so results do not depend on
    row order; `order[doc]` is its row, `rank[row]` its number. (The text column itself is never reordered:
    a gather would copy every string.)"""
    order = ids.arg_sort().to_numpy()
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    return order, rank


def cluster_figures(docs: int, verified: Pairs, edges: Pairs, info: pl.DataFrame, duplicates: int,
                    t0: float, t1: float) -> dict[str, Any]:
    """The step's figures once pairs are verified (at t0 .. t1) and clustered (t1 .. now), in memory or streamed."""
    return {
        "docs": docs,
        "verified_pairs": len(edges),
        "candidate_pairs_below_threshold": len(verified) - len(edges),
        "clusters": int(info.filter("__in")["__comp"].n_unique()),
        "duplicates": duplicates,
        "verify_seconds": round(t1 - t0, 3),
        "cluster_seconds": round(time.perf_counter() - t1, 3),
    }


PAIRS_SLICE = 1_000_000  # verified pairs named at once in pairs.parquet: their two ids are strings


def _write_pairs(info: pl.DataFrame, verified: Pairs, threshold: float, ctx: StepContext) -> None:
    """Every verified candidate pair, for audits, named a slice at a time (millions of pairs' ids would be GBs);
    no pairs give a file of no rows."""
    ids = info.sort("__doc")["id"]
    ctx.step_dir.mkdir(parents=True, exist_ok=True)
    named = (part.select(ids.gather(part["a"]).alias("id_a"), ids.gather(part["b"]).alias("id_b"), "jaccard",
                         (pl.col("jaccard") >= threshold).alias("duplicate"))
             for frame in verified.frames()
             for part in (frame.slice(start, PAIRS_SLICE) for start in range(0, max(len(frame), 1), PAIRS_SLICE)))
    store.write_parquet_frames(named, ctx.step_dir / "pairs.parquet")


def minhash_dedup(df: pl.DataFrame, opts: MinhashDedupOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    check_score_column(STAGE, opts.keep, opts.score_column, df.columns)
    seed = ctx.seed if opts.seed is None else opts.seed
    # the reference rows lead and are compared like any row; only df's rows get verdicts
    columns = ["id", opts.column] + ([opts.score_column] if opts.keep == "quality" else [])
    rows, n_ref = with_reference(df, ctx.reference, columns)
    n = len(rows)
    order, rank = id_order(rows["id"])
    texts = rows[opts.column]
    pairs, figures = candidate_pairs([texts], rank, opts, seed, ctx)
    t0 = time.perf_counter()
    verified = verify_pairs(texts, order, pairs, opts, ctx)
    edges = edges_of(verified, opts.threshold)
    t1 = time.perf_counter()
    info = _cluster_info(narrow_rows(rows, opts), order, edges, opts, n_ref)
    if ctx.step_dir is not None:
        _write_pairs(info, verified, opts.threshold, ctx)
    marks = info.select("dup_cluster", "duplicate_of", "dup_jaccard").slice(n_ref)
    kept, rejected = split_near_duplicates(df.with_columns(marks))
    figures.update(cluster_figures(n, verified, edges, info, len(rejected), t0, t1))
    if n_ref:
        figures["against_reference"] = against_reference(ctx.reference, rejected, len(df), opts.keep,
                                                         column=opts.column, score_column=opts.score_column,
                                                         tiebreak="id")
    ctx.stats.update(figures)
    return kept, rejected

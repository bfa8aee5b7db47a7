"""SemDeDup (Abbas et al. 2023): drop rows that say the same thing in other words.

1. Embed `column` (curation.embed: normalised vectors, cached).
2. spherical k-means (numpy, seeded) puts similar rows in the same cluster, so
   only pairs within a cluster are compared: n²/k work instead of n².
3. Within a cluster, rows are walked in keep-priority order (`keep`: input order, longest text,
   or highest score); a row whose cosine to an already kept row exceeds 1 − eps is rejected as a
   duplicate of the most similar kept row (`duplicate_of`, `dup_cosine`, reason
   `semantic_duplicate_of:<id>`). Unlike MinHash this catches paraphrases with few shared words;
   like SemDeDup it misses pairs that k-means put in different clusters (fewer, larger clusters
   miss less and cost more: `cluster_size`).

Reference rows (`ctx.reference`) are embedded, clustered and walked with the step's rows, ahead of
them whatever `keep` says, and are never in the output.
"""
from __future__ import annotations

import math
import time

import numpy as np
import polars as pl
from pydantic import Field
from scipy.sparse import csr_matrix

from curation.embed import EmbeddingOptions, embed_column
from curation.keep import Keep, against_reference, check_score_column, keep_rank, with_reference
from curation.step import StepContext, StepOptions, reject

STAGE = "semantic_dedup"
_BLOCK = 2048  # rows of a cluster compared at once (bounds the similarity matrix to BLOCK × cluster)


class SemanticDedupOptions(StepOptions):
    eps: float = Field(0.07, gt=0.0, lt=1.0,
                       description="a row whose cosine to a kept row exceeds 1 - eps is a duplicate of it")
    n_clusters: int | None = Field(None, ge=1, description="k-means clusters; default: ceil(rows / cluster_size)")
    cluster_size: int = Field(1000, ge=1, description="average rows per cluster when n_clusters is not given")
    keep: Keep = Field(
        "first", description="which of similar rows stays: the first in input order, the longest text, "
                             "or the highest `score_column` (ties: longer text, then input order)")
    score_column: str = Field("quality", description="numeric column read when keep=quality")
    column: str = Field("text", description="column whose text is embedded")
    kmeans_iter: int = Field(20, ge=1, description="most k-means (Lloyd) passes over the data")
    seed: int | None = Field(None, description="k-means seed; default: the run's seed")
    embedding: EmbeddingOptions = Field(default_factory=EmbeddingOptions, description="embedding model settings")


def keep_priority(df: pl.DataFrame, keep: str, score_column: str, column: str, n_ref: int = 0) -> np.ndarray:
    """Rank of every row (0 = kept first) under the keep rule (curation.keep); ties: input order;
    the first `n_ref` rows (reference rows) before all others."""
    check_score_column(STAGE, keep, score_column, df.columns)
    score = df[score_column].cast(pl.Float64) if keep == "quality" else None
    first = np.arange(len(df)) < n_ref if n_ref else None
    return keep_rank(keep, df[column].fill_null("").str.len_chars(), score, first)


def split_semantic(marked: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows marked with `duplicate_of` (null: kept) and `dup_cosine` -> (kept, rejected with
    `semantic_duplicate_of:<id>`); both executors end here."""
    dup = pl.col("duplicate_of").is_not_null()
    kept = marked.filter(~dup).drop("duplicate_of", "dup_cosine")
    return kept, reject(marked.filter(dup), STAGE, pl.lit("semantic_duplicate_of:") + pl.col("duplicate_of"))


def _assign(emb: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre by cosine for every row (chunked GEMM): (labels, similarity)."""
    labels = np.empty(len(emb), dtype=np.int64)
    best = np.empty(len(emb), dtype=np.float32)
    for s in range(0, len(emb), 16384):
        sims = emb[s:s + 16384] @ centres.T
        labels[s:s + 16384] = sims.argmax(1)
        best[s:s + 16384] = sims[np.arange(len(sims)), labels[s:s + 16384]]
    return labels, best


def cluster(emb: np.ndarray, k: int, seed: int, max_iter: int = 20) -> np.ndarray:
    """Spherical k-means labels, seeded (k-means++ start on a sample, then Lloyd passes).

    Plain numpy: one GEMM per pass, so 100k × 384 rows into 100 clusters takes seconds.
    """
    n = len(emb)
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    sample = emb[np.sort(rng.choice(n, size=min(n, max(10_000, 20 * k)), replace=False))]
    # k-means++: each next centre drawn with probability ∝ squared distance to the nearest centre
    centres = [sample[rng.integers(len(sample))]]
    dist = np.maximum(2.0 - 2.0 * sample @ centres[0], 0.0)
    for _ in range(k - 1):
        total = dist.sum()
        j = rng.choice(len(sample), p=dist / total) if total > 0 else rng.integers(len(sample))
        centres.append(sample[j])
        dist = np.minimum(dist, np.maximum(2.0 - 2.0 * sample @ sample[j], 0.0))
    centres = np.stack(centres).astype(np.float32)
    labels = None
    for _ in range(max_iter):
        new, sim = _assign(emb, centres)
        if labels is not None and np.count_nonzero(new != labels) <= n // 1000:
            labels = new
            break
        labels = new
        sums = np.asarray(csr_matrix((np.ones(n, dtype=np.float32), (labels, np.arange(n))), shape=(k, n)) @ emb)
        norms = np.linalg.norm(sums, axis=1)
        empty = norms == 0
        if empty.any():  # an emptied centre restarts at the rows worst served
            sums[empty] = emb[np.argsort(sim)[:empty.sum()]]
            norms[empty] = 1.0
        centres = (sums / norms[:, None]).astype(np.float32)
    return labels


def _dedup_cluster(e: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of `e` in priority order: (kept mask, index of the kept row each duplicate matches, cosine)."""
    m = len(e)
    kept = np.ones(m, dtype=bool)
    dup_of = np.full(m, -1, dtype=np.int64)
    dup_cos = np.full(m, np.nan, dtype=np.float32)
    pi, pj, ps = [], [], []  # pairs (earlier i, later j) above the threshold
    for s in range(0, m, _BLOCK):
        sims = e[s:s + _BLOCK] @ e[:s + _BLOCK].T  # rows j in block vs every earlier-or-equal row
        j, i = np.nonzero(sims > threshold)
        j += s
        earlier = i < j
        pi.append(i[earlier])
        pj.append(j[earlier])
        ps.append(sims[j[earlier] - s, i[earlier]])
    i, j, sim = np.concatenate(pi), np.concatenate(pj), np.concatenate(ps)
    if not len(j):
        return kept, dup_of, dup_cos
    order = np.lexsort((i, j))
    i, j, sim = i[order], j[order], sim[order]
    starts = np.flatnonzero(np.r_[True, j[1:] != j[:-1]])
    ends = np.r_[starts[1:], len(j)]
    # walk later rows in order: a row is a duplicate only of rows still kept
    for a, b in zip(starts, ends):
        cand = i[a:b]
        alive = kept[cand]
        if alive.any():
            best = np.argmax(np.where(alive, sim[a:b], -np.inf))
            row = j[a]
            kept[row] = False
            dup_of[row] = cand[best]
            dup_cos[row] = sim[a + best]
    return kept, dup_of, dup_cos


def semdedup(emb: np.ndarray, priority: np.ndarray, eps: float, k: int, seed: int,
             max_iter: int = 20, track=None) -> dict[str, np.ndarray]:
    """SemDeDup over normalised embeddings. Returns per-row arrays: keep, dup_of (row or -1),
    dup_cosine, cluster; plus timings under 'seconds'."""
    n = len(emb)
    t0 = time.perf_counter()
    labels = cluster(emb, k, seed, max_iter)
    t1 = time.perf_counter()
    keep = np.ones(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    dup_cos = np.full(n, np.nan, dtype=np.float32)
    # group rows by cluster, each cluster in priority order
    order = np.lexsort((priority, labels))
    bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    groups = list(zip(bounds[:-1], bounds[1:]))
    it = track(groups, "semantic dedup clusters", total=len(groups)) if track else groups
    for a, b in it:
        rows = order[a:b]
        if len(rows) < 2:
            continue
        k_, d_, c_ = _dedup_cluster(emb[rows], 1.0 - eps)
        keep[rows] = k_
        has = d_ >= 0
        dup_of[rows[has]] = rows[d_[has]]
        dup_cos[rows] = c_
    return {"keep": keep, "dup_of": dup_of, "dup_cosine": dup_cos, "cluster": labels,
            "seconds": np.array([t1 - t0, time.perf_counter() - t1])}


def default_clusters(n: int, cluster_size: int) -> int:
    return max(1, math.ceil(n / cluster_size))


def semantic_dedup(df: pl.DataFrame, opts: SemanticDedupOptions, ctx: StepContext) -> tuple[pl.DataFrame, pl.DataFrame]:
    check_score_column(STAGE, opts.keep, opts.score_column, df.columns)  # fail fast before embedding
    if df.is_empty():
        return df, reject(df.with_columns(pl.lit(None, pl.Utf8).alias("duplicate_of"),
                                          pl.lit(None, pl.Float32).alias("dup_cosine")), STAGE, "")
    # the reference rows lead and are walked first; only df's rows get verdicts
    columns = ["id", opts.column] + ([opts.score_column] if opts.keep == "quality" else [])
    rows, n_ref = with_reference(df, ctx.reference, columns)
    priority = keep_priority(rows, opts.keep, opts.score_column, opts.column, n_ref)
    n = len(rows)
    emb = embed_column(rows, opts.column, opts.embedding, ctx)
    k = opts.n_clusters or default_clusters(n, opts.cluster_size)
    seed = ctx.seed if opts.seed is None else opts.seed
    res = semdedup(emb, priority, opts.eps, k, seed, opts.kmeans_iter, ctx.track)
    dup_of = res["dup_of"][n_ref:]
    is_dup = dup_of >= 0
    kept, rejected = split_semantic(df.with_columns(
        pl.when(pl.Series(is_dup)).then(rows["id"].gather(np.maximum(dup_of, 0))).alias("duplicate_of"),
        pl.Series("dup_cosine", res["dup_cosine"][n_ref:], dtype=pl.Float32),
    ))
    ctx.stats.update(semdedup_figures(res, n, k, len(rejected), opts.eps))
    if n_ref:
        ctx.stats["against_reference"] = against_reference(ctx.reference, rejected, len(df), opts.keep,
                                                           column=opts.column, score_column=opts.score_column)
    return kept, rejected


def semdedup_figures(res: dict[str, np.ndarray], rows: int, k: int, duplicates: int, eps: float) -> dict:
    """The step's figures, on both executors."""
    sizes = np.bincount(res["cluster"])
    return {"rows": rows, "clusters": int(k), "largest_cluster": int(sizes.max()), "duplicates": duplicates,
            "threshold_cosine": round(1.0 - eps, 6),
            "kmeans_seconds": round(float(res["seconds"][0]), 3), "compare_seconds": round(float(res["seconds"][1]), 3)}

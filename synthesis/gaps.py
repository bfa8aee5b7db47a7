"""`target: gaps`: seed edge cases from what the curated set lacks.

The raw pool is what entered the run's first embedding step (`embed_quality` or `semantic_dedup`:
their vectors are in the embedding cache, so nothing is embedded twice), minus the held-out rows
(`heldout.parquet` of the run: generation is never seeded from them) and minus the curated rows
themselves. Spherical k-means (semantic_dedup's clustering) splits pool + curated rows into
`gap_clusters` clusters. A cluster whose share of the curated set is below its share of the pool
is under-represented; the n cases are shared out over those clusters in proportion to the
shortfall (largest remainders), and each case is built on, and shown examples from, raw-pool rows
of its cluster.

Not done: seeding from the curated rows with the student's highest loss where an adapter exists.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from curation.semantic_dedup import cluster


def raw_pool(ctx) -> pl.DataFrame:
    """The rows the run's first embedding step read, minus the held-out rows; a clear error if none ran."""
    source = next(iter(ctx.embedded_inputs), None)
    if source is None:
        raise ValueError("synthesize target: gaps needs embeddings of the raw pool: add an `embed_quality` or "
                         "`semantic_dedup` step before synthesize (it embeds the pool the gaps are measured in)")
    pool = pl.read_parquet(source)
    held = ctx.run_dir / "heldout.parquet" if ctx.run_dir is not None else None
    if held is not None and held.exists():
        h = pl.read_parquet(held)
        pool = pool.filter(~pl.col("id").is_in(h["id"].implode()) & ~pl.col("text").is_in(h["text"].implode()))
    return pool


def shares(labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels, minlength=k) / max(1, len(labels))


def allocate(deficit: np.ndarray, n: int) -> np.ndarray:
    """n cases over clusters in proportion to their positive shortfall (largest remainders)."""
    w = np.clip(deficit, 0, None)
    if w.sum() == 0:
        return np.zeros(len(deficit), dtype=np.int64)
    raw = n * w / w.sum()
    out = np.floor(raw).astype(np.int64)
    for j in np.argsort(-(raw - out), kind="stable")[: n - out.sum()]:
        out[j] += 1
    return out


def gap_seeds(curated: pl.DataFrame, pool: pl.DataFrame, n: int, k: int, seed: int, embed
              ) -> tuple[pl.DataFrame, list[list[int]], list[int], dict]:
    """(the raw-pool rows to seed from; per case, the indices into them to draw its seed and
    examples from, and its cluster; the report: each seeded cluster's shares, cases and an example)."""
    pool = pool.filter(~pl.col("id").is_in(curated["id"].implode()))
    if pool.height == 0:
        raise ValueError("synthesize target: gaps: every row of the raw pool is already curated; nothing to aim at")
    emb_pool = embed(pool["text"].fill_null("").to_list())
    emb_cur = embed(curated["text"].fill_null("").to_list())
    k = max(1, min(k, pool.height))
    labels = cluster(np.vstack([emb_pool, emb_cur]), k, seed)
    lp, lc = labels[: pool.height], labels[pool.height:]
    pool_share, cur_share = shares(lp, k), shares(lc, k)
    cases = allocate(pool_share - cur_share, n)
    if cases.sum() < n:  # no shortfall anywhere (the curated set mirrors the pool): spread evenly
        cases = allocate(pool_share, n)
    members = {j: np.flatnonzero(lp == j).tolist() for j in range(k)}
    case_cluster = [int(j) for j in np.flatnonzero(cases) for _ in range(cases[j])]
    per_case = [members[j] for j in case_cluster]
    prompts = pool["messages"].to_list()
    report = {"clusters": k, "pool_rows": pool.height, "curated_rows": curated.height, "seeded": [
        {"cluster": int(j), "pool_share": round(float(pool_share[j]), 4), "curated_share": round(float(cur_share[j]), 4),
         "cases": int(cases[j]), "example": _first_user(prompts[members[j][0]])[:120]}
        for j in np.argsort(cur_share - pool_share) if cases[j] > 0]}
    return pool, per_case, case_cluster, report


def _first_user(messages) -> str:
    for m in messages or []:
        if m["role"] == "user":
            return " ".join(m["content"].split())
    return ""

"""Embeddings on Ray: actors hold the model; SemDeDup's k-means and comparisons run on the driver.

Actors (`ray.embed_actors` of them) embed shard after shard with `curation.embed.embed_texts`
(the local function: same model, precision, cache). The driver then receives only positions,
vectors and the few columns the keep rule reads — never the texts — and runs the local
`curation.semantic_dedup.semdedup` on them, with the local keep rule (`curation.keep.keep_rank`),
so the clusters and the kept rows are the local executor's. Its limit: the driver holds rows × dim float32 (384 × 4 bytes a row for MiniLM:
1.5 GB per million rows); docs/scale-out.md says so. Reference rows (`ctx.reference`) are embedded
by the actors from shards of their own and put first, in their order, as the local step has them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from curation.keep import check_score_column, keep_rank
from curation.semantic_dedup import (STAGE, SemanticDedupOptions, default_clusters, semdedup, semdedup_figures,
                                     split_semantic)
from curation.step import StepContext
from pond.executors.ray_exec import reference_figures, reference_first
from pond.executors.shards import POS, count_rows, output_columns, read_shard


class EmbedActor:
    def __init__(self, column: str, score: str | None, options, cache_dir: str):
        self.column, self.score, self.options, self.cache_dir = column, score, options, Path(cache_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from curation.embed import embed_texts

        out = []
        for path in batch["path"]:
            df = read_shard(Path(path), columns=["id", self.column] + ([self.score] if self.score else []))
            if df.is_empty():
                continue
            vecs = embed_texts(df[self.column].fill_null("").to_list(), self.options, self.cache_dir)
            out.append(pa.table({
                POS: df[POS].to_arrow(), "id": df["id"].to_arrow(),
                "len": df[self.column].fill_null("").str.len_chars().cast(pl.Int64).to_arrow(),
                "score": (df[self.score].cast(pl.Float64) if self.score else pl.Series([None] * len(df), dtype=pl.Float64)).to_arrow(),
                "emb": pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float32).reshape(-1)), vecs.shape[1]),
            }))
        return pa.concat_tables(out) if out else pa.table({})


def _embedded(ex, opts: SemanticDedupOptions, inputs, score: str | None,
              cache_dir: Path) -> tuple[pl.DataFrame, np.ndarray]:
    """(positions, ids, lengths and scores; embeddings) of every row the actors embedded, unordered."""
    ds = inputs.map_batches(
        EmbedActor, batch_size=1, batch_format="numpy", concurrency=ex.config.embed_actors,
        fn_constructor_kwargs={"column": opts.column, "score": score, "options": opts.embedding,
                               "cache_dir": str(cache_dir)})
    parts = [b for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    if not parts:
        return pl.DataFrame(), np.zeros((0, 0), dtype=np.float32)
    table = pa.concat_tables(parts)
    emb = np.asarray(table.column("emb").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                     dtype=np.float32).reshape(table.num_rows, -1)
    return pl.from_arrow(table.drop(["emb"])), emb


def _verdicts(info: pl.DataFrame, emb: np.ndarray, opts: SemanticDedupOptions, ctx: StepContext, base: int | None,
              score: str | None) -> tuple[pl.DataFrame, dict]:
    """SemDeDup on the driver, rows in the local step's order: (verdicts of the input's duplicates, figures)."""
    # the reference rows first, then the input's, each in position order (preserve_order keeps it already)
    order = info.with_row_index("__i").sort(reference_first(base))["__i"].to_numpy()
    info, emb = info[order], emb[order]
    ref = np.zeros(len(info), dtype=bool) if base is None else (info[POS] >= base).to_numpy()
    prio = keep_rank(opts.keep, info["len"], info["score"] if score else None, None if base is None else ref)
    k = opts.n_clusters or default_clusters(len(info), opts.cluster_size)
    seed = ctx.seed if opts.seed is None else opts.seed
    res = semdedup(emb, prio, opts.eps, k, seed, opts.kmeans_iter)
    is_dup = (res["dup_of"] >= 0) & ~ref
    verdicts = pl.DataFrame({
        POS: info[POS].filter(pl.Series(is_dup)),
        "duplicate_of": info["id"].gather(res["dup_of"][is_dup]),
        "dup_cosine": pl.Series(res["dup_cosine"][is_dup], dtype=pl.Float32),
    })
    return verdicts, semdedup_figures(res, len(info), k, int(is_dup.sum()), opts.eps)


def semantic_dedup_ray(ex, opts: SemanticDedupOptions, prev: Path, step_dir: Path, ctx: StepContext):
    import ray.data

    check_score_column(STAGE, opts.keep, opts.score_column, output_columns(prev))
    score = opts.score_column if opts.keep == "quality" else None
    ref, base = ex.write_reference(ctx, prev, step_dir, ["id", opts.column] + ([score] if score else []))
    info, emb = _embedded(ex, opts, ex.shards(prev, ref), score, ctx.cache_dir)
    vdir = step_dir / "_verdicts"
    figures = {"rows": len(info)}
    if len(info):
        verdicts, figures = _verdicts(info, emb, opts, ctx, base, score)
        ex.write_verdicts(ray.data.from_arrow(verdicts.to_arrow()), vdir)
    rows = ex.apply_verdicts(prev, step_dir, vdir, split_semantic, {},
                             {"duplicate_of": "Utf8", "dup_cosine": "Float32"})
    figures["docs"] = count_rows(prev)
    figures.update(reference_figures(ctx, prev, step_dir, opts.keep, column=opts.column,
                                     score_column=opts.score_column))
    return rows, figures

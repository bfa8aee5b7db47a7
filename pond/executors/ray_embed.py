"""Embeddings on Ray: actors hold the model; SemDeDup's k-means and comparisons run on the driver.

Actors (`ray.embed_actors` of them) embed shard after shard with `curation.embed.embed_texts`
(the local function: same model, precision, cache). The driver then receives only positions,
vectors and the few columns the keep rule reads — never the texts — and runs the local
`curation.semantic_dedup.semdedup` on them, with the local keep rule (`curation.keep.keep_rank`),
so the clusters and the kept rows are the local executor's. Its limit: the driver holds rows × dim float32 (384 × 4 bytes a row for MiniLM:
1.5 GB per million rows); docs/scale-out.md says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from curation.keep import check_score_column, keep_rank
from curation.semantic_dedup import STAGE, SemanticDedupOptions, default_clusters, semdedup, split_semantic
from curation.step import StepContext
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


def semantic_dedup_ray(ex, opts: SemanticDedupOptions, prev: Path, step_dir: Path, ctx: StepContext):
    import ray.data

    check_score_column(STAGE, opts.keep, opts.score_column, output_columns(prev))
    score = opts.score_column if opts.keep == "quality" else None
    ds = ex.shards(prev).map_batches(
        EmbedActor, batch_size=1, batch_format="numpy", concurrency=ex.config.embed_actors,
        fn_constructor_kwargs={"column": opts.column, "score": score, "options": opts.embedding,
                               "cache_dir": str(ctx.cache_dir)})
    parts = [b for b in ds.iter_batches(batch_size=None, batch_format="pyarrow") if b.num_rows]
    n = sum(b.num_rows for b in parts)
    vdir = step_dir / "_verdicts"
    figures = {"rows": n}
    if n:
        table = pa.concat_tables(parts)
        emb = np.asarray(table.column("emb").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                         dtype=np.float32).reshape(n, -1)
        info = pl.from_arrow(table.drop(["emb"]))
        order = np.argsort(info[POS].to_numpy(), kind="stable")  # row order (preserve_order keeps it already)
        info, emb = info[order], emb[order]
        prio = keep_rank(opts.keep, info["len"], info["score"] if score else None)
        k = opts.n_clusters or default_clusters(n, opts.cluster_size)
        seed = ctx.seed if opts.seed is None else opts.seed
        res = semdedup(emb, prio, opts.eps, k, seed, opts.kmeans_iter)
        is_dup = res["dup_of"] >= 0
        verdicts = pl.DataFrame({
            POS: info[POS].filter(pl.Series(is_dup)),
            "duplicate_of": info["id"].gather(res["dup_of"][is_dup]),
            "dup_cosine": pl.Series(res["dup_cosine"][is_dup], dtype=pl.Float32),
        })
        ex.write_verdicts(ray.data.from_arrow(verdicts.to_arrow()), vdir)
        sizes = np.bincount(res["cluster"])
        figures.update({"clusters": int(k), "largest_cluster": int(sizes.max()), "duplicates": int(is_dup.sum()),
                        "threshold_cosine": round(1.0 - opts.eps, 6),
                        "kmeans_seconds": round(float(res["seconds"][0]), 3),
                        "compare_seconds": round(float(res["seconds"][1]), 3)})
    rows = ex.apply_verdicts(prev, step_dir, vdir, split_semantic, {},
                             {"duplicate_of": "Utf8", "dup_cosine": "Float32"})
    figures["docs"] = count_rows(prev)
    return rows, figures

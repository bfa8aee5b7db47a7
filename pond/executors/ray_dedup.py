"""Exact and MinHash deduplication on Ray Data, with the local executor's results.

Nothing here holds all rows, pairs or edges on the driver; large data only moves through Ray's
shuffles (group-bys on a partition column, joins, a sort). A `groupby(part).map_groups` call gets
every row of one hash partition, which polars then groups exactly like the local step.

exact_dedup: normalised-text key (two 64-bit polars hashes) -> shuffle by key -> per key the row
with the smallest position stays -> verdicts (position, duplicate_of) -> joined back per shard.

Reference rows (`ctx.reference`) travel as shards of their own after the input's
(`RayExecutor.write_reference`): they are keyed, banded and compared like input rows, come first
in every group (the local step's rule), and get no verdicts applied, so they are never output.

minhash_dedup (curation.minhash, same signatures, bands and rules):
  1. per shard: band keys of every row (`band_keys`, the local batch function);
  2. shuffle on band hash -> per (band, key) bucket: candidate pairs (ids a < b; a bucket over
     max_bucket_size pairs each member with its smallest id only); shuffle on the pair -> unique;
  3. exact verification: two joins attach both texts, Jaccard of the shingle sets per pair;
  4. connected components of the verified pairs by min-label propagation (labels: ids), one join
     and one shuffle per round until no label changes;
  5. shuffle on the component label -> the keeper by the local rule (first / longest / quality);
  6. verdicts sorted by position and applied shard by shard.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curation.exact_dedup import ExactDedupOptions, duplicate_groups, duplicate_of, key_hashes, split_exact
from curation.keep import check_score_column, keeper
from curation.minhash import STAGE as MH_STAGE
from curation.minhash import MinhashDedupOptions, band_keys, bucket_pairs, lsh_params, split_near_duplicates
from curation.minhash_signatures import pair_jaccard, sorted_sets
from curation.shingles import shingle_hashes
from curation.step import StepContext
from pond.executors.config import AGGREGATOR_CPUS
from pond.executors.ray_exec import is_reference, reference_figures, reference_first
from pond.executors.shards import POS, count_rows, output_columns, read_shard, scan_output
from pond.executors.verdicts import verdicts_for

PART = "__part"


def _part(expr: pl.Expr, n: int) -> pl.Expr:
    return (expr.hash(seed=7) % n).cast(pl.Int64).alias(PART)


def _frames(batch: dict[str, np.ndarray], columns: list[str] | None) -> list[pl.DataFrame]:
    return [read_shard(Path(p), columns=columns) for p in batch["path"]]


# --- exact ----------------------------------------------------------------------------------------

def _exact_keys(batch, opts: ExactDedupOptions, parts: int) -> pa.Table:
    out = [key_hashes(df, opts, POS, "id").with_columns(_part(pl.col("k1"), parts))
           for df in _frames(batch, [opts.column, "id"])]
    return pl.concat(out).to_arrow()


def _exact_group(table: pa.Table, base: int | None) -> pa.Table:
    """One hash partition of keys -> verdicts (position, duplicate_of) for its duplicates; reference
    rows (from position `base`) before the input's, as the local step has them."""
    df = pl.from_arrow(table).with_columns(
        duplicate_of(["k1", "k2"], order=reference_first(base)).alias("duplicate_of"))
    dups = df.filter(pl.col("duplicate_of").is_not_null())
    return dups.select(pl.col(POS).cast(pl.Int64), pl.col("duplicate_of").cast(pl.Utf8)).to_arrow()


def exact_dedup_ray(ex, opts, prev: Path, step_dir: Path, ctx: StepContext):
    p = ex.partitions
    ref, base = ex.write_reference(ctx, prev, step_dir, ["id", opts.column])
    keys = ex.shards(prev, ref).map_batches(_exact_keys, batch_size=1, batch_format="numpy", fn_kwargs={"opts": opts, "parts": p})
    verdicts = keys.groupby(PART, num_partitions=p).map_groups(_exact_group, batch_format="pyarrow",
                                                               fn_kwargs={"base": base})
    vdir = step_dir / "_verdicts"
    ex.write_verdicts(verdicts, vdir)
    rows = ex.apply_verdicts(prev, step_dir, vdir, split_exact, {}, {"duplicate_of": "Utf8"})
    rej = scan_output(step_dir / "rejected.parquet", ["duplicate_of"]) if (step_dir / "rejected.parquet").exists() \
        else pl.DataFrame({"duplicate_of": []})
    return rows, {"duplicate_groups": duplicate_groups(rej["duplicate_of"]), **reference_figures(ctx, prev, step_dir)}


# --- minhash: candidates ----------------------------------------------------------------------------

def _mh_bands(batch, opts: MinhashDedupOptions, seed: int, bands: int, rows: int, parts: int) -> pa.Table:
    out = []
    for df in _frames(batch, [opts.column, "id"]):
        keys, has = band_keys(df[opts.column], opts, seed, bands, rows)
        docs = np.flatnonzero(has)
        n = len(docs)
        band = np.tile(np.arange(bands, dtype=np.int32), n)
        key = keys[docs].reshape(-1)
        part = ((key ^ (band.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))) % np.uint64(parts)).astype(np.int64)
        out.append(pl.DataFrame({"band": band, "key": key, POS: np.repeat(df[POS].to_numpy()[docs], bands),
                                 "id": np.repeat(df["id"].to_numpy()[docs], bands), PART: part,
                                 "nosh": np.zeros(n * bands, dtype=np.int64)}))
        if n < len(df):  # one marker row per document without shingles (counted, never paired)
            out.append(pl.DataFrame({"band": np.full(len(df) - n, -1, dtype=np.int32),
                                     "key": np.zeros(len(df) - n, dtype=np.uint64),
                                     POS: np.full(len(df) - n, -1, dtype=np.int64), "id": [""] * (len(df) - n),
                                     PART: np.zeros(len(df) - n, dtype=np.int64),
                                     "nosh": np.ones(len(df) - n, dtype=np.int64)}))
    return pl.concat(out).to_arrow() if out else pa.table({})


PAIR_SCHEMA = {"id_a": pl.Utf8, "id_b": pl.Utf8, "pos_a": pl.Int64, "pos_b": pl.Int64, PART: pl.Int64}


def _mh_pairs(table: pa.Table, max_bucket: int, parts: int) -> pa.Table:
    """One hash partition of band keys -> candidate pairs, by the local bucket rule."""
    members = pl.from_arrow(table).filter(pl.col("band") >= 0).select("band", "key", "id", POS)
    out = (bucket_pairs(members, ["band", "key"], "id", max_bucket)
           .select("id_a", "id_b", pl.col(f"{POS}_a").alias("pos_a"), pl.col(f"{POS}_b").alias("pos_b")).unique())
    return out.with_columns(_part(pl.col("pos_a") * 1_000_003 + pl.col("pos_b"), parts)).cast(PAIR_SCHEMA).to_arrow()


def _unique_pairs(table: pa.Table) -> pa.Table:
    return pl.from_arrow(table).unique(["pos_a", "pos_b"]).drop(PART).to_arrow()


def _endpoints(table: pa.Table) -> pa.Table:
    df = pl.from_arrow(table)
    return pl.concat([df["pos_a"], df["pos_b"]]).unique().alias(POS).to_frame().to_arrow()


def _docs(batch, column: str, score: str | None, side: str, candidates: str) -> pa.Table:
    cols = [column, "id"] + ([score] if score else [])
    out = []
    for df in _frames(batch, cols):
        # only rows that are in some candidate pair travel through the joins
        cand = verdicts_for(Path(candidates), int(df[POS].min()), int(df[POS].max())) if len(df) else None
        df = df.filter(pl.col(POS).is_in(cand[POS].implode())) if cand is not None else df.clear()
        out.append(df.select(pl.col(POS).alias(f"pos_{side}"), pl.col(column).fill_null("").alias(f"text_{side}"),
                             pl.col(column).fill_null("").str.len_chars().cast(pl.Int64).alias(f"len_{side}"),
                             (pl.col(score).cast(pl.Float64) if score else pl.lit(None, pl.Float64)).alias(f"score_{side}")))
    return pl.concat(out).to_arrow()


def _verify(table: pa.Table, ngram: int, shingle: str) -> pa.Table:
    df = pl.from_arrow(table)
    k = len(df)
    if k == 0:
        return df.drop("text_a", "text_b").with_columns(pl.lit(0.0).alias("jaccard")).to_arrow()
    texts = pl.concat([df["text_a"], df["text_b"]])
    sets = sorted_sets(*shingle_hashes(texts, ngram, shingle))
    jac = pair_jaccard(sets, np.arange(k), np.arange(k) + k)
    return df.drop("text_a", "text_b").with_columns(pl.Series("jaccard", jac)).to_arrow()


# --- minhash: components and keepers -----------------------------------------------------------------

NODE_SCHEMA = {POS: pl.Int64, "id": pl.Utf8, "len": pl.Int64, "score": pl.Float64, "label": pl.Utf8,
               "jac": pl.Float64, "own": pl.Boolean}


def _seed_nodes(table: pa.Table, threshold: float, parts: int) -> pa.Table:
    """Round 0 from verified edges: each endpoint's own row and the other endpoint's id as a message."""
    e = pl.from_arrow(table).filter(pl.col("jaccard") >= threshold)
    rows = []
    for me, other in (("a", "b"), ("b", "a")):
        rows.append(e.select(pl.col(f"pos_{me}").alias(POS), pl.col(f"id_{me}").alias("id"),
                             pl.col(f"len_{me}").alias("len"), pl.col(f"score_{me}").alias("score"),
                             pl.col(f"id_{me}").alias("label"), pl.col("jaccard").alias("jac"), pl.lit(True).alias("own")))
        rows.append(e.select(pl.col(f"pos_{me}").alias(POS), pl.lit(None, pl.Utf8).alias("id"),
                             pl.lit(None, pl.Int64).alias("len"), pl.lit(None, pl.Float64).alias("score"),
                             pl.col(f"id_{other}").alias("label"), pl.col("jaccard").alias("jac"),
                             pl.lit(False).alias("own")))
    return pl.concat([r.cast(NODE_SCHEMA) for r in rows]).with_columns(_part(pl.col(POS), parts)).to_arrow()


def _reduce_nodes(table: pa.Table) -> pa.Table:
    """Per node: smallest label among its own and its messages; whether it changed."""
    df = pl.from_arrow(table)
    own = df.filter("own").group_by(POS).agg(pl.col("id").first(), pl.col("len").first(), pl.col("score").first(),
                                             pl.col("label").min().alias("old"), pl.col("jac").max())
    new = df.group_by(POS).agg(pl.col("label").min().alias("label"), pl.col("jac").max().alias("jac_all"))
    out = own.join(new, on=POS).select(POS, "id", "len", "score", "label",
                                       pl.max_horizontal("jac", "jac_all").alias("jac"),
                                       (pl.col("label") < pl.col("old")).cast(pl.Int64).alias("changed"))
    return out.to_arrow()


def _messages(table: pa.Table, parts: int) -> pa.Table:
    """Joined (edge, label of its source) rows -> label messages to the destination."""
    df = pl.from_arrow(table)
    msgs = df.select(pl.col("dst").alias(POS), pl.lit(None, pl.Utf8).alias("id"), pl.lit(None, pl.Int64).alias("len"),
                     pl.lit(None, pl.Float64).alias("score"), pl.col("label"), pl.lit(None, pl.Float64).alias("jac"),
                     pl.lit(False).alias("own")).cast(NODE_SCHEMA)
    return msgs.with_columns(_part(pl.col(POS), parts)).to_arrow()


def _as_own(table: pa.Table, parts: int) -> pa.Table:
    df = pl.from_arrow(table).drop("changed").with_columns(pl.lit(True).alias("own")).cast(NODE_SCHEMA)
    return df.with_columns(_part(pl.col(POS), parts)).to_arrow()


def _directed(table: pa.Table, threshold: float) -> pa.Table:
    e = pl.from_arrow(table).filter(pl.col("jaccard") >= threshold)
    return pl.concat([e.select(pl.col("pos_a").alias("src"), pl.col("pos_b").alias("dst")),
                      e.select(pl.col("pos_b").alias("src"), pl.col("pos_a").alias("dst"))]).to_arrow()


def _labels(table: pa.Table) -> pa.Table:
    return pl.from_arrow(table).select(pl.col(POS).alias("src"), "label").to_arrow()


def _keepers(table: pa.Table, keep: str, base: int | None) -> pa.Table:
    """One partition of component labels -> verdicts, by the local keep rule (a reference row, from
    position `base`, first)."""
    df = pl.from_arrow(table)
    if base is not None:
        df = df.with_columns(is_reference(base).alias("__ref"))
    df = df.with_columns(keeper(keep, "label", position=POS, length="len", score="score", tiebreak="id",
                                first=None if base is None else "__ref").alias("duplicate_of"))
    return df.select(pl.col(POS), pl.col("label").alias("dup_cluster"), "duplicate_of",
                     pl.col("jac").alias("dup_jaccard")).to_arrow()


def _with_part(table: pa.Table, column: str, parts: int) -> pa.Table:
    return pl.from_arrow(table).with_columns(_part(pl.col(column), parts)).to_arrow()


def _pairs_out(table: pa.Table, threshold: float) -> pa.Table:
    return pl.from_arrow(table).select("id_a", "id_b", "jaccard",
                                       (pl.col("jaccard") >= threshold).alias("duplicate")).to_arrow()


def _mh_candidates(ex, opts: MinhashDedupOptions, inputs, seed: int) -> tuple[Any, dict[str, Any]]:
    """Candidate pairs of the input (and reference) rows, and figures about how they were found."""
    bands, rows = lsh_params(opts)
    p = ex.partitions
    t0 = time.perf_counter()
    band_rows = inputs.map_batches(_mh_bands, batch_size=1, batch_format="numpy", fn_kwargs={
        "opts": opts, "seed": seed, "bands": bands, "rows": rows, "parts": p}).materialize()
    nosh = int(band_rows.sum("nosh") or 0) if band_rows.count() else 0
    t1 = time.perf_counter()
    pairs = (band_rows.groupby(PART, num_partitions=p)
             .map_groups(_mh_pairs, batch_format="pyarrow", fn_kwargs={"max_bucket": opts.max_bucket_size, "parts": p})
             .groupby(PART, num_partitions=p).map_groups(_unique_pairs, batch_format="pyarrow")).materialize()
    return pairs, {"bands": bands, "rows": rows, "docs_without_shingles": nosh, "candidate_pairs": pairs.count(),
                   "signature_seconds": round(t1 - t0, 3), "candidate_seconds": round(time.perf_counter() - t1, 3)}


def _mh_verified(ex, opts: MinhashDedupOptions, pairs, inputs, step_dir: Path):
    """Candidate pairs with their exact Jaccard (pairs.parquet written for audits)."""
    p = ex.partitions
    cdir = step_dir / "_candidates"
    ex.write_verdicts(pairs.map_batches(_endpoints, batch_format="pyarrow"), cdir)
    score = opts.score_column if opts.keep == "quality" else None
    docs = {s: inputs.map_batches(_docs, batch_size=1, batch_format="numpy", fn_kwargs={
                "column": opts.column, "score": score, "side": s, "candidates": str(cdir)})
            for s in ("a", "b")}
    agg = {"num_cpus": AGGREGATOR_CPUS}
    with_a = pairs.join(docs["a"], "inner", p, on=("pos_a",), aggregator_ray_remote_args=agg).materialize()
    verified = (with_a.join(docs["b"], "inner", p, on=("pos_b",), aggregator_ray_remote_args=agg)
                .map_batches(_verify, batch_format="pyarrow",
                             fn_kwargs={"ngram": opts.ngram, "shingle": opts.shingle})).materialize()
    verified.map_batches(_pairs_out, batch_format="pyarrow", fn_kwargs={"threshold": opts.threshold}) \
        .write_parquet(str(step_dir / "pairs.parquet"))
    return verified


def _mh_components(ex, verified, threshold: float) -> tuple[Any, int, int]:
    """Connected components of the verified edges by min-label propagation: (nodes with their
    label, or None without edges; edges; rounds)."""
    p = ex.partitions
    edges = verified.map_batches(_directed, batch_format="pyarrow", fn_kwargs={"threshold": threshold}).materialize()
    n_edges = edges.count() // 2
    if not n_edges:
        return None, 0, 0
    agg = {"num_cpus": AGGREGATOR_CPUS}
    nodes = (verified.map_batches(_seed_nodes, batch_format="pyarrow", fn_kwargs={"threshold": threshold, "parts": p})
             .groupby(PART, num_partitions=p).map_groups(_reduce_nodes, batch_format="pyarrow")).materialize()
    for rnd in range(1, ex.config.max_cc_iterations + 1):
        msgs = (edges.join(nodes.map_batches(_labels, batch_format="pyarrow"), "inner", p, on=("src",),
                           aggregator_ray_remote_args=agg)
                .map_batches(_messages, batch_format="pyarrow", fn_kwargs={"parts": p}))
        own = nodes.map_batches(_as_own, batch_format="pyarrow", fn_kwargs={"parts": p})
        nodes = (own.union(msgs).groupby(PART, num_partitions=p)
                 .map_groups(_reduce_nodes, batch_format="pyarrow")).materialize()
        if not nodes.sum("changed"):
            return nodes, n_edges, rnd
    raise RuntimeError(f"minhash_dedup: connected components did not converge in "
                       f"{ex.config.max_cc_iterations} rounds (raise ray.max_cc_iterations)")


def _mh_write_verdicts(ex, nodes, keep: str, base: int | None, vdir: Path) -> int:
    """Each component's keeper, as verdicts; returns how many clusters there are."""
    p = ex.partitions
    verdicts = (nodes.map_batches(_with_part, batch_format="pyarrow", fn_kwargs={"column": "label", "parts": p})
                .groupby(PART, num_partitions=p)
                .map_groups(_keepers, batch_format="pyarrow", fn_kwargs={"keep": keep, "base": base})).materialize()
    ex.write_verdicts(verdicts, vdir)
    return len(verdicts.unique("dup_cluster"))


def minhash_dedup_ray(ex, opts: MinhashDedupOptions, prev: Path, step_dir: Path, ctx: StepContext):
    seed = ctx.seed if opts.seed is None else opts.seed
    check_score_column(MH_STAGE, opts.keep, opts.score_column, output_columns(prev))
    score = [opts.score_column] if opts.keep == "quality" else []
    ref, base = ex.write_reference(ctx, prev, step_dir, ["id", opts.column] + score)
    inputs = ex.shards(prev, ref)
    pairs, figures = _mh_candidates(ex, opts, inputs, seed)
    t2 = time.perf_counter()
    vdir = step_dir / "_verdicts"
    n_edges = n_clusters = 0
    if figures["candidate_pairs"]:
        verified = _mh_verified(ex, opts, pairs, inputs, step_dir)
        nodes, n_edges, rounds = _mh_components(ex, verified, opts.threshold)
        if nodes is not None:
            figures["cc_rounds"] = rounds
            n_clusters = _mh_write_verdicts(ex, nodes, opts.keep, base, vdir)
    t3 = time.perf_counter()
    result = ex.apply_verdicts(prev, step_dir, vdir, split_near_duplicates, {},
                               {"dup_cluster": "Utf8", "duplicate_of": "Utf8", "dup_jaccard": "Float64"})
    figures.update({"docs": count_rows(prev) + (0 if base is None else len(ctx.reference)),
                    "verified_pairs": n_edges, "candidate_pairs_below_threshold": figures["candidate_pairs"] - n_edges,
                    "clusters": n_clusters, "duplicates": sum(r["n_rej"] for r in result),
                    "verify_and_cluster_seconds": round(t3 - t2, 3),
                    **reference_figures(ctx, prev, step_dir, opts.keep, column=opts.column,
                                        score_column=opts.score_column, tiebreak="id")})
    return result, figures

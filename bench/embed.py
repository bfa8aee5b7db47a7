"""Embeddings and semantic dedup: pond vs a plain sentence-transformers encode, in one process.

    python bench/embed.py [--texts 10000] [--chunks 10] [--dedup-rows 100000] [--threads N]

Texts: the first `--texts` non-empty ShareGPT conversations (curation.sources.iter_sharegpt),
rendered as pond renders them (most are longer than the model's 256 tokens).

Both encoders see the same texts in the same `--chunks` slices, alternating (plain, pond, plain,
pond ...), so that other load on a shared machine falls on both alike.

- plain: `SentenceTransformer(all-MiniLM-L6-v2).encode(chunk, normalize_embeddings=True)`,
  everything else default (fp32, batch 32).
- pond: `curation.embed.embed_texts(chunk, EmbeddingOptions(), fresh cache dir)`, i.e. the
  default options a recipe gets, cache writes included.
- pond_openvino (when the openvino package is installed, #30): the same with
  `EmbeddingOptions(backend="openvino")` (its IR converted before the timing, like the models' loads).
- pond_openvino_int8 (when nncf is installed, #30): `EmbeddingOptions(backend="openvino-int8")`, its IR
  quantised before the timing (the quantisation's seconds are a figure).
- pond_model2vec (when model2vec is installed, #30): `EmbeddingOptions(backend="model2vec")`, static
  embeddings distilled from the local MiniLM before the timing (the distillation's seconds are a
  figure). Its quality cost: semantic dedup (eps 0.07) and quality_diverse selection (a quarter of
  the rows, threshold 0.85, scores = text length) run on its vectors and on pond's MiniLM vectors of
  the same texts; the figures say how far the removed / chosen sets agree.

Prints one JSON line per figure: sentences/s (wall) for both and their ratio, CPU-seconds per
sentence for both, min / p1 cosine between the two, the time to get all texts again from pond's
cache (no model), and the time of SemDeDup on `--dedup-rows` synthetic 384-d embeddings (topic
clusters plus 10% planted near-duplicates: recall of those is printed too).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from curation import embed  # noqa: E402
from curation.embed import EmbeddingOptions, default_model_path, embed_texts  # noqa: E402
from curation.ingest import records_from_dicts  # noqa: E402
from curation.semantic_dedup import default_clusters, semdedup  # noqa: E402
from curation.sources import iter_sharegpt  # noqa: E402




def sharegpt_texts(n: int) -> list[str]:
    df = records_from_dicts(list(iter_sharegpt(limit=int(n * 1.05) + 50)), source="sharegpt")
    texts = [t for t in df["text"].to_list() if t.strip()]
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} ShareGPT texts available")
    return texts[:n]


def emit_minilm_arm(arm: str, opts: EmbeddingOptions, plain: np.ndarray, vecs: np.ndarray, wall: dict,
                    cpu: dict) -> None:
    """An alternative MiniLM backend's figures: speed against plain and against pond's torch path, and fidelity."""
    n, name, cos = len(plain), arm.removeprefix("pond_"), (plain * vecs).sum(1)
    emit(figure=f"{arm}_sentences_per_s", value=round(n / wall[arm], 1), texts=n,
         settings=f"EmbeddingOptions(backend='{opts.backend}') -> {embed.Embedder(opts).key}",
         dtype=embed._precision(opts, "cpu"))
    emit(figure=f"{name}_speedup_vs_plain", value=round(wall["plain"] / wall[arm], 2), target=3.0,
         vs_pond_torch=round(wall["pond"] / wall[arm], 2))
    emit(figure=f"{name}_cpu_seconds_per_sentence", plain=round(cpu["plain"] / n, 4), **{arm: round(cpu[arm] / n, 4)},
         ratio=round(cpu["plain"] / cpu[arm], 2), vs_pond_torch=round(cpu["pond"] / cpu[arm], 2))
    emit(figure=f"min_cosine_{name}_vs_plain", value=round(float(cos.min()), 5),
         p1=round(float(np.percentile(cos, 1)), 5), mean=round(float(cos.mean()), 5), target=0.99)


def bench_encode(texts: list[str], chunks: int, threads: int | None) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    if threads:
        torch.set_num_threads(threads)
    plain_model = SentenceTransformer(str(default_model_path()), device="cpu")
    opts = EmbeddingOptions(threads=threads)
    cache = Path(tempfile.mkdtemp(prefix="pond-bench-embed-"))
    embed_texts(texts[:8], opts)  # load pond's model outside the timing (plain's is loaded above)
    arms = ["plain", "pond"]
    m2v_opts = EmbeddingOptions(backend="model2vec")
    try:
        import model2vec  # noqa: F401

        t = time.perf_counter()
        embed.Embedder(m2v_opts, cache).encode(texts[:8])  # distil outside the timing
        emit(figure="model2vec_distill_seconds", value=round(time.perf_counter() - t, 2))
        arms.append("pond_model2vec")
    except ImportError:
        pass
    arm_opts = {"pond": opts, "pond_model2vec": m2v_opts}
    openvino_arms = (("pond_openvino", "openvino", "openvino"), ("pond_openvino_int8", "openvino-int8", "nncf"))
    for arm, backend, needs in openvino_arms:
        try:
            __import__(needs)
        except ImportError:
            continue
        arm_opts[arm] = EmbeddingOptions(threads=threads, backend=backend)
        t = time.perf_counter()
        embed.Embedder(arm_opts[arm], cache).encode(texts[:8])  # convert (quantise) + compile outside the timing
        emit(figure=f"{arm.removeprefix('pond_')}_convert_compile_seconds", value=round(time.perf_counter() - t, 2))
        arms.append(arm)
    plain = np.empty((len(texts), 384), dtype=np.float32)
    ours = np.empty_like(plain)
    got = {"pond": ours, "pond_openvino": np.empty_like(plain), "pond_openvino_int8": np.empty_like(plain),
           "pond_model2vec": np.empty((len(texts), embed.M2V_DIMS), dtype=np.float32)}
    wall = {a: 0.0 for a in arms}
    cpu = {a: 0.0 for a in arms}
    bounds = np.linspace(0, len(texts), chunks + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        for name in arms:
            w, c = time.perf_counter(), time.process_time()
            if name == "plain":
                plain[a:b] = plain_model.encode(texts[a:b], normalize_embeddings=True)
            else:
                got[name][a:b] = embed_texts(texts[a:b], arm_opts[name], cache)
            wall[name] += time.perf_counter() - w
            cpu[name] += time.process_time() - c
    n = len(texts)
    if "pond_model2vec" in arms:
        emit(figure="model2vec_sentences_per_s", value=round(n / wall["pond_model2vec"], 1), texts=n,
             settings=f"EmbeddingOptions(backend='model2vec') -> {embed.Embedder(m2v_opts).key}",
             speedup_vs_plain=round(wall["plain"] / wall["pond_model2vec"], 1),
             cpu_seconds_per_sentence=round(cpu["pond_model2vec"] / n, 5),
             cpu_ratio_vs_plain=round(cpu["plain"] / max(cpu["pond_model2vec"], 1e-9), 1))
        quality_cost(texts, ours, got["pond_model2vec"])
    for arm in ("pond_openvino", "pond_openvino_int8"):
        if arm in arms:
            emit_minilm_arm(arm, arm_opts[arm], plain, got[arm], wall, cpu)
    cos = (plain * ours).sum(1)
    emit(figure="plain_encode_sentences_per_s", value=round(n / wall["plain"], 1), texts=n,
         settings="SentenceTransformer.encode defaults: fp32, batch 32", threads=torch.get_num_threads(), dtype="fp32")
    emit(figure="pond_sentences_per_s", value=round(n / wall["pond"], 1), texts=n,
         settings=f"EmbeddingOptions() -> {embed.Embedder(opts).key}", dtype=embed._precision(opts, "cpu"))
    emit(figure="speedup_vs_plain", value=round(wall["plain"] / wall["pond"], 2), target=3.0)
    emit(figure="cpu_seconds_per_sentence", plain=round(cpu["plain"] / n, 4), pond=round(cpu["pond"] / n, 4),
         ratio=round(cpu["plain"] / cpu["pond"], 2))
    emit(figure="min_cosine_pond_vs_plain", value=round(float(cos.min()), 5), p1=round(float(np.percentile(cos, 1)), 5),
         mean=round(float(cos.mean()), 5), target=0.99)
    embed._load_model.cache_clear()  # a rerun in a new process has no model loaded either
    loads, encoded = embed.counters["model_loads"], embed.counters["encoded"]
    t = time.perf_counter()
    again = embed_texts(texts, opts, cache)
    emit(figure="rerun_from_cache_seconds", value=round(time.perf_counter() - t, 3), texts=n,
         encoded=embed.counters["encoded"] - encoded, model_loads=embed.counters["model_loads"] - loads,
         identical=bool(np.array_equal(again, ours)))


def quality_cost(texts: list[str], ref: np.ndarray, static: np.ndarray) -> None:
    """How far semantic dedup and selection on static vectors agree with the same on MiniLM's."""
    from curation.selection import quality_diverse

    n = len(texts)
    k = default_clusters(n, 1000)
    dd = {name: semdedup(e, np.arange(n), eps=0.07, k=k, seed=0)["keep"] for name, e in
          (("minilm", ref), ("model2vec", static))}
    rm_a, rm_b = ~dd["minilm"], ~dd["model2vec"]
    emit(figure="model2vec_semdedup_agreement", rows=n, eps=0.07, clusters=k,
         removed_minilm=int(rm_a.sum()), removed_model2vec=int(rm_b.sum()),
         removed_both=int((rm_a & rm_b).sum()),
         same_decision_fraction=round(float((dd["minilm"] == dd["model2vec"]).mean()), 4),
         removed_jaccard=round(float((rm_a & rm_b).sum() / max((rm_a | rm_b).sum(), 1)), 4))
    scores = np.array([len(t) for t in texts], dtype=np.float64)
    pick = max(1, n // 4)
    sel = {name: set(quality_diverse(e, scores, pick, 0.85, 0.02)[0].tolist())
           for name, e in (("minilm", ref), ("model2vec", static))}
    emit(figure="model2vec_selection_agreement", rows=n, chosen=pick, threshold=0.85,
         chosen_in_both_fraction=round(len(sel["minilm"] & sel["model2vec"]) / pick, 4))
    # neighbour structure: how often the static model's nearest neighbour is MiniLM's
    sa, sb = ref @ ref.T, static @ static.T
    np.fill_diagonal(sa, -2)
    np.fill_diagonal(sb, -2)
    emit(figure="model2vec_nearest_neighbour_agreement", rows=n,
         value=round(float((sa.argmax(1) == sb.argmax(1)).mean()), 4))


def bench_static_quality(texts: list[str]) -> None:
    """model2vec's quality cost on more rows than the timed comparison affords: pond's default MiniLM
    vectors and model2vec's of the same texts (no plain encode), then quality_cost's figures."""
    cache = Path(tempfile.mkdtemp(prefix="pond-bench-static-"))
    t = time.perf_counter()
    ref = embed_texts(texts, EmbeddingOptions(), cache)
    ref_s = time.perf_counter() - t
    m2v = EmbeddingOptions(backend="model2vec")
    embed.Embedder(m2v, cache).encode(texts[:8])  # distil outside the timing
    t = time.perf_counter()
    static = embed_texts(texts, m2v, cache)
    emit(figure="static_quality_sample", texts=len(texts), minilm_seconds=round(ref_s, 1),
         model2vec_seconds=round(time.perf_counter() - t, 2), load_avg_1m=round(os.getloadavg()[0], 2))
    quality_cost(texts, ref, static)


def bench_semdedup(rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    d = 384
    centres = rng.normal(size=(300, d)).astype(np.float32)
    emb = centres[rng.integers(0, 300, rows)] + rng.normal(size=(rows, d)).astype(np.float32)
    planted = rows // 10
    src = rng.choice(rows // 2, planted, replace=False)
    dst = np.arange(rows // 2, rows // 2 + planted)
    emb[dst] = emb[src] + rng.normal(scale=0.1, size=(planted, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    k = default_clusters(rows, 1000)
    t = time.perf_counter()
    res = semdedup(emb, np.arange(rows), eps=0.07, k=k, seed=seed)
    total = time.perf_counter() - t
    emit(figure="semantic_dedup_seconds", value=round(total, 2), rows=rows, clusters=k,
         kmeans_seconds=round(float(res["seconds"][0]), 2), compare_seconds=round(float(res["seconds"][1]), 2),
         removed=int((~res["keep"]).sum()), planted_recall=round(float((~res["keep"][dst]).mean()), 4), target_s=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=10_000)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--dedup-rows", type=int, default=100_000)
    ap.add_argument("--static-quality-texts", type=int, default=0,
                    help="also measure model2vec's dedup/selection agreement with MiniLM on this many texts")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    args = ap.parse_args()
    emit(figure="machine", cpus=embed.machine_threads(), load_avg_1m=round(os.getloadavg()[0], 2))
    if args.texts:
        bench_encode(sharegpt_texts(args.texts), args.chunks, args.threads)
    if args.static_quality_texts:
        bench_static_quality(sharegpt_texts(args.static_quality_texts))
    if args.dedup_rows:
        bench_semdedup(args.dedup_rows)
    emit(figure="machine_after", load_avg_1m=round(os.getloadavg()[0], 2))


if __name__ == "__main__":
    main()

"""MinHash near-duplicate removal: pond vs datasketch on one generated corpus, in one process.

    python bench/minhash.py [--docs 50000] [--words 300] [--no-baseline]

Corpus: random Zipf-distributed "words"; a fraction of documents are planted near-duplicates
(groups of 2-5 variants of one base document, each variant with 0-20 random word edits, so exact
Jaccard of 5-gram sets spreads from ~0.5 to 1 around the 0.8 threshold).

Prints one JSON line per figure:
- signatures_per_s_per_core: documents hashed to a MinHash signature per CPU-second (shingling
  included; CPU time over all threads, so it is a per-core figure whatever polars' thread count);
- e2e_docs_per_s: documents per wall second for the whole dedup (signatures, LSH, clustering;
  pond also verifies candidates exactly), its CPU seconds, and the ratios pond / datasketch (wall
  and CPU: on a shared machine the CPU ratio is the steadier one);
- precision / recall of duplicate *pairs* (Jaccard >= threshold) against exact Jaccard of the
  reference 5-gram sets, on a 5k-document sample made of whole planted groups plus random
  documents (pond: verified pairs; datasketch: MinHashLSH query results);
- peak_rss_mb after pond (the corpus included) and at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from figures import emit  # noqa: E402 (bench/ is on sys.path when a bench runs)

import numpy as np
import polars as pl
from scipy.sparse import csr_matrix

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.minhash import MinhashDedupOptions, band_keys, lsh_params, minhash_dedup  # noqa: E402
from curation.shingles import reference_shingles  # noqa: E402
from curation.step import StepContext  # noqa: E402

LETTERS = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))




def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_vocab(rng: np.random.Generator, size: int) -> np.ndarray:
    # frequent ranks get short words, like natural language
    lengths = np.clip(np.round(1 + np.log2(np.arange(size) + 2) * 0.45 + rng.normal(0, 1, size)), 1, 14).astype(int)
    words = dict.fromkeys("".join(rng.choice(LETTERS, n)) for n in lengths)  # unique, rank order kept
    return np.array(list(words))


def make_corpus(n_docs: int, n_words: int, seed: int, dup_fraction: float = 0.25) -> tuple[pl.DataFrame, np.ndarray]:
    """(frame with id/text, group id per doc: -1 for documents not planted as duplicates)."""
    rng = np.random.default_rng(seed)
    vocab = make_vocab(rng, 50_000)
    cdf = np.cumsum(1.0 / np.arange(1, len(vocab) + 1) ** 1.05)
    cdf /= cdf[-1]

    def draw(k: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(k)), len(vocab) - 1)

    marks = np.array(["", ",", ".", "!", ";"])
    groups = np.full(n_docs, -1, dtype=np.int64)
    texts: list[pl.Series] = []
    chunk: list[str] = []
    i, g = 0, 0
    while i < n_docs:
        base = draw(n_words)
        size = int(rng.integers(2, 6)) if rng.random() < dup_fraction / 3 else 1
        size = min(size, n_docs - i)
        for k in range(size):
            words = base
            if k:  # a variant: substitutions, insertions and deletions at random places
                words = base.copy()
                for _ in range(int(rng.integers(0, 21))):
                    pos, kind = int(rng.integers(0, len(words))), rng.integers(0, 3)
                    if kind == 0:
                        words[pos] = draw(1)[0]
                    elif kind == 1:
                        words = np.insert(words, pos, draw(1)[0])
                    else:
                        words = np.delete(words, pos)
            # punctuation (differs between variants; normalisation removes it)
            punct = marks[np.searchsorted([0.86, 0.94, 0.98, 0.99], rng.random(len(words)))]
            chunk.append(" ".join(np.char.add(vocab[words], punct)))
            if size > 1:
                groups[i] = g
            i += 1
        g += size > 1
        if len(chunk) >= 50_000:
            texts.append(pl.Series(chunk))
            chunk = []
    texts.append(pl.Series(chunk, dtype=pl.Utf8))
    text = pl.concat(texts)
    df = pl.DataFrame({"id": [f"doc{j:08d}" for j in range(n_docs)], "text": text})
    return df, groups


def sample_docs(groups: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Whole planted groups (about half the sample) plus random other documents."""
    rng = np.random.default_rng(seed + 1)
    planted = np.flatnonzero(groups >= 0)
    by_group = np.split(planted[np.argsort(groups[planted], kind="stable")],
                        np.flatnonzero(np.diff(np.sort(groups[planted]))) + 1) if len(planted) else []
    rng.shuffle(by_group)
    chosen: list[int] = []
    for members in by_group:
        if len(chosen) + len(members) > size // 2:
            break
        chosen.extend(members.tolist())
    rest = np.setdiff1d(np.arange(len(groups)), chosen)
    chosen.extend(rng.choice(rest, size - len(chosen), replace=False).tolist())
    return np.sort(np.array(chosen))


def exact_pairs(texts: list[str], threshold: float, ngram: int) -> set[tuple[int, int]]:
    """All pairs (i < j, sample positions) with exact Jaccard >= threshold (reference shingles)."""
    vocab: dict[tuple, int] = {}
    indptr, indices = [0], []
    for t in texts:
        cols = {vocab.setdefault(s, len(vocab)) for s in reference_shingles(t, ngram)}
        indices.extend(cols)
        indptr.append(len(indices))
    x = csr_matrix((np.ones(len(indices), dtype=np.int32), indices, indptr), shape=(len(texts), len(vocab)))
    sizes = np.diff(indptr)
    inter = (x @ x.T).tocoo()
    i, j, v = inter.row, inter.col, inter.data
    keep = i < j
    i, j, v = i[keep], j[keep], v[keep]
    jac = v / (sizes[i] + sizes[j] - v)
    return {(int(a), int(b)) for a, b in zip(i[jac >= threshold], j[jac >= threshold])}


def precision_recall(pred: set, truth: set) -> tuple[float, float]:
    tp = len(pred & truth)
    return (tp / len(pred) if pred else 1.0), (tp / len(truth) if truth else 1.0)


def run_pond(df: pl.DataFrame, opts: MinhashDedupOptions, seed: int) -> dict:
    bands, rows = lsh_params(opts)
    # signature throughput alone (same batch function the step uses)
    c0, w0 = time.process_time(), time.perf_counter()
    for s in range(0, len(df), opts.batch_size):
        band_keys(df["text"].slice(s, opts.batch_size), opts, seed, bands, rows)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StepContext(seed=seed, step_dir=Path(tmp))
        w0, c0 = time.perf_counter(), time.process_time()
        kept, rejected = minhash_dedup(df, opts, ctx)
        e2e, e2e_cpu = time.perf_counter() - w0, time.process_time() - c0
        pairs = pl.read_parquet(Path(tmp) / "pairs.parquet").filter("duplicate")
    return {"sig_cpu": cpu, "sig_wall": wall, "e2e": e2e, "e2e_cpu": e2e_cpu, "kept": len(kept), "rejected": len(rejected),
            "pairs": pairs, "stats": ctx.stats}


def run_datasketch(texts: list[str], opts: MinhashDedupOptions, seed: int) -> dict:
    from datasketch import MinHash, MinHashLSH
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    w0, c0 = time.perf_counter(), time.process_time()
    shingles = [[" ".join(s).encode() for s in reference_shingles(t, opts.ngram)] for t in texts]
    sigs = MinHash.bulk(shingles, num_perm=opts.num_perm, seed=seed)
    sig_cpu, sig_wall = time.process_time() - c0, time.perf_counter() - w0
    del shingles
    lsh = MinHashLSH(threshold=opts.threshold, num_perm=opts.num_perm)
    with lsh.insertion_session() as session:
        for i, m in enumerate(sigs):
            session.insert(i, m, check_duplication=False)
    a, b = [], []
    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            if j > i:
                a.append(i)
                b.append(j)
    n = len(texts)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    kept = len(np.unique(labels))
    e2e, e2e_cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"sig_cpu": sig_cpu, "sig_wall": sig_wall, "e2e": e2e, "e2e_cpu": e2e_cpu, "kept": kept, "a": np.array(a), "b": np.array(b),
            "bands": lsh.b, "rows": lsh.r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--words", type=int, default=300)
    ap.add_argument("--sample", type=int, default=5_000)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", action="store_true", help="skip datasketch (for very large --docs)")
    args = ap.parse_args()
    common = {"docs": args.docs, "words": args.words, "cpus": os.cpu_count(),
              "polars_threads": pl.thread_pool_size()}

    t0 = time.perf_counter()
    df, groups = make_corpus(args.docs, args.words, args.seed)
    emit(figure="corpus", seconds=round(time.perf_counter() - t0, 1), planted_groups=int(len(np.unique(groups[groups >= 0]))),
         text_mb=round(df["text"].str.len_bytes().sum() / 2**20, 1), peak_rss_mb=round(peak_rss_mb()), **common)

    opts = MinhashDedupOptions(threshold=args.threshold, num_perm=128, ngram=5)
    pond = run_pond(df, opts, args.seed)
    emit(figure="signatures_per_s_per_core", tool="pond", value=round(args.docs / pond["sig_cpu"]),
         wall_per_s=round(args.docs / pond["sig_wall"]), **common)
    emit(figure="e2e_docs_per_s", tool="pond", value=round(args.docs / pond["e2e"]), seconds=round(pond["e2e"], 2),
         cpu_seconds=round(pond["e2e_cpu"], 2),
         kept=pond["kept"], rejected=pond["rejected"], **{k: pond["stats"][k] for k in (
             "bands", "rows", "candidate_pairs", "verified_pairs", "clusters", "signature_seconds",
             "candidate_seconds", "verify_seconds")}, **common)
    emit(figure="peak_rss_mb", tool="pond", value=round(peak_rss_mb()), **common)

    sample = sample_docs(groups, min(args.sample, args.docs), args.seed) 
    if sample is not None:
        ids = df["id"]
        pos = {ids[int(d)]: k for k, d in enumerate(sample)}
        sample_texts = df["text"].gather(sample).to_list()
        truth = exact_pairs(sample_texts, args.threshold, opts.ngram)
        pp = {tuple(sorted((pos[a], pos[b]))) for a, b in pond["pairs"].select("id_a", "id_b").iter_rows()
              if a in pos and b in pos}
        p, r = precision_recall(pp, truth)
        emit(figure="pair_precision_recall", tool="pond", precision=round(p, 4), recall=round(r, 4),
             true_pairs=len(truth), predicted_pairs=len(pp), sample=len(sample), threshold=args.threshold, **common)

    if not args.no_baseline:
        texts = df["text"].to_list()
        ds = run_datasketch(texts, opts, args.seed)
        del texts
        emit(figure="signatures_per_s_per_core", tool="datasketch", value=round(args.docs / ds["sig_cpu"]),
             wall_per_s=round(args.docs / ds["sig_wall"]), **common)
        emit(figure="e2e_docs_per_s", tool="datasketch", value=round(args.docs / ds["e2e"]), seconds=round(ds["e2e"], 2),
             cpu_seconds=round(ds["e2e_cpu"], 2),
             kept=ds["kept"], bands=ds["bands"], rows=ds["rows"], candidate_pairs=len(ds["a"]), **common)
        emit(figure="ratio_pond_to_datasketch", signatures_per_core=round(ds["sig_cpu"] / pond["sig_cpu"], 2),
             e2e=round(ds["e2e"] / pond["e2e"], 2), e2e_cpu=round(ds["e2e_cpu"] / pond["e2e_cpu"], 2), **common)
        if sample is not None:
            where = np.full(args.docs, -1)
            where[sample] = np.arange(len(sample))
            sa, sb = where[ds["a"]], where[ds["b"]]
            both = (sa >= 0) & (sb >= 0)
            dp = {tuple(sorted((int(x), int(y)))) for x, y in zip(sa[both], sb[both])}
            p, r = precision_recall(dp, truth)
            emit(figure="pair_precision_recall", tool="datasketch", precision=round(p, 4), recall=round(r, 4),
                 true_pairs=len(truth), predicted_pairs=len(dp), sample=len(sample), threshold=args.threshold, **common)
    emit(figure="peak_rss_mb", tool="all", value=round(peak_rss_mb()), **common)


if __name__ == "__main__":
    main()

"""MinHash near-duplicate removal: pond vs datasketch, as a kernel on a generated corpus and end to end on a real file.

    python bench/minhash.py [--docs 50000] [--words 300] [--no-baseline]
    python bench/minhash.py --e2e [FILE] [--rounds 3] [--phases] [--exact] [--pond-tree DIR]

**End to end** (`--e2e`; FILE defaults to $POND_CACHE_DIR/data/sharegpt.jsonl, the real ShareGPT dump): the
whole command a user waits for, each in its own process, timed from outside (wall clock; CPU seconds of the
child from getrusage): `pond run` of a one-step recipe (`steps: [minhash_dedup: {threshold, num_perm, ngram}]`,
`--no-train --fresh`), and a datasketch MinHashLSH script on the same file (bench/minhash_datasketch.py: read,
render, shingle as pond does, insert/query, write the kept line numbers), with the same threshold, num_perm and
ngram. They alternate, `--rounds` times each (who goes first rotates too); `--pond-tree DIR` adds pond from
another checkout (a worktree at the commit before a change: before/after in one run). One JSON line per run,
then medians, minimums and ratios; each line carries the load average before and after (the machine may be shared:
the CPU-seconds ratio is the steadier one then) and the digests of pond's kept/rejected Parquet (the same
output, byte for byte, from run to run and before/after a change). `--phases`: one more run of each pond (this
checkout and every --pond-tree) with its phases timed (bench/minhash_phases.py), one line per phase. `--exact`: precision/recall of pond's duplicate
pairs against the exact Jaccard of every pair in the file (a prefix-filter self-join on reference shingles:
no pair at or above the threshold is missed).

**Kernel** (default): corpus of random Zipf-distributed "words"; a fraction of documents are planted
near-duplicates (groups of 2-5 variants of one base document, each variant with 0-20 random word edits, so
exact Jaccard of 5-gram sets spreads from ~0.5 to 1 around the 0.8 threshold). In one process, one JSON
line per figure:
- signatures_per_s_per_core: documents hashed to a MinHash signature per CPU-second (shingling
  included; CPU time over all threads, so it is a per-core figure whatever polars' thread count);
- e2e_docs_per_s: documents per wall second for the whole dedup in memory (signatures, LSH, clustering;
  pond also verifies candidates exactly; no process start, reading or writing: see --e2e), its CPU seconds, and the ratios pond / datasketch (wall
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
import shutil
import subprocess
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


# --- end to end: whole commands on a real file ----------------------------------------------------

BENCH = Path(__file__).resolve().parent


def default_input() -> Path:
    return Path(os.environ.get("POND_CACHE_DIR", Path.home() / ".cache" / "pond")) / "data" / "sharegpt.jsonl"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def timed_child(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command to its end: wall seconds, its CPU seconds (user + system, children included), load."""
    before, l0 = resource.getrusage(resource.RUSAGE_CHILDREN), load()
    w0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - w0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": l0, "load_after": load(),
            "stdout": proc.stdout}


def pond_recipe(folder: Path, data: Path, opts: MinhashDedupOptions) -> Path:
    recipe = folder / "minhash-only.yaml"
    recipe.write_text(f"name: minhash-only\ninput: {{path: {json.dumps(str(data))}}}\nseed: 0\nsteps:\n"
                      f"  - minhash_dedup: {{threshold: {opts.threshold}, num_perm: {opts.num_perm}, "
                      f"ngram: {opts.ngram}}}\n")
    return recipe


def pond_command(recipe: Path, run_dir: Path, tree: str | None = None) -> list[str]:
    """`pond run`; from another checkout `tree` (its folder first on PYTHONPATH) when given."""
    script = Path(sys.executable).with_name("pond")  # the console script a user types, where there is one
    # -P: the working folder is not put first on sys.path, so `tree` (on PYTHONPATH) is the pond that runs
    head = [str(script)] if script.exists() and tree is None else [sys.executable, "-P", "-m", "pond.cli"]
    return head + ["run", str(recipe), "--out", str(run_dir), "--no-train", "--fresh"]


def datasketch_command(data: Path, kept: Path, opts: MinhashDedupOptions, seed: int) -> list[str]:
    return [sys.executable, str(BENCH / "minhash_datasketch.py"), str(data), str(kept), "--threshold",
            str(opts.threshold), "--num-perm", str(opts.num_perm), "--ngram", str(opts.ngram), "--seed", str(seed)]


def step_dir(run_dir: Path) -> Path:
    return next((run_dir / "steps").glob("*-minhash_dedup"))


def output_digests(run_dir: Path) -> dict:
    """md5 of the step's kept and rejected Parquet: equal digests, byte-identical outputs."""
    import hashlib

    return {name: hashlib.md5((step_dir(run_dir) / name).read_bytes()).hexdigest()
            for name in ("kept.parquet", "rejected.parquet")}


def e2e_round(tool: str, cmd: list[str], env: dict | None, rnd: int, common: dict, after) -> dict:
    r = timed_child(cmd, env)
    emit(figure="e2e_command_seconds", tool=tool, round=rnd, wall_s=r["wall_s"], cpu_s=r["cpu_s"],
         load_before=r["load_before"], load_after=r["load_after"], **after(), **common)
    return r


def median(values: list[float]) -> float:
    return float(np.median(values))


def e2e_tools(args: argparse.Namespace, opts: MinhashDedupOptions, work: Path, data: Path) -> list[tuple]:
    """(name, command, environment, figures after a run) of every command timed: pond, pond from each
    --pond-tree checkout (`pond@<folder>`), datasketch."""
    recipe = pond_recipe(work, data, opts)
    tools = []
    for name, tree in [("pond", None)] + [(f"pond@{Path(t).name}", t) for t in args.pond_tree]:
        run_dir = work / f"run-{len(tools)}"
        env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())} if tree else None
        tools.append((name, pond_command(recipe, run_dir, tree), env, lambda d=run_dir: {
            "kept": pl.scan_parquet(d / "curated.parquet").select(pl.len()).collect().item(),
            "outputs_md5": output_digests(d)}))
    kept = work / "datasketch-kept.txt"
    tools.append(("datasketch", datasketch_command(data, kept, opts, args.seed), None,
                  lambda: {"kept": sum(1 for _ in open(kept))}))
    return tools


def run_e2e(args: argparse.Namespace, opts: MinhashDedupOptions, common: dict) -> Path:
    """Whole-command runs of every tool, in an order that rotates round by round; returns pond's run folder."""
    data = Path(args.e2e).expanduser().resolve()
    work = Path(tempfile.mkdtemp(prefix="pond-minhash-e2e-"))
    common = {**common, "input": str(data), "input_mb": round(data.stat().st_size / 2**20, 1),
              "threshold": opts.threshold, "num_perm": opts.num_perm, "ngram": opts.ngram}
    tools = e2e_tools(args, opts, work, data)
    runs: dict[str, list[dict]] = {t[0]: [] for t in tools}
    for rnd in range(args.rounds):
        for tool, cmd, env, after in tools[rnd % len(tools):] + tools[:rnd % len(tools)]:
            runs[tool].append(e2e_round(tool, cmd, env, rnd, common, after))
    wall = {t: [r["wall_s"] for r in rs] for t, rs in runs.items()}
    cpu = {t: [r["cpu_s"] for r in rs] for t, rs in runs.items()}
    for tool in (t for t in runs if t != "datasketch"):
        emit(figure="e2e_ratio_datasketch_to_pond", pond=tool, rounds=args.rounds,
             median_wall_s={t: median(wall[t]) for t in (tool, "datasketch")},
             min_wall_s={t: min(wall[t]) for t in (tool, "datasketch")},
             median_cpu_s={t: median(cpu[t]) for t in (tool, "datasketch")},
             wall_ratio_of_medians=round(median(wall["datasketch"]) / median(wall[tool]), 2),
             wall_ratio_of_minimums=round(min(wall["datasketch"]) / min(wall[tool]), 2),
             cpu_ratio_of_medians=round(median(cpu["datasketch"]) / median(cpu[tool]), 2), load_now=load(), **common)
    if args.phases:
        for k, tree in enumerate([None, *args.pond_tree]):
            run_phases(work / "minhash-only.yaml", work / f"run-phases-{k}", tree, common)
    return work / "run-0"


def run_phases(recipe: Path, run_dir: Path, tree: str | None, common: dict) -> None:
    """One more pond run (from checkout `tree` where given) with its phases timed: one line per phase
    (wall and CPU seconds)."""
    out = run_dir.with_suffix(".json")
    cmd = [sys.executable, "-P", str(BENCH / "minhash_phases.py"), str(out), *pond_command(recipe, run_dir)[-6:]]
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())} if tree else None
    r = timed_child(cmd, env)
    tool = f"pond@{Path(tree).name}" if tree else "pond"
    for phase, (wall, cpu) in json.loads(out.read_text()).items():
        emit(figure="pond_run_phase", tool=tool, phase=phase, wall_s=wall, cpu_s=cpu, load_before=r["load_before"],
             load_after=r["load_after"], **common)
    emit(figure="pond_run_phase", tool=tool, phase="whole command (outside)", wall_s=r["wall_s"], cpu_s=r["cpu_s"],
         load_before=r["load_before"], load_after=r["load_after"], **common)


def shingle_ids(texts: list[str], ngram: int) -> list[np.ndarray]:
    """Each text's distinct reference shingles as sorted 64-bit ids (Python's hash of the n-gram tuple;
    two different shingles collide with probability ~2^-64)."""
    return [np.unique(np.fromiter((hash(s) for s in reference_shingles(t, ngram)), dtype=np.int64)) for t in texts]


def prefix_candidates(sets: list[np.ndarray], threshold: float) -> pl.DataFrame:
    """Every pair (a < b) that can reach Jaccard >= threshold shares a token of both prefixes, where a set's
    prefix is its |x| - ceil(t |x|) + 1 rarest tokens (prefix filtering, Chaudhuri et al. 2006): exact."""
    sizes = np.array([len(x) for x in sets])
    doc = np.repeat(np.arange(len(sets)), sizes)
    tok = np.concatenate(sets) if sets else np.zeros(0, np.int64)
    uniq, inverse, freq = np.unique(tok, return_inverse=True, return_counts=True)
    order = np.lexsort((tok, freq[inverse], doc))  # by doc, then rarest first
    doc, tok = doc[order], tok[order]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rank = np.arange(len(doc)) - starts[doc]
    keep = rank < (sizes - np.ceil(threshold * sizes - 1e-9).astype(np.int64) + 1)[doc]
    entries = pl.DataFrame({"tok": tok[keep], "doc": doc[keep]})
    return (entries.join(entries, on="tok", suffix="_b").filter(pl.col("doc") < pl.col("doc_b"))
            .select(pl.col("doc").alias("a"), pl.col("doc_b").alias("b")).unique())


def exact_duplicate_pairs(texts: list[str], ids: list[str], threshold: float, ngram: int) -> set[tuple[str, str]]:
    """Every pair of texts whose reference shingle sets have Jaccard >= threshold, as sorted id pairs."""
    sets = shingle_ids(texts, ngram)
    cand = prefix_candidates(sets, threshold)
    out = set()
    for a, b in cand.iter_rows():
        inter = len(np.intersect1d(sets[a], sets[b], assume_unique=True))
        if inter / (len(sets[a]) + len(sets[b]) - inter) >= threshold:
            out.add(tuple(sorted((ids[a], ids[b]))))
    return out


def run_exact(run_dir: Path, opts: MinhashDedupOptions, common: dict) -> None:
    """Precision/recall of pond's duplicate pairs (pairs.parquet) against exact Jaccard of every pair of
    the rows the step compared (the ingested rows)."""
    t0 = time.perf_counter()
    rows = pl.read_parquet(run_dir / "steps" / "00-ingest" / "kept.parquet", columns=["id", "text"])
    truth = exact_duplicate_pairs(rows["text"].to_list(), rows["id"].to_list(), opts.threshold, opts.ngram)
    found = pl.read_parquet(step_dir(run_dir) / "pairs.parquet").filter("duplicate")
    pred = {tuple(sorted(p)) for p in found.select("id_a", "id_b").iter_rows()}
    p, r = precision_recall(pred, truth)
    emit(figure="pair_precision_recall_whole_file", tool="pond", precision=round(p, 4), recall=round(r, 4),
         true_pairs=len(truth), predicted_pairs=len(pred), rows=len(rows), threshold=opts.threshold,
         seconds=round(time.perf_counter() - t0, 1), **common)


def run_kernel(args: argparse.Namespace, opts: MinhashDedupOptions, common: dict) -> None:
    """Generated corpus, the step function and datasketch's loop in this process."""
    common = {**common, "docs": args.docs, "words": args.words}
    t0 = time.perf_counter()
    df, groups = make_corpus(args.docs, args.words, args.seed)
    emit(figure="corpus", seconds=round(time.perf_counter() - t0, 1), planted_groups=int(len(np.unique(groups[groups >= 0]))),
         text_mb=round(df["text"].str.len_bytes().sum() / 2**20, 1), peak_rss_mb=round(peak_rss_mb()), **common)

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
    ids = df["id"]
    pos = {ids[int(d)]: k for k, d in enumerate(sample)}
    truth = exact_pairs(df["text"].gather(sample).to_list(), args.threshold, opts.ngram)
    pp = {tuple(sorted((pos[a], pos[b]))) for a, b in pond["pairs"].select("id_a", "id_b").iter_rows()
          if a in pos and b in pos}
    p, r = precision_recall(pp, truth)
    emit(figure="pair_precision_recall", tool="pond", precision=round(p, 4), recall=round(r, 4),
         true_pairs=len(truth), predicted_pairs=len(pp), sample=len(sample), threshold=args.threshold, **common)
    if not args.no_baseline:
        kernel_baseline(args, df, opts, pond, sample, truth, common)
    emit(figure="peak_rss_mb", tool="all", value=round(peak_rss_mb()), **common)


def kernel_baseline(args: argparse.Namespace, df: pl.DataFrame, opts: MinhashDedupOptions, pond: dict,
                    sample: np.ndarray, truth: set, common: dict) -> None:
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
    where = np.full(args.docs, -1)
    where[sample] = np.arange(len(sample))
    sa, sb = where[ds["a"]], where[ds["b"]]
    both = (sa >= 0) & (sb >= 0)
    dp = {tuple(sorted((int(x), int(y)))) for x, y in zip(sa[both], sb[both])}
    p, r = precision_recall(dp, truth)
    emit(figure="pair_precision_recall", tool="datasketch", precision=round(p, 4), recall=round(r, 4),
         true_pairs=len(truth), predicted_pairs=len(dp), sample=len(sample), threshold=args.threshold, **common)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--words", type=int, default=300)
    ap.add_argument("--sample", type=int, default=5_000)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", action="store_true", help="skip datasketch (for very large --docs)")
    ap.add_argument("--e2e", nargs="?", const=str(default_input()), default=None, metavar="FILE",
                    help="whole commands on FILE (default: $POND_CACHE_DIR/data/sharegpt.jsonl)")
    ap.add_argument("--rounds", type=int, default=3, help="--e2e: runs of each command")
    ap.add_argument("--phases", action="store_true", help="--e2e: one more pond run with its phases timed")
    ap.add_argument("--exact", action="store_true", help="--e2e: precision/recall against exact Jaccard, whole file")
    ap.add_argument("--pond-tree", action="append", default=[], metavar="DIR",
                    help="--e2e: also time pond from this checkout (e.g. a git worktree before a change); repeatable")
    args = ap.parse_args()
    common = {"cpus": os.cpu_count(), "polars_threads": pl.thread_pool_size()}
    opts = MinhashDedupOptions(threshold=args.threshold, num_perm=128, ngram=5)
    if args.e2e is None:
        run_kernel(args, opts, common)
        return
    run_dir = run_e2e(args, opts, common)
    if args.exact:
        run_exact(run_dir, opts, common)
    shutil.rmtree(run_dir.parent)  # the runs' folders (each about four times the input)


if __name__ == "__main__":
    main()

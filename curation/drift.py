"""Drift of a data drop against the pond: two-sample tests and what changed.

Pure statistics on arrays and lists; `pond.drift_report` gathers the rows and writes drift.json.

- `mmd_test`: the shift in embedding space. Maximum mean discrepancy (Gretton et al. 2012) with a
  Gaussian kernel (bandwidth: the median pairwise squared distance of the pooled sample), its
  unbiased estimate, and a permutation p-value: the pooled rows are relabelled at random
  `permutations` times (seeded) and p = (1 + #{MMD_perm >= MMD_observed}) / (1 + permutations).
  Exact under the null for any sample size, so the smallest p-value is 1 / (1 + permutations).
- `length_shift`: two-sample Kolmogorov-Smirnov test on text lengths.
- `language_mix`: language shares (langid.py) and a chi-square test of homogeneity.
- `rejection_flags`: each comparable step's rejection rate against the earlier generations' pooled
  rate, by Fisher's exact test (Bonferroni over the steps).
- `cluster_changes`: k-means (semantic_dedup's spherical k-means) on pond + drop embeddings; clusters
  the drop fills but the pond barely has are new, clusters the pond has and the drop never touches are gone.
"""
from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Collection, Sequence

import numpy as np

from curation.semantic_dedup import cluster


def _sample(n: int, most: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=most, replace=False)) if n > most else np.arange(n)


def mmd_test(x: np.ndarray, y: np.ndarray, *, permutations: int = 500, seed: int = 0) -> dict:
    """MMD² of two samples (rows = vectors) with a permutation p-value."""
    nx, ny = len(x), len(y)
    if nx < 2 or ny < 2:
        return {"test": "mmd_permutation", "p_value": None, "mmd2": None, "rows": [nx, ny],
                "note": "fewer than two rows on a side: no test"}
    z = np.vstack([x, y]).astype(np.float64)
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    off = ~np.eye(len(z), dtype=bool)
    bandwidth = float(np.median(d2[off])) or 1.0
    k = np.exp(-d2 / bandwidth)
    np.fill_diagonal(k, 0.0)
    rng = np.random.default_rng(seed)
    labels = np.zeros((len(z), permutations + 1), dtype=np.float64)
    labels[:nx, 0] = 1.0
    for j in range(1, permutations + 1):
        labels[rng.permutation(len(z))[:nx], j] = 1.0
    other = 1.0 - labels
    k_labels = k @ labels
    k_other = k @ other
    xx = (labels * k_labels).sum(0) / (nx * (nx - 1))
    yy = (other * k_other).sum(0) / (ny * (ny - 1))
    xy = (labels * k_other).sum(0) / (nx * ny)
    stat = xx + yy - 2.0 * xy
    p = (1 + int(np.count_nonzero(stat[1:] >= stat[0]))) / (1 + permutations)
    return {"test": "mmd_permutation", "p_value": p, "mmd2": float(stat[0]),
            "null_mean": float(stat[1:].mean()), "permutations": permutations, "bandwidth": bandwidth,
            "rows": [nx, ny], "smallest_possible_p": 1 / (1 + permutations)}


def length_shift(pond: Sequence[int], drop: Sequence[int]) -> dict:
    from scipy.stats import ks_2samp

    if len(pond) == 0 or len(drop) == 0:
        return {"test": "ks_2samp", "p_value": None, "note": "no rows on a side"}
    res = ks_2samp(np.asarray(pond), np.asarray(drop))
    return {"test": "ks_2samp", "statistic": float(res.statistic), "p_value": float(res.pvalue),
            "pond_median_chars": float(np.median(pond)), "drop_median_chars": float(np.median(drop))}


@functools.lru_cache(maxsize=1)
def _identifier():
    import langid.langid

    if langid.langid.identifier is None:
        langid.langid.load_model()
    return langid.langid.identifier


def languages(texts: Sequence[str], chars: int = 200, batch: int = 512) -> list[str]:
    """langid.py's language code of each text (its first `chars` characters); '' for an empty text.

    langid.py's own `classify`, one matrix product for a batch of texts instead of one per text: a
    text's class is the argmax of feature counts @ log P(feature | class) + log P(class), and its
    `norm_probs` keeps the order (langid's per-text dot of uint32 counts with float weights takes
    ~6 ms, 40x the batch's share)."""
    ident = _identifier()
    snippets = [t[:chars] if t else "" for t in texts]
    todo = sorted({s for s in snippets if s.strip()})
    found: dict[str, str] = {}
    for lo in range(0, len(todo), batch):
        part = todo[lo:lo + batch]
        counts = np.vstack([ident.instance2fv(s) for s in part]).astype(np.float64)
        best = np.argmax(counts @ ident.nb_ptc + ident.nb_pc, axis=1)
        found.update((s, str(ident.nb_classes[i])) for s, i in zip(part, best))
    return [found.get(s, "") for s in snippets]


def language_mix(pond: Sequence[str], drop: Sequence[str], top: int = 8) -> dict:
    """Shares of the most frequent languages on each side and a chi-square test of homogeneity
    (languages outside the top `top` are pooled as `other`)."""
    from scipy.stats import chi2_contingency

    cp, cd = Counter(pond), Counter(drop)
    names = [lang for lang, _ in (cp + cd).most_common(top)]
    rows = [[cp[n] for n in names] + [sum(v for k, v in cp.items() if k not in names)],
            [cd[n] for n in names] + [sum(v for k, v in cd.items() if k not in names)]]
    table = np.asarray(rows, dtype=np.float64)
    table = table[:, table.sum(0) > 0]
    out = {"pond": {n: round(cp[n] / max(1, len(pond)), 4) for n in names},
           "drop": {n: round(cd[n] / max(1, len(drop)), 4) for n in names}}
    if table.shape[1] < 2 or (table.sum(1) == 0).any():
        return {**out, "test": "chi2_contingency", "p_value": None if (table.sum(1) == 0).any() else 1.0}
    res = chi2_contingency(table)
    return {**out, "test": "chi2_contingency", "statistic": float(res.statistic), "p_value": float(res.pvalue)}


def rejection_flags(current: dict[str, tuple[int, int]], earlier: dict[str, list[tuple[int, int]]],
                    tested: Collection[str], level: float = 0.01) -> dict[str, dict]:
    """Per step (rejected, in): this drop's rate against the earlier generations' pooled rate.

    Only `tested` steps are tested: those whose input is a sample of the same stage on both sides (a
    step after a dedup against the pond sees the rows that dedup left, which a fresh sample of the
    source would not). Fisher's exact test, because the pooled rate is itself an estimate (an
    interval around it as if it were the true rate fires too often when the pond is not much larger
    than the drop); Bonferroni over the tested steps, so that any step is flagged at most `level`
    of the time when nothing changed."""
    from scipy.stats import fisher_exact

    out = {}
    pooled = {step: (sum(r for r, _ in rows), sum(n for _, n in rows)) for step, rows in earlier.items()}
    testable = [s for s, (_, n) in current.items() if s in tested and n and pooled.get(s, (0, 0))[1]]
    for step, (rej, n) in current.items():
        r0, n0 = pooled.get(step, (0, 0))
        entry = {"rejected": rej, "in": n, "rate": round(rej / n, 4) if n else None,
                 "earlier_rate": round(r0 / n0, 4) if n0 else None, "tested": step in testable}
        if step in testable:
            p = float(fisher_exact([[rej, n - rej], [r0, n0 - r0]]).pvalue)
            entry.update({"test": "fisher_exact", "p_value": p, "flagged": p < level / len(testable)})
        else:
            entry["flagged"] = False
        out[step] = entry
    return out


def cluster_changes(pond: np.ndarray, drop: np.ndarray, pond_texts: Sequence[str], drop_texts: Sequence[str], *,
                    k: int = 8, seed: int = 0, min_share: float = 0.05, examples: int = 3) -> dict:
    """Clusters of pond + drop embeddings: `new` ones hold at least `min_share` of the drop and under
    a fifth of that share of the pond; `gone` ones hold at least `min_share` of the pond and no drop row."""
    if len(pond) == 0 or len(drop) == 0:
        return {"k": 0, "new": [], "gone": [], "clusters": []}
    labels = cluster(np.vstack([pond, drop]).astype(np.float32), k, seed)
    lp, ld = labels[:len(pond)], labels[len(pond):]
    rows, new, gone = [], [], []
    for c in range(int(labels.max()) + 1):
        sp, sd = float(np.mean(lp == c)), float(np.mean(ld == c))
        entry = {"cluster": c, "pond_share": round(sp, 4), "drop_share": round(sd, 4)}
        rows.append(entry)
        if sd >= min_share and sp < min_share / 5:
            new.append({**entry, "examples": [drop_texts[i][:200] for i in np.flatnonzero(ld == c)[:examples]]})
        if sp >= min_share and sd == 0:
            gone.append({**entry, "examples": [pond_texts[i][:200] for i in np.flatnonzero(lp == c)[:examples]]})
    return {"k": len(rows), "new": new, "gone": gone, "clusters": rows}


def sample_indices(n: int, most: int, seed: int) -> np.ndarray:
    """At most `most` of n rows, seeded, in row order."""
    return _sample(n, most, np.random.default_rng(seed))


def sample_keys(ids: Sequence[str], seed: int) -> np.ndarray:
    """Each row's place in the stable sample: the (seed, id) hash; the smallest are drawn."""
    import hashlib

    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little")
                     for i in ids], dtype=np.uint64)


def smallest(keys: np.ndarray, most: int) -> np.ndarray:
    """The rows (in row order) of the `most` smallest keys; ties go to the earlier row."""
    if len(keys) <= most:
        return np.arange(len(keys))
    return np.sort(np.argsort(keys, kind="stable")[:most])


def stable_sample(ids: Sequence[str], most: int, seed: int) -> np.ndarray:
    """At most `most` rows, in row order: those whose (seed, id) hash is smallest. A growing pond keeps
    most of its sample from one drop to the next, and the sample of a union is drawn from the samples
    of its parts (`smallest` of their keys), so each generation's can be kept."""
    if len(ids) <= most:
        return np.arange(len(ids))
    return smallest(sample_keys(ids, seed), most)

"""Synthetic vs real: does a synthetic batch look like the real rows of the pond?

- embeddings: a two-sample test (MMD² with a Gaussian kernel, median-heuristic bandwidth, and a
  permutation p-value: a small p says the batch is told apart from the real rows), and each
  synthetic row's cosine to its nearest real row beside the same figure for real rows among
  themselves;
- lengths: prompt and answer words, per side;
- languages: the prompts' languages (langid.py), per side;
- diversity within the batch: the mean pairwise cosine distance, synthetic vs real.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

PERMUTATIONS = 500


def two_sample(real: np.ndarray, synthetic: np.ndarray, seed: int = 0, permutations: int = PERMUTATIONS) -> dict:
    """MMD² of two embedding sets and its permutation p-value (None with fewer than 2 rows a side):
    the drift report's test (`curation.drift.mmd_test`), reported in this report's fields."""
    from curation.drift import mmd_test

    if len(real) < 2 or len(synthetic) < 2:
        return {"mmd2": None, "p_value": None, "permutations": 0}
    t = mmd_test(synthetic, real, permutations=permutations, seed=seed)
    # mmd_test's kernel is exp(-d² / bandwidth); this report gives the Gaussian sigma, bandwidth = 2 sigma²
    return {"mmd2": round(t["mmd2"], 6), "p_value": round(t["p_value"], 4), "permutations": permutations,
            "bandwidth": round(float(np.sqrt(t["bandwidth"] / 2)), 4)}


def _summary(v: np.ndarray) -> dict | None:
    if len(v) == 0:
        return None
    return {"mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4),
            "min": round(float(v.min()), 4), "max": round(float(v.max()), 4)}


def mean_pairwise_distance(emb: np.ndarray) -> float | None:
    """Mean cosine distance between distinct rows (embeddings are normalised)."""
    if len(emb) < 2:
        return None
    sims = emb @ emb.T
    n = len(emb)
    return round(float(1 - (sims.sum() - np.trace(sims)) / (n * (n - 1))), 4)


def nearest_cosines(emb: np.ndarray, ref: np.ndarray, same: bool = False) -> np.ndarray:
    if len(emb) == 0 or len(ref) == 0 or (same and len(ref) < 2):
        return np.zeros(0)
    sims = emb @ ref.T
    if same:
        np.fill_diagonal(sims, -np.inf)
    return sims.max(1)


def languages(texts: list[str]) -> dict[str, float]:
    """Share of each language among texts (langid.py; the five commonest, the rest as `other`)."""
    import langid

    texts = [t for t in texts if t.strip()]
    if not texts:
        return {}
    counts = Counter(langid.classify(t)[0] for t in texts)
    top = dict(counts.most_common(5))
    rest = len(texts) - sum(top.values())
    out = {k: round(v / len(texts), 3) for k, v in top.items()}
    return {**out, "other": round(rest / len(texts), 3)} if rest else out


def _words(texts: list[str]) -> np.ndarray:
    return np.array([len(t.split()) for t in texts], dtype=np.float64)


def synthetic_vs_real(real_prompts: list[str], real_answers: list[str], real_emb: np.ndarray,
                      syn_prompts: list[str], syn_answers: list[str], syn_emb: np.ndarray, seed: int = 0) -> dict:
    """The report for one batch (embeddings of the rows' text, normalised)."""
    return {
        "rows": {"real": len(real_prompts), "synthetic": len(syn_prompts)},
        "embedding_two_sample": two_sample(real_emb, syn_emb, seed),
        "nearest_real_cosine": {"synthetic": _summary(nearest_cosines(syn_emb, real_emb)),
                                "real": _summary(nearest_cosines(real_emb, real_emb, same=True))},
        "prompt_words": {"real": _summary(_words(real_prompts)), "synthetic": _summary(_words(syn_prompts))},
        "answer_words": {"real": _summary(_words(real_answers)), "synthetic": _summary(_words(syn_answers))},
        "languages": {"real": languages(real_prompts), "synthetic": languages(syn_prompts)},
        "diversity": {"real": mean_pairwise_distance(real_emb), "synthetic": mean_pairwise_distance(syn_emb)},
    }

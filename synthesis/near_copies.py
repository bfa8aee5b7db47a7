"""Semantic near-copies among synthetic rows: of a seed row (`copies_seed`) or of another new row.

The threshold is the semantic-dup one (curation.semantic_dedup: a cosine above 1 - eps, 0.93 at
the default eps 0.07, is a duplicate), on the same embeddings (curation.embed, cached), so a
synthetic row that survives here would also survive a `semantic_dedup` step after the generator.
"""
from __future__ import annotations

import numpy as np


class SeedCopies:
    """A growing set of texts (the seeds first, then accepted new ones) to check new texts against."""

    def __init__(self, ids: list[str], texts: list[str], max_cosine: float | None, embed):
        self.max_cosine = max_cosine
        self.embed = embed
        self.ids = list(ids)
        self.seeds = len(ids)
        self.vectors = embed(texts) if max_cosine is not None and texts else None

    def errors(self, texts: list[str]) -> list[str | None]:
        """Per text: `copies_seed: ...` (above the threshold with a seed), `near_copy: ...` (with an
        accepted new text), else None. Texts are not added."""
        if self.vectors is None or not texts:
            return [None] * len(texts)
        sims = self.embed(texts) @ self.vectors.T
        out: list[str | None] = []
        for i, j in enumerate(sims.argmax(1)):
            if sims[i, j] <= self.max_cosine:
                out.append(None)
            else:
                what = "copies_seed" if j < self.seeds else "near_copy"
                out.append(f"{what}: cosine {sims[i, j]:.3f} > {self.max_cosine} with {self.ids[j]}")
        return out

    def add(self, text: str, row_id: str) -> None:
        if self.vectors is not None:
            self.vectors = np.vstack([self.vectors, self.embed([text])])
            self.ids.append(row_id)


def reject_copies(texts: list[str], ids: list[str], seed_texts: list[str], seed_ids: list[str],
                  max_cosine: float | None, embed, groups: list | None = None,
                  own_seed: list[str | None] | None = None) -> list[str | None]:
    """Walk new rows in order: each is rejected if it is a near-copy of a seed row or of a new row
    kept before it; so no two kept rows, nor a kept row and a seed row, sit above the threshold.
    `groups`: rows of one group (answers to one case, of which the judge keeps one) are not
    compared with each other, only with the seeds and the other groups. `own_seed[i]`: the one seed
    row new row i is not compared with (a transformed edge case is its seed's request, by design)."""
    if max_cosine is None or not texts:
        return [None] * len(texts)
    groups = groups if groups is not None else list(range(len(texts)))
    seed_at = {sid: j for j, sid in enumerate(seed_ids)}
    seed_vecs = embed(seed_texts) if seed_texts else np.zeros((0, 0), dtype=np.float32)
    vecs = embed(texts)
    kept: list[int] = []
    out: list[str | None] = []
    for i, v in enumerate(vecs):
        s = seed_vecs @ v if len(seed_vecs) else np.zeros(0)
        if own_seed is not None and own_seed[i] in seed_at:
            s[seed_at[own_seed[i]]] = -1.0
        j = int(s.argmax()) if len(s) else -1
        if j >= 0 and s[j] > max_cosine:
            out.append(f"copies_seed: cosine {s[j]:.3f} > {max_cosine} with {seed_ids[j]}")
            continue
        others = [k for k in kept if groups[k] != groups[i]]
        n = vecs[others] @ v if others else np.zeros(0)
        if len(n) and n.max() > max_cosine:
            k = others[int(n.argmax())]
            out.append(f"near_copy: cosine {n.max():.3f} > {max_cosine} with {ids[k]}")
            continue
        out.append(None)
        kept.append(i)
    return out

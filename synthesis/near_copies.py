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
                  max_cosine: float | None, embed) -> list[str | None]:
    """Walk new rows in order: each is rejected if it is a near-copy of a seed row or of a new row
    kept before it; so no two kept rows, nor a kept row and a seed row, sit above the threshold."""
    if max_cosine is None or not texts:
        return [None] * len(texts)
    index = SeedCopies(seed_ids, seed_texts, max_cosine, embed)
    vecs = embed(texts)
    out: list[str | None] = []
    for text, row_id, v in zip(texts, ids, vecs):
        sims = index.vectors @ v if index.vectors is not None else np.zeros(0)
        j = int(sims.argmax()) if len(sims) else -1
        if j >= 0 and sims[j] > max_cosine:
            what = "copies_seed" if j < index.seeds else "near_copy"
            out.append(f"{what}: cosine {sims[j]:.3f} > {max_cosine} with {index.ids[j]}")
            continue
        out.append(None)
        index.vectors = v[None, :] if index.vectors is None else np.vstack([index.vectors, v])
        index.ids.append(row_id)
    return out

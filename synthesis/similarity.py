"""Novelty of generated prompts against the pool: exact (normalised) and ROUGE-L, as Self-Instruct.

ROUGE-L F1 over word tokens, computed only where it can pass the threshold: the LCS of two token
lists is at most their multiset overlap, so an inverted index finds the few pool entries whose
overlap bound reaches the threshold and the quadratic LCS runs only on those.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def normalise(text: str) -> str:
    return " ".join(tokens(text))


def lcs_len(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    lcs = lcs_len(a, b)
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


class NoveltyIndex:
    """A growing pool of prompts to check new ones against."""

    def __init__(self) -> None:
        self._tokens: list[list[str]] = []
        self._ids: list[str] = []
        self._exact: dict[str, str] = {}
        self._postings: dict[str, list[tuple[int, int]]] = defaultdict(list)  # token -> (entry, count)

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, text: str, row_id: str) -> None:
        toks = tokens(text)
        self._exact.setdefault(" ".join(toks), row_id)
        entry = len(self._ids)
        self._tokens.append(toks)
        self._ids.append(row_id)
        for tok, c in Counter(toks).items():
            self._postings[tok].append((entry, c))

    def duplicate_of(self, text: str) -> str | None:
        """Id of a pool entry equal to `text` up to case, punctuation and spacing."""
        return self._exact.get(normalise(text))

    def most_similar(self, text: str, threshold: float) -> tuple[float, str | None]:
        """(ROUGE-L, id) of the most similar entry scoring >= threshold, else (best bound, None)."""
        toks = tokens(text)
        if not toks:
            return 0.0, None
        overlap: Counter = Counter()
        for tok, c in Counter(toks).items():
            for entry, pc in self._postings.get(tok, ()):
                overlap[entry] += min(c, pc)
        best, best_id = 0.0, None
        n = len(toks)
        for entry, ov in overlap.items():
            if 2 * ov / (n + len(self._tokens[entry])) < max(threshold, best):
                continue  # cannot reach the threshold (or beat the best so far)
            score = rouge_l(toks, self._tokens[entry])
            if score >= threshold and score > best:
                best, best_id = score, self._ids[entry]
        return best, best_id


def novelty_error(index: NoveltyIndex, text: str, min_words: int = 0, max_similarity: float | None = None) -> str | None:
    """Why a new prompt is not new enough for the pool in `index` (None: it is): empty, fewer than
    `min_words` words, the same as a pool entry, or (with a threshold below 1) a ROUGE-L near one."""
    if not text.strip():
        return "empty prompt from the teacher"
    if len(text.split()) < min_words:
        return f"prompt too short: {len(text.split())} words < min_prompt_words={min_words}"
    if (dup := index.duplicate_of(text)) is not None:
        return f"duplicate prompt: same as {dup}"
    if max_similarity is not None and max_similarity < 1.0:
        score, near = index.most_similar(text, max_similarity)
        if near is not None:
            return f"too similar: ROUGE-L {score:.2f} >= {max_similarity:.2f} with {near}"
    return None

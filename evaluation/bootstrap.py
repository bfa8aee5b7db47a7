"""Means with percentile bootstrap intervals, over held-out rows and training seeds.

An arm's score is a matrix `values[seed, row]` (e.g. mean answer-token loss of held-out row `row`
under the adapter trained with `seed`) with optional `weights[seed, row]` (e.g. that row's answer
tokens, so the mean is token-weighted like a perplexity). Its point estimate is the mean over seeds
of each seed's weighted mean over rows.

The interval resamples both sources of noise (a two-level bootstrap): the held-out rows (which
rows happened to be drawn) and the seeds (how training happened to go). With one seed it reduces
to the ordinary row bootstrap. Differences between arms are paired on rows — both arms are scored
on the same held-out rows, and each resample uses the same rows for both — while seeds are
resampled independently per arm, since arm A's seed 0 has nothing in common with arm B's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    confidence: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return asdict(self)


def _as_matrix(values, weights) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"values must be [seeds, rows] with at least one row, got shape {x.shape}")
    w = np.ones_like(x) if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float64), x.shape)
    # A row that could not be scored (no answer tokens) carries no weight, whatever its value.
    x = np.where(w > 0, np.nan_to_num(x), 0.0)
    return x, np.asarray(w, dtype=np.float64)


def _point(x: np.ndarray, w: np.ndarray) -> float:
    den = w.sum(axis=1)
    return float(np.mean((w * x).sum(axis=1) / np.where(den > 0, den, np.nan)))


def _replicates(x: np.ndarray, w: np.ndarray, row_counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The statistic on every resample: `row_counts[b, r]` = times row r was drawn in resample b."""
    num = row_counts @ (w * x).T  # [B, S]: each seed's weighted sum over the resampled rows
    den = row_counts @ w.T
    per_seed = num / np.where(den > 0, den, np.nan)
    n_seeds = x.shape[0]
    if n_seeds == 1:
        return per_seed[:, 0]
    pick = rng.integers(0, n_seeds, size=(row_counts.shape[0], n_seeds))
    return np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)


def _row_counts(n_rows: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    return rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=resamples).astype(np.float64)


def _interval(point: float, reps: np.ndarray, confidence: float) -> Interval:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Interval(point, float("nan"), float("nan"), confidence)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return Interval(point, float(low), float(high), confidence)


def bootstrap_ci(values, weights=None, *, resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> Interval:
    """Weighted mean of `values` ([rows] or [seeds, rows]) with a percentile bootstrap interval."""
    x, w = _as_matrix(values, weights)
    rng = np.random.default_rng(seed)
    reps = _replicates(x, w, _row_counts(x.shape[1], resamples, rng), rng)
    return _interval(_point(x, w), reps, confidence)


def paired_difference_ci(a, b, weights_a=None, weights_b=None, *, resamples: int = 2000,
                         confidence: float = 0.95, seed: int = 0) -> Interval:
    """mean(a) - mean(b) for two arms scored on the same held-out rows (columns must align)."""
    xa, wa = _as_matrix(a, weights_a)
    xb, wb = _as_matrix(b, weights_b)
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"paired arms need the same held-out rows: {xa.shape[1]} vs {xb.shape[1]}")
    rng = np.random.default_rng(seed)
    counts = _row_counts(xa.shape[1], resamples, rng)  # the same rows for both arms
    reps = _replicates(xa, wa, counts, rng) - _replicates(xb, wb, counts, rng)
    return _interval(_point(xa, wa) - _point(xb, wb), reps, confidence)

"""Bootstrap intervals against cases whose answer is known in closed form."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.bootstrap import bootstrap_ci, paired_difference_ci


def test_interval_matches_normal_theory():
    # For n draws from N(mu, 1), the 95% interval of the mean is mean +- 1.96/sqrt(n).
    rng = np.random.default_rng(1)
    n = 900
    x = rng.normal(3.0, 1.0, n)
    ci = bootstrap_ci(x, resamples=4000, seed=2)
    half = 1.96 * x.std(ddof=1) / np.sqrt(n)
    assert ci.mean == pytest.approx(x.mean())
    assert ci.low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert ci.high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_coverage_of_known_mean():
    # Over many samples from Exp(1) (mean 1), about 95% of intervals contain the true mean.
    rng = np.random.default_rng(3)
    hits = 0
    reps = 300
    for i in range(reps):
        ci = bootstrap_ci(rng.exponential(1.0, 150), resamples=800, seed=i)
        hits += ci.low <= 1.0 <= ci.high
    assert 0.90 <= hits / reps <= 0.985


def test_weighted_mean_is_token_weighted():
    # Row losses 1 and 3 with 3 and 1 tokens: token-weighted mean = (3*1 + 1*3) / 4 = 1.5.
    ci = bootstrap_ci([1.0, 3.0], [3.0, 1.0], resamples=200)
    assert ci.mean == pytest.approx(1.5)
    assert 1.0 <= ci.low <= ci.high <= 3.0


def test_zero_weight_rows_are_ignored():
    ci = bootstrap_ci([2.0, np.nan, 2.0], [1.0, 0.0, 1.0], resamples=200)
    assert ci.mean == pytest.approx(2.0)
    assert ci.low == pytest.approx(2.0) and ci.high == pytest.approx(2.0)


def test_seed_variance_widens_interval():
    # Rows identical within a seed: the only noise is between seeds, and the interval must show it.
    per_seed = np.array([[1.0] * 50, [2.0] * 50, [3.0] * 50])
    ci = bootstrap_ci(per_seed, resamples=3000, seed=0)
    assert ci.mean == pytest.approx(2.0)
    assert ci.low < 1.6 and ci.high > 2.4
    assert bootstrap_ci(per_seed[:1], resamples=500).high == pytest.approx(1.0)


def test_paired_difference_uses_pairing():
    # b = a + 0.1 + tiny noise: rows vary a lot, but the paired difference is tight around -0.1.
    rng = np.random.default_rng(5)
    a = rng.normal(0.0, 5.0, 400)
    b = a + 0.1 + rng.normal(0.0, 0.01, 400)
    d = paired_difference_ci(a, b, resamples=2000)
    assert d.mean == pytest.approx(-0.1, abs=0.005)
    assert d.high < 0 and d.excludes_zero()
    assert d.high - d.low < 0.01
    # Unpaired noise of the same size would give an interval hundreds of times wider.
    assert bootstrap_ci(a, resamples=500).high - bootstrap_ci(a, resamples=500).low > 0.5


def test_paired_difference_of_equal_arms_straddles_zero():
    rng = np.random.default_rng(6)
    a = rng.normal(0.0, 1.0, (2, 300))
    b = rng.normal(0.0, 1.0, (3, 300))
    d = paired_difference_ci(a, b, resamples=2000)
    assert not d.excludes_zero()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same held-out rows"):
        paired_difference_ci([1.0, 2.0], [1.0, 2.0, 3.0])

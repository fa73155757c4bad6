"""The correlation helpers on synthetic data whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emolib.stats import correlation, paired, pearson, permutation_baseline, spearman


def _pair(r: float, n: int, seed: int = 0):
    """``n`` draws from a bivariate normal with correlation ``r``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    y = r * x + math.sqrt(1 - r * r) * rng.standard_normal(n)
    return x, y


def test_pearson_recovers_planted_correlation_with_ci_and_small_p():
    x, y = _pair(0.8, 400)
    c = pearson(x, y, n_boot=1000, n_perm=1000, seed=1)
    assert c.n == 400
    assert abs(c.r - np.corrcoef(x, y)[0, 1]) < 1e-12
    assert 0.74 < c.r < 0.86
    assert c.ci_low < c.r < c.ci_high
    assert c.ci_low < 0.8 < c.ci_high          # the interval covers the planted value
    assert c.ci_high - c.ci_low < 0.12         # and is not absurdly wide at n = 400
    assert c.p_perm == pytest.approx(1 / 1001)  # no shuffle beats it: the smallest possible p


def test_no_correlation_gives_large_p_and_ci_around_zero():
    x, y = _pair(0.0, 200, seed=3)
    c = pearson(x, y, n_boot=1000, n_perm=1000, seed=0)
    assert c.ci_low < 0 < c.ci_high
    assert c.p_perm > 0.05


def test_negative_correlation_and_spearman_on_monotone_data():
    x = np.linspace(0, 1, 30)
    c = pearson(x, -x, n_boot=200, n_perm=200)
    assert c.r == pytest.approx(-1.0)
    s = spearman(x, np.exp(5 * x), n_boot=200, n_perm=200)
    assert s.r == pytest.approx(1.0)
    assert pearson(x, np.exp(5 * x), n_boot=0, n_perm=0).r < 0.95  # not linear, but monotone


def test_missing_pairs_are_dropped_and_seed_makes_it_reproducible():
    x = [1.0, 2.0, None, 4.0, 5.0, float("nan"), 7.0]
    y = [2.0, 4.1, 3.0, 8.2, 9.9, 1.0, 14.0]
    a, b = paired(x, y)
    assert a.tolist() == [1.0, 2.0, 4.0, 5.0, 7.0]
    c1 = correlation(x, y, seed=5, n_boot=300, n_perm=300)
    c2 = correlation(x, y, seed=5, n_boot=300, n_perm=300)
    assert c1.n == 5 and c1 == c2


@pytest.mark.parametrize("x,y,why", [([1.0, 2.0], [3.0, 1.0], "fewer than"), ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0],
                                                                              "constant")])
def test_tiny_or_constant_inputs_are_not_computable(x, y, why):
    c = pearson(x, y)
    assert not c.computable and math.isnan(c.r) and why in c.note
    assert "not computable" in str(c) and "not computable" in c.short()


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same length"):
        pearson([1, 2, 3], [1, 2])


def test_permutation_baseline_separates_signal_from_chance():
    truth = np.repeat(np.arange(4), 10)
    same = lambda lab: float(np.mean(lab == truth))  # noqa: E731
    b = permutation_baseline(same, truth.copy(), n_perm=300, seed=0)
    assert b.observed == 1.0
    assert 0.15 < b.null_mean < 0.35  # chance agreement is about 1/4
    assert b.p_perm == pytest.approx(1 / 301)

"""Bootstrap intervals: analytic cases, reproducibility, the paired and grouped variants, bad input."""
import numpy as np
import pytest

from sgalign.evaluation import bootstrap_ci, paired_bootstrap_ci


def test_two_point_sample_has_known_bootstrap_distribution():
    # resample means of [0, 1] are 0, 0.5, 1 with prob 1/4, 1/2, 1/4: the 95 % percentile interval is [0, 1]
    ci = bootstrap_ci([0.0, 1.0], n_resamples=4000, seed=1)
    assert (ci.estimate, ci.low, ci.high) == (0.5, 0.0, 1.0)
    # a 40 % interval stays inside the middle atom
    mid = bootstrap_ci([0.0, 1.0], n_resamples=4000, level=0.4, seed=1)
    assert mid.low == mid.high == 0.5


def test_matches_a_by_hand_percentile_bootstrap():
    x = np.random.default_rng(7).normal(size=25)
    ci = bootstrap_ci(x, np.median, n_resamples=500, level=0.9, seed=11)
    idx = np.random.default_rng(11).integers(0, 25, size=(500, 25))
    boot = np.median(x[idx], axis=1)
    assert ci.estimate == pytest.approx(np.median(x))
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(boot, [0.05, 0.95])))
    assert ci.to_dict()["method"] == "percentile bootstrap" and ci.n == 25


def test_seeded_and_constant():
    x = np.arange(10.0)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)
    c = bootstrap_ci([0.3] * 8)
    assert c.low == pytest.approx(0.3) and c.high == pytest.approx(0.3) and not c.excludes(0.3) and c.excludes(0.0)


def test_paired_bootstrap_keeps_items_together():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, size=30)  # widely spread per-item scores ...
    a = b + 0.05  # ... with a constant paired gain
    paired = paired_bootstrap_ci(a, b, n_resamples=500)
    assert paired.low == pytest.approx(0.05) and paired.high == pytest.approx(0.05) and paired.excludes(0.0)
    # the two unpaired intervals overlap heavily: only pairing shows the gain
    ia, ib = bootstrap_ci(a, n_resamples=500), bootstrap_ci(b, n_resamples=500, seed=1)
    assert ia.low < ib.high
    custom = paired_bootstrap_ci(a, b, lambda x, y: float(np.mean(x > y)), n_resamples=50)
    assert custom.estimate == custom.low == custom.high == 1.0


def test_grouped_bootstrap_resamples_whole_groups():
    # two prompts, two seeds each: group means 5 and 6; a resample draws 2 whole groups -> means in {5, 5.5, 6}
    values, groups = [0.0, 10.0, 1.0, 11.0], ["p0", "p0", "p1", "p1"]
    ci = bootstrap_ci(values, n_resamples=1000, groups=groups)
    assert ci.n == 2 and ci.estimate == 5.5
    assert ci.low == pytest.approx(5.0) and ci.high == pytest.approx(6.0)
    itemwise = bootstrap_ci(values, n_resamples=1000)
    assert itemwise.low < 3.0 and itemwise.high > 8.0  # item resampling breaks the groups apart


def test_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN or inf at positions \\[1\\]"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level must be in"):
        bootstrap_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci([1.0, 2.0], n_resamples=0)
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="groups has 1 entries for 2 values"):
        bootstrap_ci([1.0, 2.0], groups=["a"])

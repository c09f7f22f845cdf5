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


def test_perfectly_correlated_seeds_widen_the_graph_clustered_interval_by_sqrt_k():
    # 400 graphs x K=4 seeds, every seed of a graph scoring the same: only 400 independent values. Image-level
    # resampling treats them as 1600 and narrows the interval by sqrt(K) = 2; graph-level resampling does not.
    rng = np.random.default_rng(0)
    G, K = 400, 4
    per_graph = rng.uniform(0, 1, size=G)
    values, groups = np.repeat(per_graph, K), np.repeat(np.arange(G), K)
    by_image = bootstrap_ci(values, n_resamples=2000, seed=0)
    by_graph = bootstrap_ci(values, n_resamples=2000, seed=0, groups=groups, unit="graph")
    ratio = (by_graph.high - by_graph.low) / (by_image.high - by_image.low)
    assert ratio == pytest.approx(np.sqrt(K), rel=0.12)
    # the graph-level interval equals the one of the 400 per-graph values themselves
    direct = bootstrap_ci(per_graph, n_resamples=2000, seed=0)
    assert (by_graph.high - by_graph.low) == pytest.approx(direct.high - direct.low, rel=0.12)
    assert (by_graph.n, by_graph.unit, by_image.n, by_image.unit) == (G, "graph", G * K, "item")


def test_recentred_interval_always_contains_the_estimate_and_keeps_asymmetry():
    from sgalign.evaluation.stats import recentred_interval

    boot = np.array([20.5, 21.0, 21.5, 22.0, 24.5] * 40)  # an upward-biased bootstrap, all above the estimate
    pct = np.quantile(boot, [0.025, 0.975])
    assert pct[0] > 12.2  # the percentile interval would exclude the estimate 12.2
    ci = recentred_interval(12.2, boot, 0.95, 200, 0, 50, lower_bound=0.0)
    assert ci.low <= ci.estimate <= ci.high
    assert ci.estimate - ci.low == pytest.approx(np.median(boot) - pct[0])
    assert ci.high - ci.estimate == pytest.approx(pct[1] - np.median(boot))
    assert ci.high - ci.estimate > ci.estimate - ci.low  # asymmetric, as the bootstrap distribution
    assert recentred_interval(0.1, boot, 0.95, 200, 0, 50, lower_bound=0.0).low == 0.0  # FID >= 0

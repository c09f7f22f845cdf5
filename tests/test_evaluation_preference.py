"""t2i preference summaries: hand-computed win-rates (ties half), means/medians, pairing by (prompt, seed)."""
import numpy as np
import pytest

from sgalign.evaluation import align_scores, summarize_preference, win_rate

A = [3.0, 2.0, 1.0, 5.0]
B = [1.0, 2.0, 3.0, 4.0]  # A wins items 0 and 3, ties item 1, loses item 2


def test_win_rate_hand_computed():
    assert win_rate(A, B) == pytest.approx((2 + 0.5) / 4)
    assert win_rate(A, B) + win_rate(B, A) == pytest.approx(1.0)  # ties count half on both sides
    assert win_rate(A, A) == 0.5
    # differences are 2, 0, -2, 1: with tolerance 1 items 1 and 3 are ties -> (1 + 0.5 + 0 + 0.5) / 4
    assert win_rate(A, B, tie_tolerance=1.0) == pytest.approx(0.5)
    # lower-is-better scores flip the outcome
    assert win_rate(A, B, higher_is_better=False) == pytest.approx((1 + 0.5) / 4)


def test_summary_values_and_counts():
    s = summarize_preference(A, B, metric="pickscore", n_resamples=500, seed=2)
    assert (s.wins, s.ties, s.losses, s.n) == (2, 1, 1, 4)
    assert s.mean_a.estimate == pytest.approx(2.75) and s.mean_b.estimate == pytest.approx(2.5)
    assert s.median_a.estimate == pytest.approx(2.5) and s.median_b.estimate == pytest.approx(2.5)
    assert s.mean_difference.estimate == pytest.approx(0.25)
    assert s.win_rate.estimate == pytest.approx(0.625)
    assert 0.0 <= s.win_rate.low <= 0.625 <= s.win_rate.high <= 1.0
    d = s.to_dict()
    assert d["metric"] == "pickscore" and d["win_rate"]["n_resamples"] == 500 and d["win_rate"]["seed"] == 2


def test_all_wins_interval_is_degenerate():
    s = summarize_preference(np.arange(6.0) + 1, np.arange(6.0), n_resamples=200)
    assert s.win_rate.low == s.win_rate.high == 1.0 and s.mean_difference.low == pytest.approx(1.0)


def test_mapping_inputs_align_by_key_and_group_by_prompt():
    a = {("p0", 0): 1.0, ("p0", 1): 3.0, ("p1", 0): 0.0, ("p1", 1): 2.0}
    b = {("p1", 1): 2.0, ("p1", 0): 1.0, ("p0", 1): 0.0, ("p0", 0): 0.5}  # other insertion order
    xa, xb, keys = align_scores(a, b)
    assert keys == [("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    assert xa.tolist() == [1.0, 3.0, 0.0, 2.0] and xb.tolist() == [0.5, 0.0, 1.0, 2.0]
    s = summarize_preference(a, b, groups="prompt", n_resamples=300)
    assert s.win_rate.estimate == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert s.win_rate.n == 2  # resampled by prompt: 2 clusters
    # p0's win-rate is 1, p1's 0.25: a resample of 2 prompts gives 0.25, 0.625 or 1
    assert s.win_rate.low == pytest.approx(0.25) and s.win_rate.high == pytest.approx(1.0)


def test_mismatched_items_are_rejected():
    with pytest.raises(ValueError, match="only in A \\[\"\\('p2', 0\\)\"\\]"):
        align_scores({("p0", 0): 1.0, ("p2", 0): 1.0}, {("p0", 0): 1.0})
    with pytest.raises(ValueError, match="same items"):
        summarize_preference([1.0, 2.0], [1.0])
    with pytest.raises(TypeError, match="two mappings"):
        align_scores({("p0", 0): 1.0}, [1.0])
    with pytest.raises(ValueError, match="groups='prompt'"):
        summarize_preference([1.0, 2.0], [0.0, 1.0], groups="prompt")

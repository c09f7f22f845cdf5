"""Text-to-image preference summaries: model A vs model B scored on the same prompts and seeds.

Input: one score per item (a prompt x seed pair) for each model, from any scorer (PickScore, HPS, aesthetic,
CLIP score, the world preference reward). Output: mean and median of each model, the mean difference A - B and
the win-rate of A over B, each with a percentile-bootstrap interval (paired: items are resampled jointly; with
``groups`` -- e.g. the prompt of each item -- whole prompts are resampled, keeping their seeds together).

Win-rate of A over B = (wins + 0.5 * ties) / n, where item i is a win when A's score beats B's by more than
``tie_tolerance``, a tie when |a_i - b_i| <= ``tie_tolerance`` (exact equality by default), else a loss. Counting a
tie as half a win makes win_rate(A, B) + win_rate(B, A) = 1 and 0.5 mean "no preference".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from .stats import ConfidenceInterval, bootstrap_ci, paired_bootstrap_ci

Scores = Sequence[float] | np.ndarray | Mapping[Hashable, float]


def outcomes(a: np.ndarray, b: np.ndarray, tie_tolerance: float = 0.0,
             higher_is_better: bool = True) -> np.ndarray:
    """Per item: 1.0 (A wins), 0.5 (tie), 0.0 (B wins)."""
    d = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) * (1.0 if higher_is_better else -1.0)
    return np.where(np.abs(d) <= tie_tolerance, 0.5, (d > 0).astype(np.float64))


def win_rate(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, tie_tolerance: float = 0.0,
             higher_is_better: bool = True) -> float:
    """(wins + ties / 2) / n of A over B on the same items."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"win_rate: need two equal-length non-empty 1-D score arrays, got {a.shape} and {b.shape}")
    return float(outcomes(a, b, tie_tolerance, higher_is_better).mean())


def align_scores(scores_a: Scores, scores_b: Scores) -> tuple[np.ndarray, np.ndarray, list[Hashable] | None]:
    """Two score collections as aligned arrays. Mappings (e.g. keyed by (prompt_id, seed)) are matched by key and
    must cover the same keys; sequences are matched by position and must have equal length."""
    if isinstance(scores_a, Mapping) != isinstance(scores_b, Mapping):
        raise TypeError("align_scores: pass two mappings (keyed by item) or two sequences, not one of each")
    if isinstance(scores_a, Mapping) and isinstance(scores_b, Mapping):
        ka, kb = set(scores_a), set(scores_b)
        if ka != kb:
            only_a, only_b = sorted(map(repr, ka - kb))[:5], sorted(map(repr, kb - ka))[:5]
            raise ValueError(f"scores of A and B cover different items: only in A {only_a}, only in B {only_b}")
        keys = sorted(ka, key=repr)
        return (np.array([scores_a[k] for k in keys], dtype=np.float64),
                np.array([scores_b[k] for k in keys], dtype=np.float64), keys)
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"scores of A and B must be on the same items: {a.shape} vs {b.shape}")
    return a, b, None


@dataclass(frozen=True)
class PreferenceSummary:
    metric: str
    n: int
    higher_is_better: bool
    tie_tolerance: float
    mean_a: ConfidenceInterval
    median_a: ConfidenceInterval
    mean_b: ConfidenceInterval
    median_b: ConfidenceInterval
    mean_difference: ConfidenceInterval  # mean(A) - mean(B), paired
    win_rate: ConfidenceInterval  # of A over B, ties count half, paired
    wins: int
    ties: int
    losses: int

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"metric": self.metric, "n": self.n, "higher_is_better": self.higher_is_better,
                             "tie_tolerance": self.tie_tolerance, "wins": self.wins, "ties": self.ties,
                             "losses": self.losses}
        for k in ("mean_a", "median_a", "mean_b", "median_b", "mean_difference", "win_rate"):
            d[k] = getattr(self, k).to_dict()
        return d


def summarize_preference(scores_a: Scores, scores_b: Scores, *, metric: str = "score",
                         higher_is_better: bool = True, tie_tolerance: float = 0.0,
                         groups: Sequence[Hashable] | str | None = None, n_resamples: int = 1000, level: float = 0.95,
                         seed: int = 0, unit: str | None = None) -> PreferenceSummary:
    """Means, medians, paired mean difference and win-rate of A over B, with bootstrap intervals.

    ``groups``: one group id per item for a cluster bootstrap, or "prompt" with mapping inputs keyed by
    ``(prompt_id, seed, ...)`` tuples to group by their first element."""
    a, b, keys = align_scores(scores_a, scores_b)
    if isinstance(groups, str):
        if groups != "prompt" or keys is None or not all(isinstance(k, tuple) and k for k in keys):
            raise ValueError("groups='prompt' needs mapping inputs keyed by (prompt_id, seed, ...) tuples")
        groups = [k[0] for k in keys]
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    kw = dict(n_resamples=n_resamples, level=level, seed=seed, groups=groups,
              unit=unit if unit is not None or groups is None else "prompt")
    o = outcomes(a, b, tie_tolerance, higher_is_better)
    return PreferenceSummary(
        metric=metric, n=int(a.size), higher_is_better=higher_is_better, tie_tolerance=tie_tolerance,
        mean_a=bootstrap_ci(a, np.mean, **kw), median_a=bootstrap_ci(a, np.median, **kw),
        mean_b=bootstrap_ci(b, np.mean, **kw), median_b=bootstrap_ci(b, np.median, **kw),
        mean_difference=paired_bootstrap_ci(a, b, **kw),
        win_rate=bootstrap_ci(o, np.mean, **kw),  # mean of per-item outcomes = paired win-rate
        wins=int((o == 1.0).sum()), ties=int((o == 0.5).sum()), losses=int((o == 0.0).sum()))

"""Bootstrap confidence intervals shared by every metric (SG-IoU, FID, preference scores).

Percentile bootstrap: draw ``n_resamples`` resamples with replacement (of items, or of whole groups when
``groups`` is given, e.g. all seeds of one prompt), evaluate the statistic on each, and report the
``(1-level)/2`` and ``1-(1-level)/2`` quantiles (numpy's default linear interpolation). The generator is
``numpy.random.default_rng(seed)``, so an interval is reproducible from (data, n_resamples, level, seed), all of
which are recorded in the result.

``paired_bootstrap_ci`` resamples the *same* item indices for both models, which is what a comparison of two
models on the same prompts/graphs/seeds needs (the per-item correlation is kept, so the interval on the
difference is much tighter than two independent intervals suggest).

The resampling unit must be the independent unit: the K seeds of one graph/prompt share its content, so they are
resampled together (``groups``); resampling single images would count them as independent and give intervals up
to sqrt(K) too narrow. Every interval records its ``unit`` and ``n`` (number of units).

``recentred_interval`` is for biased statistics such as FID, whose bootstrap distribution sits above the
estimate (resampling with replacement duplicates rows): it keeps the bootstrap's spread around its median but
centres it on the estimate, so the interval always contains the estimate (a plain percentile interval of FID
can exclude it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np

Statistic = Callable[[np.ndarray], float]
PairedStatistic = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class ConfidenceInterval:
    estimate: float  # the statistic on the full sample (not the bootstrap mean)
    low: float
    high: float
    level: float
    n_resamples: int
    seed: int
    n: int  # resampled units (items, or groups when resampled by group)
    method: str = "percentile bootstrap"
    unit: str = "item"  # what one resampled unit is, e.g. "graph (all seeds together)"

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside [low, high] (e.g. a difference whose interval excludes 0)."""
        return value < self.low or value > self.high

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or inf at positions {np.flatnonzero(~np.isfinite(arr))[:5].tolist()}")
    return arr


def check_bootstrap_args(n_resamples: int, level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


def resample_indices(n: int, groups: Sequence[Hashable] | None, n_resamples: int,
                     rng: np.random.Generator) -> tuple[list[np.ndarray], int]:
    """Index arrays, one per resample. With ``groups`` whole groups are drawn (cluster bootstrap)."""
    if groups is None:
        return list(rng.integers(0, n, size=(n_resamples, n))), n
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} values")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    blocks = [np.asarray(ix) for ix in members.values()]
    picks = rng.integers(0, len(blocks), size=(n_resamples, len(blocks)))
    return [np.concatenate([blocks[j] for j in row]) for row in picks], len(blocks)


def _unit(groups: Sequence[Hashable] | None, unit: str | None) -> str:
    return unit if unit is not None else ("item" if groups is None else "group")


def percentile_interval(estimate: float, boot: np.ndarray, level: float, n_resamples: int, seed: int,
                        n: int, unit: str = "item") -> ConfidenceInterval:
    """The percentile interval of bootstrap replicates ``boot`` around the full-sample ``estimate``."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return ConfidenceInterval(float(estimate), float(low), float(high), level, n_resamples, seed, n, unit=unit)


RECENTRED = "bootstrap spread about its median, re-centred on the estimate"


def recentred_interval(estimate: float, boot: np.ndarray, level: float, n_resamples: int, seed: int, n: int,
                       unit: str = "item", lower_bound: float | None = None) -> ConfidenceInterval:
    """[estimate - (median - q_lo), estimate + (q_hi - median)] of the bootstrap replicates: the percentile
    interval with the bootstrap's bias (median - estimate) removed. It contains the estimate by construction and
    keeps the distribution's asymmetry. ``lower_bound`` clips the low end (FID >= 0)."""
    alpha = (1.0 - level) / 2.0
    q_lo, med, q_hi = np.quantile(boot, [alpha, 0.5, 1.0 - alpha])
    low, high = estimate - (med - q_lo), estimate + (q_hi - med)
    if lower_bound is not None:
        low = max(low, lower_bound)
    return ConfidenceInterval(float(estimate), float(low), float(high), level, n_resamples, seed, n,
                              method=RECENTRED, unit=unit)


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Statistic = np.mean, *, n_resamples: int = 1000,
                 level: float = 0.95, seed: int = 0,
                 groups: Sequence[Hashable] | None = None, unit: str | None = None) -> ConfidenceInterval:
    """Percentile-bootstrap interval of ``statistic(values)`` (mean by default); ``unit`` names what one group is
    (recorded; default "group" with ``groups``, else "item")."""
    check_bootstrap_args(n_resamples, level)
    x = _as_1d(values, "values")
    rng = np.random.default_rng(seed)
    idx, n = resample_indices(x.size, groups, n_resamples, rng)
    boot = np.array([statistic(x[i]) for i in idx], dtype=np.float64)
    return percentile_interval(statistic(x), boot, level, n_resamples, seed, n, _unit(groups, unit))


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a) - np.mean(b))


def paired_bootstrap_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                        statistic: PairedStatistic = mean_difference, *, n_resamples: int = 1000,
                        level: float = 0.95, seed: int = 0,
                        groups: Sequence[Hashable] | None = None, unit: str | None = None) -> ConfidenceInterval:
    """Interval of ``statistic(a, b)`` (mean(a) - mean(b) by default) where ``a[i]`` and ``b[i]`` are two models'
    scores on the same item i; each resample draws one index set and applies it to both."""
    check_bootstrap_args(n_resamples, level)
    xa, xb = _as_1d(a, "a"), _as_1d(b, "b")
    if xa.size != xb.size:
        raise ValueError(f"paired bootstrap needs scores on the same items: len(a)={xa.size}, len(b)={xb.size}")
    rng = np.random.default_rng(seed)
    idx, n = resample_indices(xa.size, groups, n_resamples, rng)
    boot = np.array([statistic(xa[i], xb[i]) for i in idx], dtype=np.float64)
    return percentile_interval(statistic(xa, xb), boot, level, n_resamples, seed, n, _unit(groups, unit))

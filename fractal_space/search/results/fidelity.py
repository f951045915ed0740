"""How well the search's score predicts the final test accuracy: rank correlations with a bootstrap interval.

Rank correlations over a handful of retrained models swing widely (n = 4 gives 1.00 by chance one time in 24), so
the report always states n and a percentile-bootstrap interval: the pairs (search score, test accuracy) are resampled
with replacement and the correlation recomputed. numpy and pandas only (scipy is not a dependency).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks; NaN with fewer than 2 points or a constant side."""
    if len(x) < 2:
        return math.nan
    return float(pd.Series(x).rank().corr(pd.Series(y).rank()))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties counted as in scipy's default); NaN with fewer than 2 points or a constant side."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 2:
        return math.nan
    upper = np.triu_indices(len(a), k=1)
    dx, dy = np.sign(a[:, None] - a[None, :])[upper], np.sign(b[:, None] - b[None, :])[upper]
    denominator = math.sqrt(float(np.count_nonzero(dx)) * float(np.count_nonzero(dy)))
    return float((dx * dy).sum() / denominator) if denominator else math.nan


def bootstrap_interval(x: Sequence[float], y: Sequence[float], statistic: Callable[[Sequence[float], Sequence[float]],
                       float], level: float = 0.9, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The percentile-bootstrap ``level`` interval of ``statistic(x, y)`` over pairs resampled with replacement.

    Resamples on which the statistic is undefined (every drawn pair tied on one side) are left out; (NaN, NaN) with
    fewer than 3 pairs or no defined resample.
    """
    if not 0 < level < 1:
        raise ValueError(f"level {level} must be between 0 and 1")
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"x and y differ in length ({len(a)} and {len(b)})")
    if len(a) < 3:
        return math.nan, math.nan
    draws = np.random.default_rng(seed).integers(0, len(a), size=(resamples, len(a)))
    values = np.array([statistic(a[i], b[i]) for i in draws])
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)

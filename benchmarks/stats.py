"""Small statistics for timings: medians of runs, ratios, least-squares lines.

The spread rule (``SPREAD_LIMIT``): a path's spread is its interquartile range
over its median (quartiles by ``statistics.quantiles(..., method="inclusive")``;
0 for a single run). When any compared path's spread is above 10%, the machine
was too noisy to judge a ratio of a few percent: the report says so beside the
ratios of medians and of minimums, and neither is taken as a verdict.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

SPREAD_LIMIT = 0.10


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, minimum, maximum, interquartile range and spread (IQR / median)
    of timed runs (seconds), and their number."""
    middle = statistics.median(seconds)
    iqr = interquartile_range(seconds)
    return {
        "median": middle,
        "min": min(seconds),
        "max": max(seconds),
        "iqr": iqr,
        "spread": iqr / middle if middle else 0.0,
        "runs": len(seconds),
    }


def interquartile_range(values: Sequence[float]) -> float:
    """Third quartile minus first (inclusive method); 0 for fewer than 2 values."""
    if len(values) < 2:
        return 0.0
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return third - first


def judgeable(spreads: Sequence[float], limit: float = SPREAD_LIMIT) -> bool:
    """Whether every spread (IQR / median) is at most ``limit``: the rule above."""
    return all(spread <= limit for spread in spreads)


def line_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares ``y = intercept + slope * x``, with its R²."""
    fit = statistics.linear_regression(xs, ys)
    mean = statistics.fmean(ys)
    total = sum((y - mean) ** 2 for y in ys)
    residual = sum(
        (y - fit.intercept - fit.slope * x) ** 2 for x, y in zip(xs, ys, strict=True)
    )
    return {
        "intercept": fit.intercept,
        "slope": fit.slope,
        "r2": 1.0 - residual / total if total else 1.0,
    }

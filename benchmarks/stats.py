"""Small statistics for timings: medians of runs, ratios, least-squares lines."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, minimum and maximum of timed runs (seconds), and their number."""
    return {
        "median": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "runs": len(seconds),
    }


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

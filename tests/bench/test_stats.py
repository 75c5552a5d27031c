"""The benchmark's spread rule and summaries on given numbers."""

from __future__ import annotations

import pytest

from benchmarks.stats import SPREAD_LIMIT, interquartile_range, judgeable, summary


def test_the_interquartile_range_uses_inclusive_quartiles():
    # Quartiles of 1..5 (inclusive): 2 and 4.
    assert interquartile_range([5.0, 1.0, 3.0, 2.0, 4.0]) == pytest.approx(2.0)
    assert interquartile_range([3.0]) == 0.0


def test_summary_gives_the_spread_as_iqr_over_median():
    result = summary([1.00, 1.02, 1.04, 1.06, 1.08])

    assert result["median"] == pytest.approx(1.04)
    assert result["min"] == pytest.approx(1.00)
    assert result["iqr"] == pytest.approx(0.04)
    assert result["spread"] == pytest.approx(0.04 / 1.04)
    assert result["runs"] == 5


def test_steady_runs_can_be_judged_and_noisy_ones_cannot():
    steady = summary([3.05, 3.10, 3.12, 3.15, 3.28])  # IQR 0.05: 1.6%
    noisy = summary([3.0, 3.1, 3.6, 4.0, 4.4])  # IQR 0.9: 25%

    assert SPREAD_LIMIT == 0.10
    assert judgeable([steady["spread"]])
    assert not judgeable([steady["spread"], noisy["spread"]])


def test_the_limit_itself_is_still_judgeable():
    assert judgeable([0.10, 0.05])
    assert not judgeable([0.1001])
    assert judgeable([0.2], limit=0.25)


def _path(seconds: list[float]) -> dict:
    return {**summary(seconds), "pixels_sha256": "same"}


def test_the_overhead_section_reports_both_ratios_and_the_verdict():
    from types import SimpleNamespace

    from benchmarks.overhead import overhead_result
    from benchmarks.report import _overhead
    from benchmarks.workload import Workload

    raw = _path([3.0, 3.05, 3.1, 3.6, 4.2])
    engine = _path([3.03, 3.06, 3.12, 3.2, 3.3])
    studio = {
        **_path([3.06, 3.08, 3.15, 3.3, 3.5]),
        "engine_median": 3.1,
        "beyond_engine_median": 0.01,
        "breakdown": {
            "enqueue_and_queue": 0.002,
            "pick_up": 0.001,
            "job_before_and_after_engine": 0.001,
            "score": 0.0,
            "store_and_row_update": 0.007,
        },
    }
    config = SimpleNamespace(device="cpu", dtype="float32")

    section = overhead_result(
        raw,
        engine,
        studio,
        config=config,
        workload=Workload(steps=2, width=64, height=64),
    )

    assert section["studio_ratio"] == pytest.approx(3.15 / 3.1)
    assert section["studio_ratio_min"] == pytest.approx(3.06 / 3.0)
    assert section["max_spread"] == pytest.approx(raw["spread"])
    assert not section["judgeable"]  # raw's IQR is 0.55 s on 3.1 s
    text = "\n".join(_overhead(section))
    assert "ratio of minimums" in text
    assert "spread too large to judge" in text

"""Smoke test of ``studio_bench``: the tiny preset, once, through the command.

It runs every section for real (raw diffusers in a bare process, the engine, a
sandboxed studio with a real Redis and worker process, the registry benchmark,
the growth series) and checks that the numbers are sane, not that the targets
are met: on the tiny model the work is too small for the ratios to mean much.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.e2e

QUEUE_JOBS = 5


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One run of the tiny preset: its JSON report and its printed tables."""
    workdir = tmp_path_factory.mktemp("bench")
    report_path = workdir / "report.json"
    stdout = io.StringIO()
    call_command(
        "studio_bench",
        "--preset=tiny",
        "--runs=1",
        f"--queue-jobs={QUEUE_JOBS}",
        f"--json={report_path}",
        f"--workdir={workdir}",
        stdout=stdout,
        stderr=io.StringIO(),
    )
    return json.loads(report_path.read_text()), stdout.getvalue()


def positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_overhead_paths_compute_the_same_image_in_positive_time(bench_run):
    overhead = bench_run[0]["overhead"]
    assert overhead["same_image"] is True
    for path in ("raw", "engine", "studio"):
        assert positive(overhead[path]["median"])
    assert positive(overhead["engine_ratio"])
    assert positive(overhead["studio_ratio"])
    assert math.isfinite(overhead["beyond_engine_ms"])
    # The floor really is bare diffusers: no studio, Django or RQ module loaded.
    assert overhead["raw"]["ready"]["studio_modules"] == []
    # Every measured studio job ran on the worker's warm registry.
    assert overhead["studio"]["registry_hits"] == overhead["studio"]["runs"]


def test_registry_derives_variants_without_a_second_copy(bench_run):
    registry = bench_run[0]["registry"]
    assert positive(registry["cold_load_ms"])
    assert positive(registry["derivation_share_of_cold_load"])
    assert 0.9 < registry["variants_memory_ratio"] < 1.5


def test_growth_runs_more_denoising_steps_for_more_strength_and_steps(bench_run):
    growth = bench_run[0]["growth"]
    for series in ("strength", "strength_ddim", "steps"):
        steps_run = [point["steps_run"] for point in growth[series]]
        assert steps_run == sorted(steps_run) and steps_run[0] < steps_run[-1]
    for series in ("size", "images", "controlnets", "ip_adapter"):
        assert all(positive(point["median"]) for point in growth[series])
    for fit in growth["fits"].values():
        assert math.isfinite(fit["slope"])


def test_queue_drains_every_job(bench_run):
    queue = bench_run[0]["queue"]
    assert queue["jobs"] == QUEUE_JOBS
    assert positive(queue["jobs_per_second"])
    assert positive(queue["engine_ms"])


def test_report_names_the_machine_and_prints_the_tables(bench_run):
    report, printed = bench_run
    assert report["machine"]["cores"] >= 1
    assert report["command"].startswith("python manage.py studio_bench --preset tiny")
    assert "gpu" in report  # skipped on a CPU, measured on CUDA
    assert all(math.isfinite(row["measured"]) for row in report["targets"])
    assert "| target | measured | limit | met |" in printed
    assert "same image on all paths: yes" in printed


def test_unknown_section_is_refused(tmp_path: Path):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="Unknown sections nonsense"):
        call_command("studio_bench", "--only=nonsense", f"--workdir={tmp_path}")

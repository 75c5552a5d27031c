"""Smoke test of the pages benchmark (``python -m benchmarks.pages_bench``):
a small throwaway studio served by a real gunicorn and Redis, every page loaded
by concurrent clients. It checks that the run measures what it says (every
answer a 200 with the page's title, the page cache answering once warm), not
the timings, which the machine decides."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from studio.conf import BASE_DIR

pytestmark = pytest.mark.e2e

PAGES = {"gallery index", "persona grid", "content page"}


def run_bench(tmp_path, *arguments: str) -> dict:
    report = tmp_path / "pages.json"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.pages_bench",
            "--contents=60",
            "--personas=3",
            "--clients=4",
            "--requests=12",
            "--warmup=4",
            f"--workdir={tmp_path}",
            f"--json={report}",
            *arguments,
        ],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "| gallery index (`/gallery/`) |" in finished.stdout
    return json.loads(report.read_text())


def test_the_pages_benchmark_loads_every_page_from_gunicorn(tmp_path):
    report = run_bench(tmp_path)

    assert {page["page"] for page in report["pages"]} == PAGES
    for page in report["pages"]:
        assert page["requests"] == 12
        # Warmed up and unchanged: every timed answer comes from the cache.
        assert page["cache_hits"] == 12
        assert 0 < page["p50_ms"] <= page["p95_ms"] <= page["p99_ms"]
        assert page["queries"] > 0
        assert page["server_cpu_ms_per_request"] > 0
    # The throwaway studio leaves nothing behind.
    assert not list(tmp_path.glob("pages-bench-*"))


def test_with_the_page_cache_off_every_page_is_rendered(tmp_path):
    report = run_bench(tmp_path, "--page-cache-seconds=0")

    assert [page["cache_hits"] for page in report["pages"]] == [0, 0, 0]

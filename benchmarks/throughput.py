"""Queue throughput: many tiny jobs drained by one worker.

The jobs are enqueued in one transaction (so the worker drains a full queue) and
their rows' timestamps give the window from the first job's start to the last
one's end. What the worker spends per job beyond the engine is the studio's
per-job overhead: claiming the row, reading its inputs, scoring, storing the
output and thumbnails, updating the row, and RQ's own dequeue and result
bookkeeping (RQ's benchmark puts a ``SimpleWorker`` at about 1 ms per job).
"""

from __future__ import annotations

from statistics import fmean, median
from typing import Any


def queue_result(drained: dict[str, Any]) -> dict[str, Any]:
    """Jobs per second and per-job overhead from the driver's drained queue."""
    records = sorted(drained["records"], key=lambda record: record["started_at"])
    count = len(records)
    window = max(r["finished_at"] for r in records) - records[0]["started_at"]
    per_job = window / count
    engine = fmean(record["engine"] for record in records)
    gaps = [
        later["started_at"] - earlier["finished_at"]
        for earlier, later in zip(records, records[1:], strict=False)
    ]
    return {
        "jobs": count,
        "window_seconds": window,
        "jobs_per_second": count / window,
        "per_job_ms": 1000 * per_job,
        "engine_ms": 1000 * engine,
        "overhead_ms": 1000 * (per_job - engine),
        "breakdown_ms": {
            "in_job_beyond_engine": 1000
            * median(record["in_worker"] - record["engine"] for record in records),
            "score": 1000 * median(record["score"] for record in records),
            "between_jobs": 1000 * median(gaps) if gaps else 0.0,
            "enqueue_per_job": 1000 * drained["enqueue_seconds"] / count,
        },
    }

"""Reconcile content rows with Redis: no row stays queued or running without a
live job (DESIGN.md decision 1).

The database is the truth and Redis only transport, so the two can drift: Redis
restarts or is flushed (jobs lost), a worker is killed mid-job (its row stays
``running``). ``reconcile()`` looks at every active row:

- ``queued`` whose job Redis no longer has (or no longer holds in its queue):
  enqueued again under a new job id;
- ``queued`` whose job RQ already failed before it could start: failed, with
  RQ's reason;
- ``running`` whose job is no longer executed by a live worker (the worker's key
  expired, or its process is gone on this host, or it runs something else; a
  live worker busy with the job still holds it even when the job's execution
  heartbeat expired):
  queued again while ``STUDIO_MAX_ATTEMPTS`` allows, else failed with a reason;
- ``pending`` scores (of outputs and of training samples) whose scoring job is
  lost: enqueued again on the CPU queue (``score_services.reconcile_scoring``).

It runs from ``studio_reconcile``, when every worker starts, and every
``STUDIO_RECONCILE_INTERVAL_SECONDS`` in every worker. Concurrent runs are safe:
each repair is conditional on the row still having the job id it was judged by.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.worker import BaseWorker, SimpleWorker, WorkerStatus

from generation import score_services, services
from generation.queued_rows import RowRepairs, row_reconcile
from generation.queues import redis_connection
from generation.selectors import content_active


@dataclass
class ReconcileReport:
    """What one reconcile run looked at and repaired (content ids)."""

    checked: int = 0
    requeued: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    # Scoring jobs (generation.score_services.reconcile_scoring).
    scoring_requeued: list[int] = field(default_factory=list)
    scoring_failed: list[int] = field(default_factory=list)
    # Training samples whose lost scoring job was enqueued again, or failed.
    sample_scoring: list[int] = field(default_factory=list)
    # Training runs enqueued again, resumed or failed (run ids).
    training: list[int] = field(default_factory=list)

    @property
    def repaired(self) -> int:
        return (
            len(self.requeued)
            + len(self.retried)
            + len(self.failed)
            + len(self.scoring_requeued)
            + len(self.scoring_failed)
            + len(self.sample_scoring)
            + len(self.training)
        )

    def __str__(self) -> str:
        def ids(values: list[int]) -> str:
            return f" ({', '.join(f'#{value}' for value in values)})" if values else ""

        return (
            f"checked {self.checked} active rows: {len(self.requeued)} lost jobs "
            f"enqueued again{ids(self.requeued)}, {len(self.retried)} abandoned "
            f"runs retried{ids(self.retried)}, {len(self.failed)} failed"
            f"{ids(self.failed)}; {len(self.scoring_requeued)} lost scoring jobs "
            f"enqueued again{ids(self.scoring_requeued)}, "
            f"{len(self.scoring_failed)} scorings failed{ids(self.scoring_failed)}, "
            f"{len(self.sample_scoring)} training samples' scorings repaired"
            f"{ids(self.sample_scoring)}; "
            f"{len(self.training)} training runs repaired{ids(self.training)}"
        )


CONTENT_REPAIRS = RowRepairs(
    requeue=lambda content, reason: services.content_requeue(
        content=content, reason=reason
    ),
    fail=lambda content, code, message, detail: services.content_fail(
        content=content, code=code, message=message, detail=detail
    ),
    gave_up_note=" Retry it when the workers are healthy.",
)


def reconcile() -> ReconcileReport:
    """Repair every active row that has no live job; report what was done."""
    report = ReconcileReport()
    connection = redis_connection()
    repaired_as = {
        "requeued": report.requeued,
        "retried": report.retried,
        "failed": report.failed,
    }
    for content in content_active():
        report.checked += 1
        repair = row_reconcile(content, connection, CONTENT_REPAIRS)
        if repair:
            repaired_as[repair].append(content.pk)
    scoring = score_services.reconcile_scoring(connection)
    report.scoring_requeued, report.scoring_failed = scoring.requeued, scoring.failed
    report.sample_scoring = [*scoring.samples_requeued, *scoring.samples_failed]
    from generation.training_jobs import reconcile_training_runs

    reconcile_training_runs(connection, report)
    return report


def _fetch_job(job_id: str, connection: Redis) -> Job | None:
    if not job_id:
        return None
    try:
        return Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None


def _in_queue(job: Job, connection: Redis) -> bool:
    """The job is waiting in its queue, or being taken from it by a worker."""
    queue = Queue(job.origin, connection=connection)
    return any(
        connection.lpos(key, job.id) is not None
        for key in (queue.key, queue.intermediate_queue_key)
    )


def _executing(job: Job, connection: Redis, worker_name: str = "") -> bool:
    """A live worker is running ``job`` right now (``worker_name``: the one the
    row says claimed it, for a job that does not name its worker)."""
    name = job.worker_name or worker_name
    if not name:
        return False
    worker = SimpleWorker.find_by_key(
        BaseWorker.redis_worker_namespace_prefix + name, connection=connection
    )
    if worker is None:
        return False
    # On this host the process itself can be asked: a killed worker is gone now,
    # not only once its key expires.
    if worker.hostname == socket.gethostname() and worker.pid:
        if not _process_alive(worker.pid):
            return False
    executions = worker.get_current_executions(refresh=True)
    if any(execution.job_id == job.id for execution in executions):
        return True
    # The execution's key can expire while its worker, alive and registered,
    # still runs the job (a long step held back the keepalive): a worker busy
    # with nothing else, named by the started job, still holds it; taking the
    # job for abandoned would have its own worker run it a second time.
    return (
        not executions
        and worker.get_state() == WorkerStatus.BUSY
        and job.worker_name == name
        and job.get_status(refresh=True) == JobStatus.STARTED
    )


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

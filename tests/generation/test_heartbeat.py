"""A running job is never re-run by its own worker (issue 13, item 8).

A real worker process (``tests.faulty_workers.BlockingStepWorker``) blocks its
main thread at the first denoising step for longer than the job's heartbeat TTL,
while reconcile runs: the keepalive thread must keep beating, so that the job
is not taken for abandoned, is not run a second time, and succeeds. And when
the execution's heartbeat does expire (``ExpiredExecutionWorker``), reconcile
still sees the live worker holding the job and leaves it alone.
"""

from __future__ import annotations

import time

import pytest
from rq.worker import BaseWorker, SimpleWorker

from generation import services
from generation.models import Content, ContentStatus
from generation.queues import redis_connection
from generation.reconcile import reconcile
from tests.faulty_workers import BLOCK_SECONDS_ENV, SHORT_HEARTBEAT_TTL_ENV
from tests.workers import wait_finished, wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.finding,
    pytest.mark.django_db(transaction=True),
]

HEARTBEAT_TTL = 3
BLOCK_SECONDS = 4 * HEARTBEAT_TTL


def _executions(worker_name: str) -> list[str]:
    worker = SimpleWorker.find_by_key(
        BaseWorker.redis_worker_namespace_prefix + worker_name,
        connection=redis_connection(),
    )
    assert worker is not None, f"worker {worker_name} is not registered"
    return [execution.job_id for execution in worker.get_current_executions()]


@pytest.mark.parametrize(
    ("worker_class", "execution_kept"),
    [("BlockingStepWorker", True), ("ExpiredExecutionWorker", False)],
)
def test_a_step_blocking_longer_than_the_heartbeat_ttl_is_not_run_again(
    persona_with_reference, start_worker, worker_class, execution_kept
):
    start_worker(
        f"blocking-{execution_kept}".lower(),
        worker_class=f"tests.faulty_workers.{worker_class}",
        **{
            BLOCK_SECONDS_ENV: str(BLOCK_SECONDS),
            SHORT_HEARTBEAT_TTL_ENV: str(HEARTBEAT_TTL),
        },
    )
    content = services.content_enqueue(
        persona=persona_with_reference, prompt="a long step"
    )
    content = wait_for(
        lambda: Content.objects.filter(
            pk=content.pk, status=ContentStatus.RUNNING, progress_step__gt=0
        ).first(),
        what=f"content #{content.pk} to reach its blocking step",
    )
    job_id = content.rq_job_id

    # Past the TTL, with the main thread still blocked: the keepalive has
    # renewed the execution (or, where it did not, the worker still holds the
    # job), so reconcile leaves the job to its worker.
    time.sleep(HEARTBEAT_TTL + 2)
    executions = _executions(content.worker_name)
    assert (job_id in executions) is execution_kept, executions
    for _ in range(3):
        report = reconcile()
        assert content.pk not in report.retried + report.requeued + report.failed
        row = Content.objects.get(pk=content.pk)
        assert (row.status, row.attempts, row.rq_job_id) == (
            ContentStatus.RUNNING,
            1,
            job_id,
        )
        time.sleep(1)
    content = wait_finished(content)
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.attempts == 1
    assert content.rq_job_id == job_id

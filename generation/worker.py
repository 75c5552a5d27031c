"""The GPU worker: one process per GPU that runs generation jobs in itself.

RQ's default ``Worker`` forks a work-horse per job, so a pipeline loaded in it
dies with the job and CUDA cannot be initialised in the child (DESIGN.md
decision 3). ``StudioWorker`` builds on RQ's ``SimpleWorker`` instead:

- jobs run in the worker's own process, one at a time, on one engine whose
  pipeline registry stays warm across jobs (``shared_engine``);
- the models to serve are preloaded before the first job;
- a background thread keeps the started job's heartbeat alive during long jobs
  (``SimpleWorker`` alone would give each job one long TTL), runs RQ's scheduler
  for delayed retries without forking, and reconciles rows with Redis every
  ``STUDIO_RECONCILE_INTERVAL_SECONDS`` (and once at start);
- SIGTERM or Ctrl-C while a job runs hands the job back: it stops at its next
  denoising step, its row is queued again, and the worker exits. When idle the
  worker exits at once.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import redis.exceptions
from django.conf import settings
from django.db import close_old_connections, connection
from rq.job import Job
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.worker import BaseWorker, SimpleWorker, WorkerStatus

from generation.engine_settings import engine_config
from generation.reconcile import reconcile

if TYPE_CHECKING:
    from generation.engine.runner import Engine

logger = logging.getLogger(__name__)

_handback = threading.Event()


WARM_MODELS_FIELD = "studio_warm_models"
"""The worker hash's field listing the base models it has loaded (JSON)."""


@functools.cache
def shared_engine() -> Engine:
    """The process's engine; its pipeline registry stays warm across jobs."""
    from generation.engine.runner import Engine

    return Engine(engine_config())


def handback_requested() -> bool:
    """True once the worker was asked to stop while a job runs: the job should
    stop at its next step and hand its row back to the queue."""
    return _handback.is_set()


class StudioWorker(SimpleWorker):
    """RQ ``SimpleWorker`` with a warm engine, a job keepalive, an in-process
    scheduler and periodic reconciliation (see the module docstring)."""

    def __init__(
        self,
        *args: Any,
        preload_models: Sequence[str] | None = None,
        reconcile_interval: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.preload_models = list(
            settings.STUDIO_PRELOAD_MODELS
            if preload_models is None
            else preload_models
        )
        self.reconcile_interval = float(
            settings.STUDIO_RECONCILE_INTERVAL_SECONDS
            if reconcile_interval is None
            else reconcile_interval
        )
        self._background = _Background(self)
        self._current: tuple[Job, Any] | None = None

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """Preload the models, reconcile, then work with the background thread."""
        _handback.clear()
        if self.preload_models:
            self.log.info("Preloading models: %s", ", ".join(self.preload_models))
            shared_engine().registry.preload(self.preload_models)
        self.log.info("Reconciling at start: %s", reconcile())
        close_old_connections()
        self._background.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._background.stop()

    def register_birth(self, *args: Any, **kwargs: Any) -> None:
        super().register_birth(*args, **kwargs)
        self.publish_warm_models()

    def publish_warm_models(self) -> None:
        """Write the models this worker has loaded into its worker hash (field
        ``WARM_MODELS_FIELD``, JSON) for the staff's queue page."""
        loaded = shared_engine().registry.stats()["loaded"]
        warm = [entry["label"] for entry in loaded if entry["kind"] == "base"]
        self.connection.hset(self.key, WARM_MODELS_FIELD, json.dumps(warm))

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run ``job`` in this process while the background thread keeps it alive.

        Losing Redis while RQ records the job's end must not end the worker: the
        row is already in the database (the truth), and the reconciler repairs
        what Redis forgot. The worker waits for Redis and carries on.
        """
        execution = self.prepare_execution(job)
        with self._running(job, execution):
            try:
                self.perform_job(job, queue, execution)
            except redis.exceptions.ConnectionError:
                self.log.warning("Lost Redis while finishing job %s; waiting", job.id)
                self._wait_for_redis()
        self.publish_warm_models()
        self.set_state(WorkerStatus.IDLE)

    def _wait_for_redis(self) -> None:
        while not self._stop_requested:
            try:
                self.connection.ping()
            except redis.exceptions.ConnectionError:
                time.sleep(1)
            else:
                self.register_again_if_lost()
                return

    def register_again_if_lost(self) -> None:
        """Register this worker again when Redis lost it (restarted or flushed):
        RQ never does, and the reconciler takes a worker it cannot find for a
        dead one."""
        if self.connection.hexists(self.key, "birth"):
            return
        self.log.warning("Redis lost this worker's registration: registering again")
        self.connection.delete(self.key)  # what RQ's bookkeeping wrote since
        self.register_birth()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """A short TTL (RQ's forking worker's), since the keepalive renews it: a
        killed worker's job then looks abandoned within a minute or two, not after
        the whole job timeout that ``SimpleWorker`` would give it."""
        return BaseWorker.get_heartbeat_ttl(self, job, working_time)

    def handle_warm_shutdown_request(self) -> None:
        """Stop signal: hand a running job back at its next step, then exit."""
        super().handle_warm_shutdown_request()
        if self.get_state() == WorkerStatus.BUSY:
            self.log.info("Handing the current job back to the queue before exiting")
            _handback.set()

    def keep_current_job_alive(self) -> None:
        """Renew the worker's, the job's and the execution's heartbeats."""
        current = self._current
        if current is not None:
            self.maintain_heartbeats(*current)

    @contextmanager
    def _running(self, job: Job, execution: Any):
        self._current = (job, execution)
        try:
            yield
        finally:
            self._current = None


class _Background:
    """The worker's second thread: job keepalive, RQ scheduler, reconciliation.

    RQ's own scheduler forks a process, which a GPU worker must not do; this
    thread runs the same ``RQScheduler`` steps (lock, heartbeat, enqueue due
    jobs) in process instead.
    """

    tick_seconds = 1.0

    def __init__(self, worker: StudioWorker) -> None:
        self.worker = worker
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.scheduler: RQScheduler | None = None

    def start(self) -> None:
        self.scheduler = RQScheduler(
            self.worker.queues, connection=self.worker.connection
        )
        self.thread = threading.Thread(
            target=self._run, name="studio-worker-background", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        if self.scheduler is not None and self.scheduler.acquired_locks:
            self.scheduler.release_locks()
            self.scheduler.register_death()

    def _run(self) -> None:
        last_keepalive = last_reconcile = time.monotonic()
        try:
            while not self.stop_event.wait(self.tick_seconds):
                now = time.monotonic()
                if now - last_keepalive >= self.worker.job_monitoring_interval:
                    last_keepalive = now
                    self._guarded(self.worker.keep_current_job_alive)
                self._guarded(self.worker.register_again_if_lost)
                self._guarded(self._schedule)
                if now - last_reconcile >= self.worker.reconcile_interval:
                    last_reconcile = now
                    self._guarded(self._reconcile)
        finally:
            connection.close()

    def _schedule(self) -> None:
        scheduler = self.scheduler
        if scheduler.should_reacquire_locks:
            if scheduler.acquire_locks():
                scheduler.register_birth()
        if scheduler.acquired_locks:
            scheduler.heartbeat()
            scheduler.enqueue_scheduled_jobs()

    def _reconcile(self) -> None:
        report = reconcile()
        if report.repaired:
            logger.info("Reconcile: %s", report)
        close_old_connections()

    @staticmethod
    def _guarded(step: Any) -> None:
        # A Redis or database hiccup must not end the thread that keeps jobs alive.
        try:
            step()
        except Exception:
            logger.exception("Worker background step %s failed", step.__name__)

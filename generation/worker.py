"""The GPU worker: one process per GPU that runs generation jobs in itself.

RQ's default ``Worker`` forks a work-horse per job, so a pipeline loaded in it
dies with the job and CUDA cannot be initialised in the child (DESIGN.md
decision 3). ``StudioWorker`` builds on RQ's ``SimpleWorker`` instead:

- jobs run in the worker's own process, one at a time, on one engine whose
  pipeline registry stays warm across jobs (``generation.runtime`` holds it, on
  the device given to this worker);
- the models to serve are preloaded before the first job, and warmed up
  (``PipelineRegistry.warmup``: compiled for the configured sizes with
  ``STUDIO_TORCH_COMPILE``) where that pays;
- a background thread keeps the started job's heartbeat alive during long jobs
  (``SimpleWorker`` alone would give each job one long TTL), runs RQ's scheduler
  for delayed retries without forking, and reconciles rows with Redis every
  ``STUDIO_RECONCILE_INTERVAL_SECONDS`` (and once at start);
- SIGTERM or Ctrl-C while a job runs hands the job back: it stops at its next
  denoising step, its row is queued again, and the worker exits. When idle the
  worker exits at once.

It overrides only rq's documented hooks (``work``, ``execute_job``,
``get_heartbeat_ttl``, ``handle_warm_shutdown_request``) and calls rq's public
methods. ``manage.py studio_worker`` builds it with ``django_rq.get_worker``.
"""

from __future__ import annotations

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
from rq.worker import SimpleWorker, WorkerStatus

from generation import runtime
from generation.reconcile import reconcile

if TYPE_CHECKING:
    from generation.engine.config import EngineConfig
    from generation.engine.runner import Engine

logger = logging.getLogger(__name__)

WARM_MODELS_FIELD = "studio_warm_models"
"""The worker hash's field listing the base models it has loaded (JSON)."""

HEARTBEAT_GRACE_SECONDS = 60
"""What rq's forking worker adds to the monitoring interval for a job's TTL."""


class StudioWorker(SimpleWorker):
    """RQ ``SimpleWorker`` with a warm engine, a job keepalive, an in-process
    scheduler and periodic reconciliation (see the module docstring)."""

    def __init__(
        self,
        *args: Any,
        preload_models: Sequence[str] | None = None,
        reconcile_interval: float | None = None,
        device: str | None = None,
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
        self.device = device or None
        self._stopping = threading.Event()
        self._background = _Background(self)
        self._current: tuple[Job, Any] | None = None

    def make_engine(self, config: EngineConfig) -> Engine:
        """The engine this worker's jobs run on (a test worker class may return
        one that injects a fault through the engine's step callback)."""
        from generation.engine.runner import Engine

        return Engine(config)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """Preload the models, reconcile, then work with the background thread."""
        self._stopping.clear()
        runtime.start(device=self.device, factory=self.make_engine)
        if self.preload_models:
            self.log.info("Preloading models: %s", ", ".join(self.preload_models))
            registry = runtime.engine().registry
            registry.preload(self.preload_models)
            if registry.warmup_pays:
                started = time.perf_counter()
                for model_key in self.preload_models:
                    registry.warmup(model_key)
                self.log.info(
                    "Warmed up %s in %.1f s",
                    ", ".join(self.preload_models),
                    time.perf_counter() - started,
                )
        self.log.info("Reconciling at start: %s", reconcile())
        close_old_connections()
        self._background.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._background.stop()

    def register_birth(self, *args: Any, **kwargs: Any) -> None:
        # Not a documented hook, but the first moment the worker's hash exists:
        # writing to it earlier would make rq take us for a live namesake.
        super().register_birth(*args, **kwargs)
        self.publish_warm_models()

    def publish_warm_models(self) -> None:
        """Write the models this worker has loaded into its worker hash (field
        ``WARM_MODELS_FIELD``, JSON) for the staff's queue page."""
        loaded = runtime.engine().registry.stats()["loaded"]
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
        while not self._stopping.is_set():
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
        """A short TTL, as rq's forking ``Worker`` gives (``SimpleWorker`` gives the
        whole job timeout), since the keepalive renews it: a killed worker's job
        then looks abandoned within a minute or two.

        It is generous against the keepalive's beat (every
        ``job_monitoring_interval``): at least three beats, and a minute more
        than one, so that a slow beat never lets a held job look abandoned. The
        keepalive thread beats while the main thread blocks in a call that
        releases the GIL (file reads, ``time.sleep``, torch kernels, decoding)."""
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - working_time, interval)
        interval = max(int(interval), 1)
        return max(interval + HEARTBEAT_GRACE_SECONDS, 3 * interval)

    def handle_warm_shutdown_request(self) -> None:
        """Stop signal: hand a running job back at its next step, then exit."""
        super().handle_warm_shutdown_request()
        self._stopping.set()
        if self.get_state() == WorkerStatus.BUSY:
            self.log.info("Handing the current job back to the queue before exiting")
            runtime.request_handback()

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

    # rq has no hook for any of this: ``SimpleWorker`` heartbeats only between
    # jobs, its scheduler forks, and it never registers again a worker that
    # Redis forgot; so a thread does the three, through rq's public methods.

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

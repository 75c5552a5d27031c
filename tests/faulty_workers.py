"""Worker classes that inject a fault, for the end-to-end and fault tests.

A test starts ``studio_worker --worker-class tests.faulty_workers.<Class>`` (see
``start_worker(..., worker_class=...)`` in tests/workers.py). The fault goes in
through a seam of the product, never through test code in it: here the engine's
per-step callback, where a real device's out-of-memory error would be raised.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rq import get_current_job

from generation.models import Content
from generation.worker import StudioWorker

if TYPE_CHECKING:
    from generation.engine.config import EngineConfig
    from generation.engine.runner import Engine

OUT_OF_MEMORY_ATTEMPTS_ENV = "TEST_OUT_OF_MEMORY_ATTEMPTS"
"""How many first attempts of every generation run out of memory."""


class OutOfMemoryWorker(StudioWorker):
    """A worker whose device runs out of memory at the first denoising step of
    each row's first N attempts (N from ``TEST_OUT_OF_MEMORY_ATTEMPTS``), so that
    the engine's and the job's recovery run for real."""

    def make_engine(self, config: EngineConfig) -> Engine:
        import torch

        from generation.engine.runner import Engine

        failing_attempts = int(os.environ[OUT_OF_MEMORY_ATTEMPTS_ENV])

        class OutOfMemoryEngine(Engine):
            def generate(self, request, *, on_step=None, **callbacks):
                content_id = get_current_job().args[0]
                attempt = Content.objects.values_list("attempts", flat=True).get(
                    pk=content_id
                )
                if attempt > failing_attempts:
                    return super().generate(request, on_step=on_step, **callbacks)

                def out_of_memory(step: int, total: int) -> None:
                    raise torch.OutOfMemoryError(
                        f"Injected out-of-memory error at step {step} of attempt "
                        f"{attempt}."
                    )

                return super().generate(request, on_step=out_of_memory, **callbacks)

        return OutOfMemoryEngine(config)


BLOCK_SECONDS_ENV = "TEST_BLOCK_SECONDS"
"""How long the first denoising step of every run blocks the main thread."""

SHORT_HEARTBEAT_TTL_ENV = "TEST_HEARTBEAT_TTL"
"""The job's heartbeat TTL (seconds) of ``BlockingStepWorker``."""


class BlockingStepWorker(StudioWorker):
    """A worker whose first denoising step blocks the main thread for
    ``TEST_BLOCK_SECONDS`` (as loading a large file or a long decode would),
    with a job heartbeat TTL of only ``TEST_HEARTBEAT_TTL`` seconds: the job
    stays alive only if the keepalive thread beats while the main thread is
    blocked."""

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        return int(os.environ[SHORT_HEARTBEAT_TTL_ENV])

    def make_engine(self, config: EngineConfig) -> Engine:
        import time

        from generation.engine.runner import Engine

        block_seconds = float(os.environ[BLOCK_SECONDS_ENV])

        class BlockingEngine(Engine):
            def generate(self, request, *, on_step=None, **callbacks):
                def blocking_step(step: int, total: int) -> None:
                    if on_step is not None:
                        on_step(step, total)
                    if step == 1:
                        time.sleep(block_seconds)  # a blocking call, in C

                return super().generate(request, on_step=blocking_step, **callbacks)

        return BlockingEngine(config)


class ExpiredExecutionWorker(BlockingStepWorker):
    """A ``BlockingStepWorker`` whose keepalive renews only the worker's own key,
    not the job's execution: the execution expires while the worker, alive and
    registered, still runs the job (as when a step outlives the execution's
    heartbeat TTL), so only reconcile's check of the worker can keep it."""

    def keep_current_job_alive(self) -> None:
        self.heartbeat(self.job_monitoring_interval + 60)

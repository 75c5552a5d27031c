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
            def generate(self, request, *, on_step=None, should_cancel=None):
                content_id = get_current_job().args[0]
                attempt = Content.objects.values_list("attempts", flat=True).get(
                    pk=content_id
                )
                if attempt > failing_attempts:
                    return super().generate(
                        request, on_step=on_step, should_cancel=should_cancel
                    )

                def out_of_memory(step: int, total: int) -> None:
                    raise torch.OutOfMemoryError(
                        f"Injected out-of-memory error at step {step} of attempt "
                        f"{attempt}."
                    )

                return super().generate(
                    request, on_step=out_of_memory, should_cancel=should_cancel
                )

        return OutOfMemoryEngine(config)

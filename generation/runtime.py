"""The worker process's runtime: the engine its jobs run on, and the hand-back flag.

A GPU worker runs every job in its own process (DESIGN.md decision 3), so the
jobs of one process share one engine, whose pipeline registry stays warm across
them. The worker starts the runtime (``start``) with its configuration (the
device it serves comes from its command line, not from the settings) and asks
it to hand the running job back when it is told to stop (``request_handback``);
the job asks the runtime for the engine and for that flag. Nothing else of the
worker is visible to a job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from generation.engine_settings import engine_config

if TYPE_CHECKING:
    from generation.engine.config import EngineConfig
    from generation.engine.runner import Engine

EngineFactory = Callable[["EngineConfig"], "Engine"]

_lock = threading.Lock()
_engine: Engine | None = None
_factory: EngineFactory | None = None
_device: str | None = None
_handback = threading.Event()


def _default_factory(config: EngineConfig) -> Engine:
    from generation.engine.runner import Engine

    return Engine(config)


def start(*, device: str | None = None, factory: EngineFactory | None = None) -> None:
    """Begin a worker run: the engine is built (on first use) from the settings'
    configuration on ``device`` (``None``: ``STUDIO_DEVICE``, else chosen) by
    ``factory`` (an ``Engine``); no hand-back is pending."""
    global _engine, _factory, _device
    with _lock:
        _engine, _factory, _device = None, factory, device
    _handback.clear()


def engine() -> Engine:
    """This process's engine, built on first use and kept for every later job."""
    global _engine
    with _lock:
        if _engine is None:
            config = engine_config()
            if _device:
                config.device = _device
            _engine = (_factory or _default_factory)(config)
        return _engine


def request_handback() -> None:
    """The worker is stopping: the running job should stop at its next step and
    hand its row back to the queue."""
    _handback.set()


def handback_requested() -> bool:
    """True once the worker asked for the running job to be handed back."""
    return _handback.is_set()

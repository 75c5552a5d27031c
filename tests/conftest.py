"""Fixtures shared by every test: a temporary media folder and a real Redis.

Torch runs on one thread in the test process, as in the workers: the test
machines are small and shared, and a tiny model's run is several times faster on
one thread than on two contended ones. It is set before anything imports torch
(which reads it once); torch itself is imported only by the fixtures and tests
that need it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from studio.redis_embedded import EmbeddedRedis

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

# The tiny model, worker processes and their helpers, shared by every suite.
pytest_plugins = ["tests.workers"]


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path: Path) -> Path:
    """Every test writes uploads and outputs to its own temporary media folder."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.MEDIA_ROOT.mkdir()
    return settings.MEDIA_ROOT


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedRedis:
    """A real redis-server on a Unix socket, private to this test session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def figures(request: pytest.FixtureRequest):
    """This test's recorder for docs/reliability.md (tests/reliability/
    figures.py); its section is the test module's name without ``test_``."""
    from tests.reliability.figures import Figures

    section = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return Figures(test=request.node.nodeid, section=section)

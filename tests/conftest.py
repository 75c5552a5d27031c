"""Fixtures shared by every test: a temporary media folder and a real Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from studio.redis_embedded import EmbeddedRedis

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

"""Fixtures shared by the engine tests: the tiny model, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.engine.config import EngineConfig, tiny_engine_config
from generation.engine.tiny_model import write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model written once per test session into a temporary folder."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def engine_config(tiny_model_root: Path) -> EngineConfig:
    """A fresh configuration for the tiny model: each test may change its copy."""
    return tiny_engine_config(tiny_model_root)

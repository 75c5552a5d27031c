"""Fixtures shared by the engine tests: the tiny model (written once per session
by the shared ``tiny_model_dir`` fixture of tests/workers.py)."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest

from generation.engine.config import EngineConfig, tiny_engine_config


@pytest.fixture(scope="session")
def tiny_model_root(tiny_model_dir: Path) -> Path:
    """The session's tiny model, under the name the engine tests use."""
    return tiny_model_dir


@pytest.fixture
def engine_config(tiny_model_root: Path) -> EngineConfig:
    """A fresh configuration for the tiny model: each test may change its copy."""
    return tiny_engine_config(tiny_model_root)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of our own, so the real one is never read."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache

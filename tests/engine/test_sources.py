"""Model sources: local paths stay under the model roots; the Hub stays offline."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from generation.engine.config import EngineConfig
from generation.engine.errors import ModelNotFound, SourceRefused
from generation.engine.sources import (
    SourceKind,
    content_sha256,
    fingerprint,
    is_offline,
    load_pipeline,
    model_traits,
    resolve_source,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_repo(cache: Path, repo_id: str, content: Path) -> None:
    """Lay ``content`` out as the cached snapshot of ``repo_id`` at COMMIT."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(content, repo / "snapshots" / COMMIT)


def test_a_folder_under_a_root_resolves_by_path_or_by_name(
    engine_config: EngineConfig, tiny_model_root: Path
):
    by_path = resolve_source(str(tiny_model_root / "sd15"), engine_config)
    by_name = resolve_source("sd15", engine_config)

    assert by_path == by_name
    assert by_path.kind is SourceKind.FOLDER
    assert by_path.location == str((tiny_model_root / "sd15").resolve())


def test_a_folder_outside_the_roots_is_refused(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    outside = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_root / "sd15", outside)

    with pytest.raises(SourceRefused, match="outside the configured model roots"):
        resolve_source(str(outside), engine_config)


def test_a_symlink_under_a_root_that_leads_outside_is_refused(
    tiny_model_root: Path, tmp_path: Path
):
    root = tmp_path / "models"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    shutil.copytree(tiny_model_root / "sd15", outside)
    (root / "sneaky").symlink_to(outside)
    config = EngineConfig(models={}, model_roots=[root])

    with pytest.raises(SourceRefused):
        resolve_source(str(root / "sneaky"), config)
    with pytest.raises(SourceRefused):
        resolve_source("sneaky", config)
    with pytest.raises(SourceRefused):
        resolve_source(str(root / ".." / "elsewhere"), config)


def test_a_symlink_that_stays_under_a_root_is_followed(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    link = tmp_path / "link-to-tiny"
    link.symlink_to(tiny_model_root / "sd15")
    config = replace(engine_config, model_roots=[tiny_model_root, tmp_path])

    resolved = resolve_source(str(link), config)

    assert resolved.location == str((tiny_model_root / "sd15").resolve())


def test_missing_or_wrong_local_models_are_not_found(
    engine_config: EngineConfig, tiny_model_root: Path
):
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_source(str(tiny_model_root / "no-such-model"), engine_config)
    with pytest.raises(ModelNotFound, match="model_index.json"):
        resolve_source(str(tiny_model_root / "lora"), engine_config)


def test_pickled_checkpoints_are_refused(engine_config: EngineConfig, tmp_path: Path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not loaded")
    config = replace(engine_config, model_roots=[tmp_path])

    with pytest.raises(SourceRefused, match="arbitrary code"):
        resolve_source(str(checkpoint), config, single_file=True)


def test_a_single_file_is_refused_where_a_folder_is_expected(
    engine_config: EngineConfig, tiny_model_root: Path
):
    with pytest.raises(SourceRefused, match="is a file"):
        resolve_source(str(tiny_model_root / "sd15.safetensors"), engine_config)


def test_a_single_file_checkpoint_loads_with_its_config_folder(
    engine_config: EngineConfig, tiny_model_root: Path
):
    source = resolve_source(
        "sd15.safetensors",
        engine_config,
        single_file=True,
        single_file_config="sd15",
    )

    pipe = load_pipeline(source, StableDiffusionPipeline, torch.float32)

    assert source.kind is SourceKind.SINGLE_FILE
    assert source.config.location == str((tiny_model_root / "sd15").resolve())
    assert list(pipe.unet.config.block_out_channels) == [32, 64]


def test_a_single_file_without_a_cached_config_is_not_found_offline(
    engine_config: EngineConfig, hub_cache: Path
):
    with pytest.raises(ModelNotFound, match="stable-diffusion-v1-5"):
        resolve_source("sd15.safetensors", engine_config, single_file=True)


def test_an_uncached_hub_id_is_not_found_while_offline(
    engine_config: EngineConfig, hub_cache: Path
):
    with pytest.raises(ModelNotFound, match="not in the Hugging Face cache"):
        resolve_source("someone/some-model", engine_config)


def test_hf_hub_offline_is_honoured_even_when_the_config_allows_downloads(
    engine_config: EngineConfig, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
):
    online = replace(engine_config, offline=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert is_offline(online)
    with pytest.raises(ModelNotFound):
        resolve_source("someone/some-model", online)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert not is_offline(online)
    assert resolve_source("someone/some-model", online).offline is False


def test_a_cached_hub_model_loads_offline_and_is_fingerprinted_by_commit(
    engine_config: EngineConfig, hub_cache: Path, tiny_model_root: Path
):
    cache_repo(hub_cache, "studio/tiny-sd15", tiny_model_root / "sd15")

    source = resolve_source("studio/tiny-sd15", engine_config)
    pipe = load_pipeline(source, StableDiffusionPipeline, torch.float32)

    assert source.kind is SourceKind.HUB
    assert source.offline is True
    assert pipe.unet.config.cross_attention_dim == 32
    assert fingerprint(source)["commit"] == COMMIT


def test_names_that_are_neither_paths_nor_hub_ids_are_not_found(
    engine_config: EngineConfig,
):
    with pytest.raises(ModelNotFound, match="neither"):
        resolve_source("not a/valid/id", engine_config)


def test_a_folder_fingerprint_follows_its_content(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_root / "sd15", copy)
    config = replace(engine_config, model_roots=[tiny_model_root, tmp_path])
    original = fingerprint(resolve_source("sd15", config))

    same = fingerprint(resolve_source(str(copy), config))
    (copy / "scheduler" / "scheduler_config.json").write_text("{}")
    changed = fingerprint(resolve_source(str(copy), config))

    assert len(original["sha256"]) == 64
    assert same["sha256"] == original["sha256"]
    assert changed["sha256"] != original["sha256"]


def test_a_single_file_by_its_hub_cache_snapshot_path_loads(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    """``hf download`` leaves a link named like the file, to a blob named by its
    hash (no suffix): the link's name decides, the blob must lie under a root."""
    repo = tmp_path / "hub" / "models--someone--finetune"
    (repo / "blobs").mkdir(parents=True)
    blob = repo / "blobs" / "3f2a9c"
    shutil.copy(tiny_model_root / "sd15.safetensors", blob)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "finetune.safetensors").symlink_to(Path("../../blobs/3f2a9c"))
    config = replace(engine_config, model_roots=[tiny_model_root, tmp_path])

    source = resolve_source(
        str(snapshot / "finetune.safetensors"),
        config,
        single_file=True,
        single_file_config="sd15",
    )
    pipe = load_pipeline(source, StableDiffusionPipeline, torch.float32)

    assert source.kind is SourceKind.SINGLE_FILE
    assert source.location.endswith("finetune.safetensors")
    assert model_traits(source).family.key == "sd15"
    assert list(pipe.unet.config.block_out_channels) == [32, 64]


def test_a_file_hash_is_kept_until_the_file_changes(tmp_path: Path):
    """A second fingerprint of unchanged files reads none of them (the cache is
    keyed by path, inode, size and mtime), and any change of them re-reads."""
    weights = tmp_path / "model" / "weights.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"a" * 4096)
    first = content_sha256(weights.parent)
    stamp = weights.stat()

    # Same size, same mtime, other bytes: the cached hash answers, so nothing
    # was read a second time.
    weights.write_bytes(b"b" * 4096)
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert content_sha256(weights.parent) == first

    # A newer mtime (a new download or save) is read again.
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))
    reread = content_sha256(weights.parent)
    assert reread != first
    assert reread == content_sha256(weights.parent)

    # So is another size with the old mtime.
    weights.write_bytes(b"b" * 4097)
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    resized = content_sha256(weights.parent)
    assert resized not in (first, reread)

    # And a file renamed into place (a finished download): another inode.
    fresh = weights.with_suffix(".part")
    fresh.write_bytes(b"c" * 4097)
    os.utime(fresh, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    fresh.replace(weights)
    assert content_sha256(weights.parent) not in (first, reread, resized)

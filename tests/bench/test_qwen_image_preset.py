"""The benchmark's qwen-image preset: Qwen-Image-Edit-2509's real configuration,
built on the meta device only (no weights: the real model is for a GPU)."""

from __future__ import annotations

import pytest


def test_the_qwen_image_preset_has_qwen_image_edits_real_sizes():
    torch = pytest.importorskip("torch")

    from benchmarks.presets import PRESETS
    from generation.engine.tiny_qwen import QWEN_IMAGE, random_qwen_image_pipeline

    preset = PRESETS["qwen-image"]
    assert (preset.family, preset.width, preset.height) == ("qwen-image", 1024, 1024)
    assert set(preset.sections) == {"overhead", "queue", "gpu"}
    # Three copies of a 58 GB model do not fit one GPU: one path at a time.
    assert preset.paths_together is False
    with torch.device("meta"):
        pipe = random_qwen_image_pipeline(QWEN_IMAGE, torch.bfloat16)

    def billions(module: torch.nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e9

    # Qwen-Image's transformer has 20.4 billion parameters; Qwen2.5-VL-7B-
    # Instruct 8.3 (its vision tower and untied output head included).
    assert 20.3 < billions(pipe.transformer) < 20.5
    assert 8.2 < billions(pipe.text_encoder) < 8.4
    assert pipe.vae_scale_factor == 8
    assert pipe.transformer.dtype == torch.bfloat16


@pytest.mark.e2e
def test_the_qwen_image_preset_runs_its_paths_one_after_another(tmp_path):
    """The preset's machinery at the tiny model's sizes: raw diffusers in a bare
    process, the engine, then the sandboxed studio with its worker, each loaded
    after the one before is gone; all three draw the very same image."""
    from dataclasses import replace

    from benchmarks.presets import PRESETS
    from benchmarks.suite import BenchOptions, run_bench
    from generation.engine.tiny_qwen import TINY_QWEN_IMAGE

    preset = replace(
        PRESETS["qwen-image"],
        model=TINY_QWEN_IMAGE,
        width=64,
        height=64,
        steps=2,
        queue_jobs=2,
    )
    report = run_bench(
        preset,
        BenchOptions(sections=("overhead", "queue"), workdir=tmp_path, runs=1),
        log=lambda line: None,
    )
    overhead = report["overhead"]
    assert overhead["paths_together"] is False
    assert overhead["same_image"] is True
    assert overhead["raw"]["ready"]["studio_modules"] == []
    assert report["queue"]["jobs"] == 2

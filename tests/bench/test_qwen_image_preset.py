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

"""The benchmark's flux preset: FLUX.1 Kontext [dev]'s real configuration, built
on the meta device only (no weights: the real model is for a GPU)."""

from __future__ import annotations

import pytest


def test_the_flux_preset_has_flux1_kontexts_real_sizes():
    torch = pytest.importorskip("torch")
    from diffusers import FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from benchmarks.presets import PRESETS
    from generation.engine.tiny_flux import FLUX_KONTEXT_DEV

    preset = PRESETS["flux"]
    assert (preset.family, preset.width, preset.height) == ("flux", 1024, 1024)
    assert set(preset.sections) == {"overhead", "gpu"}
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_KONTEXT_DEV.transformer)
        encoder = T5EncoderModel(
            T5Config(is_encoder_decoder=False, **FLUX_KONTEXT_DEV.text_encoder_2)
        )
    # FLUX.1's transformer has 11.9 billion parameters, T5-XXL's encoder 4.76.
    billions = sum(p.numel() for p in transformer.parameters()) / 1e9
    assert 11.8 < billions < 12.0
    assert 4.7 < sum(p.numel() for p in encoder.parameters()) / 1e9 < 4.8

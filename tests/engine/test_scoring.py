"""consistency_score with the tiny model's CLIP image encoder and with SSIM only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from generation.engine.embeddings import EmbeddingCache
from generation.engine.scoring import clip_cosine, consistency_score


@pytest.fixture(scope="module")
def encoder(tiny_model_root):
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        tiny_model_root / "ip-adapter" / "models" / "image_encoder"
    )
    processor = CLIPImageProcessor.from_pretrained(
        tiny_model_root / "sd15" / "feature_extractor"
    )
    return {"image_encoder": image_encoder, "image_processor": processor}


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3))
    return Image.fromarray(pixels.astype(np.uint8))


def _with_noise(image: Image.Image, amount: float) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float64)
    noise = np.random.default_rng(0).normal(0, 255 * amount, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def test_identical_images_score_one(astronaut, encoder):
    result = consistency_score(astronaut, astronaut.copy(), **encoder)
    assert result["clip_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert result["ssim"] == pytest.approx(1.0)
    assert result["score"] == pytest.approx(1.0, abs=1e-5)
    assert result["method"] == "0.75 clip_cosine + 0.25 ssim"


def test_different_images_score_lower(astronaut, encoder):
    same = consistency_score(astronaut, astronaut, **encoder)
    different = consistency_score(astronaut, _noise(astronaut.size, 1), **encoder)
    assert different["clip_cosine"] < same["clip_cosine"] - 1e-4
    assert different["ssim"] < 0.1
    assert 0.0 <= different["score"] < same["score"]


def test_ssim_falls_as_the_output_drifts_from_the_reference(astronaut):
    slightly = consistency_score(astronaut, _with_noise(astronaut, 0.03))
    heavily = consistency_score(astronaut, _with_noise(astronaut, 0.3))
    assert 1.0 > slightly["ssim"] > heavily["ssim"] > 0.0


def test_without_an_encoder_only_ssim_is_measured(astronaut):
    result = consistency_score(astronaut, _with_noise(astronaut, 0.1))
    assert result["clip_cosine"] is None
    assert result["method"] == "ssim"
    assert result["score"] == result["ssim"]


def test_images_of_different_sizes_and_modes_are_compared(astronaut, encoder):
    small_gray = astronaut.resize((64, 64)).convert("L")
    result = consistency_score(astronaut, small_gray, **encoder)
    noise = consistency_score(astronaut, _noise((64, 64), 2), **encoder)
    assert 0.0 <= noise["score"] < result["score"] <= 1.0
    assert result["ssim"] > noise["ssim"]


def _counting_forwards(image_encoder) -> tuple[list[int], object]:
    """The batch size of every forward pass of the real encoder, from now on."""
    calls: list[int] = []
    handle = image_encoder.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(
            kwargs["pixel_values"].shape[0]
        ),
        with_kwargs=True,
    )
    return calls, handle


def test_the_references_embedding_is_reused_and_changes_with_its_pixels(
    astronaut, encoder
):
    cache = EmbeddingCache()
    calls, handle = _counting_forwards(encoder["image_encoder"])
    output = _noise((128, 128), 4)
    try:
        first = clip_cosine(astronaut, output, **encoder, cache=cache)
        assert len(calls) == 2  # the reference, then the output
        again = clip_cosine(
            astronaut.copy(), _noise((128, 128), 5), **encoder, cache=cache
        )
        assert len(calls) == 3  # the output only: the reference came from the cache
        assert cache.stats() == {"hits": 1, "misses": 1, "entries": 1}
        # The reference changed: other pixels, another key, encoded afresh.
        changed = _with_noise(astronaut, 0.2)
        clip_cosine(changed, output, **encoder, cache=cache)
        assert len(calls) == 5
        assert cache.stats() == {"hits": 1, "misses": 2, "entries": 2}
    finally:
        handle.remove()
    # A cached embedding gives what encoding it afresh gives, to the bit.
    assert first == clip_cosine(astronaut, output, **encoder, cache=None)
    assert again == clip_cosine(astronaut, _noise((128, 128), 5), **encoder, cache=None)


def test_a_cache_keeps_its_entries_per_encoder_and_within_its_capacity(encoder):
    cache = EmbeddingCache(capacity=2)
    made: list[str] = []

    def compute(key: str):
        return lambda: made.append(key) or key

    for key in ("a", "b", "a", "c", "b"):
        cache.get(encoder["image_encoder"], key, compute(key))
    # "b" was the least recently used when "c" came in, so it was made again.
    assert made == ["a", "b", "c", "b"]
    other = torch.nn.Linear(1, 1)
    assert cache.get(other, "a", compute("a-other")) == "a-other"

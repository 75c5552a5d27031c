"""The IP-Adapter's image embeddings of references are cached by pixel hash:
an unchanged reference is not encoded again, a changed one is, and the cached
embeddings paint what fresh ones paint (the raw-diffusers equality of the
IP-Adapter cases is in test_reproducibility.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from generation.engine import runner
from generation.engine.config import tiny_engine_config
from generation.engine.requests import IPAdapterInput, Method, ReferenceRole
from generation.engine.runner import Engine
from tests.engine.test_reproducibility import make_request, noise_image, reference_of


@pytest.fixture
def engine(tiny_model_root: Path) -> Engine:
    runner.IP_ADAPTER_EMBEDDINGS.clear()
    return Engine(tiny_engine_config(tiny_model_root))


def _encoder_calls(engine: Engine) -> tuple[list[int], object]:
    """The batch sizes of the shared image encoder's forward passes."""
    encoder, _ = engine.registry.image_encoder("tiny-sd15")
    calls: list[int] = []

    def hook(module, args, kwargs, output):
        pixels = args[0] if args else kwargs["pixel_values"]
        calls.append(pixels.shape[0])

    return calls, encoder.register_forward_hook(hook, with_kwargs=True)


def _request(*images, face: bool = False, count: int = 1):
    role = ReferenceRole.FACE if face else ReferenceRole.OTHER
    return make_request(
        method=Method.IP_ADAPTER,
        references=[reference_of(image, role=role) for image in images],
        ip_adapter=IPAdapterInput(
            scale=0.7,
            face_crop=face,
            reference_indexes=list(range(len(images))),
        ),
        num_images=count,
    )


def _pixels(result) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


@pytest.mark.parametrize("face", [False, True], ids=["ip-adapter", "plus-face"])
def test_an_unchanged_reference_is_encoded_once_and_a_changed_one_again(engine, face):
    first = engine.generate(_request(noise_image(7), noise_image(8, 72, 72), face=face))
    calls, hook = _encoder_calls(engine)
    try:
        again = engine.generate(
            _request(noise_image(7), noise_image(8, 72, 72), face=face)
        )
        assert calls == []  # both references' embeddings came from the cache
        changed = engine.generate(
            _request(noise_image(7), noise_image(9, 72, 72), face=face)
        )
        # Encoded afresh, both images in one batch as the pipeline does; the
        # plus model also encodes its zero image for the negative side.
        assert calls == ([2, 2] if face else [2])
    finally:
        hook.remove()
    assert np.array_equal(_pixels(first)[0], _pixels(again)[0])
    assert not np.array_equal(_pixels(first)[0], _pixels(changed)[0])
    assert runner.IP_ADAPTER_EMBEDDINGS.stats()["hits"] == 1


def test_cached_embeddings_paint_what_fresh_ones_paint_for_several_images(engine):
    request = _request(noise_image(7), count=2)
    engine.generate(request)  # fills the cache
    cached = engine.generate(request)
    runner.IP_ADAPTER_EMBEDDINGS.clear()
    fresh = engine.generate(request)

    assert runner.IP_ADAPTER_EMBEDDINGS.stats() == {
        "hits": 0,
        "misses": 1,
        "entries": 1,
    }
    assert len(cached.images) == 2
    for a, b in zip(_pixels(cached), _pixels(fresh), strict=True):
        assert np.array_equal(a, b)

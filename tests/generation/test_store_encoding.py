"""How a finished job's files are encoded: the PNG level, the reused thumbnail."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from PIL import Image

from generation import services
from generation.models import ContentStatus
from tests.generation.test_cleanup import (  # noqa: F401 - fixtures
    cleanup_settings,
    generate,
    small_persona,
)


def noisy_image() -> Image.Image:
    rng = np.random.default_rng(3)
    ramp = np.linspace(0, 200, 96, dtype=np.float64)[None, :, None]
    pixels = ramp + rng.integers(0, 40, (96, 96, 3))
    return Image.fromarray(pixels.astype("uint8"))


def test_png_level_changes_the_size_not_the_pixels(settings):
    image = noisy_image()
    sizes = {}
    for level in (0, 1, 9):
        settings.STUDIO_PNG_COMPRESS_LEVEL = level
        data = services._png(image)
        decoded = np.asarray(Image.open(io.BytesIO(data)))
        np.testing.assert_array_equal(decoded, np.asarray(image))
        sizes[level] = len(data)

    assert sizes[0] > sizes[1] >= sizes[9]


def test_a_png_level_out_of_range_names_the_setting(settings):
    settings.STUDIO_PNG_COMPRESS_LEVEL = 12

    with pytest.raises(ImproperlyConfigured, match="STUDIO_PNG_COMPRESS_LEVEL"):
        services._png(noisy_image())


@pytest.mark.django_db(transaction=True)
def test_the_before_thumbnail_is_a_copy_of_the_references_own(
    cleanup_settings,  # noqa: F811
    tiny_model_dir,
):
    cleanup_settings.STUDIO_PNG_COMPRESS_LEVEL = 1
    persona = small_persona()
    reference = persona.references.get()

    (content,) = generate(persona, count=1)

    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.before_reference_id == reference.pk
    assert content.before_thumbnail.name != reference.thumbnail.name
    with content.before_thumbnail.open("rb") as copy:
        copied = copy.read()
    with reference.thumbnail.open("rb") as own:
        assert copied == own.read()
    with content.output_image.open("rb") as output:
        stored = output.read()
    # Stored at the configured level: re-encoding the pixels gives the same bytes.
    assert services._png(Image.open(io.BytesIO(stored))) == stored

"""How a finished job's files are encoded: the PNG level, the reused thumbnail,
every file or none."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from PIL import Image

from generation import services
from generation.engine.snapshot import image_sha256
from generation.models import ContentStatus
from personas.uploads import encode_thumbnail
from tests.generation.test_cleanup import (  # noqa: F401 - fixtures
    cleanup_settings,
    generate,
    run_jobs,
    small_persona,
)
from tests.reliability.orphans import orphaned_files, stored_files


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


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("threads", [True, False], ids=["threads", "in-job"])
def test_an_encoding_that_fails_stores_no_file(
    cleanup_settings,  # noqa: F811
    media_root,
    monkeypatch,
    threads,
):
    # The tiny outputs are small: encoded in the job's thread unless told.
    if threads:
        monkeypatch.setattr(services, "PARALLEL_ENCODE_PIXELS", 0)
    persona = small_persona()
    before = stored_files(media_root)
    calls = itertools.count()  # next() is atomic: the encoder threads share it
    real_png = services._png

    def png_then_fail(image, level=None):
        # Of the two PNGs (the output, the control image), encoded at the same
        # time as the thumbnails, the first encodes and the second fails.
        if next(calls) == 1:
            raise OSError("encoder error -2 when writing image file")
        return real_png(image, level)

    monkeypatch.setattr(services, "_png", png_then_fail)

    (content,) = generate(persona, count=1)

    assert content.status == ContentStatus.FAILED
    assert content.error_code == "storage_failed"
    assert not content.output_image and not content.output_thumbnail
    assert not content.before_thumbnail and not content.control_images.exists()
    assert stored_files(media_root) == before
    assert orphaned_files() == []


@pytest.mark.django_db(transaction=True)
def test_every_file_is_stored_and_the_before_is_made_afresh_without_its_thumbnail(
    cleanup_settings,  # noqa: F811
    media_root,
    monkeypatch,
):
    monkeypatch.setattr(services, "PARALLEL_ENCODE_PIXELS", 0)  # on the threads
    persona = small_persona()
    reference = persona.references.get()
    reference.thumbnail.storage.delete(reference.thumbnail.name)

    (content,) = generate(persona, count=1)

    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    with reference.image.open("rb") as file:
        expected = encode_thumbnail(Image.open(io.BytesIO(file.read())).convert("RGB"))
    with content.before_thumbnail.open("rb") as file:
        assert file.read() == expected
    with content.output_image.open("rb") as file:
        output = Image.open(io.BytesIO(file.read())).convert("RGB")
    assert content.snapshot["outputs"] == [image_sha256(output)]
    with content.output_thumbnail.open("rb") as file:
        assert file.read() == encode_thumbnail(output)
    (control,) = content.control_images.all()
    with control.image.open("rb") as file:
        assert Image.open(io.BytesIO(file.read())).size == (64, 64)
    assert orphaned_files() == []


@pytest.mark.django_db(transaction=True)
def test_a_before_reference_whose_files_are_gone_leaves_the_before_empty(
    cleanup_settings,  # noqa: F811
):
    persona = small_persona(method="text")
    reference = persona.references.get()
    storage = reference.image.storage
    storage.delete(reference.thumbnail.name)

    content = services.content_enqueue(persona=persona, prompt="a portrait")
    storage.delete(reference.image.name)
    run_jobs()
    content.refresh_from_db()

    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.output_image and not content.before_thumbnail

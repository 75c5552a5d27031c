"""The one validation path for images: every hostile kind refused with its code
and a message that names the file; awkward but legitimate files stored upright,
in RGB, without metadata."""

from __future__ import annotations

import io
import struct

import pytest
from django.core.files.base import ContentFile
from PIL import Image

from personas.uploads import (
    UploadRejected,
    ValidatedImage,
    display_name,
    validate_image_upload,
)
from tests import images


def validate(name: str, content: bytes) -> ValidatedImage:
    return validate_image_upload(ContentFile(content, name=name))


def png_chunk_types(content: bytes) -> list[str]:
    position, types = 8, []
    while position < len(content):
        (length,) = struct.unpack(">I", content[position : position + 4])
        types.append(content[position + 4 : position + 8].decode())
        position += 12 + length
    return types


def content(image: ValidatedImage) -> bytes:
    image.seek(0)
    return image.read()


def decoded(image: ValidatedImage) -> Image.Image:
    return Image.open(io.BytesIO(content(image)))


@pytest.mark.parametrize(
    "sample", images.hostile_images(), ids=lambda sample: sample.name
)
def test_hostile_image_is_refused_with_its_code_and_a_message_naming_it(sample):
    with pytest.raises(UploadRejected) as refused:
        validate(sample.name, sample.content)

    assert refused.value.code == sample.code, sample.description
    message = refused.value.messages[0]
    assert f'"{sample.name}"' in message
    assert ": " in message  # what happened, then what to do


@pytest.mark.parametrize(
    "sample", images.awkward_images(), ids=lambda sample: sample.name
)
def test_awkward_image_is_accepted_as_rgb_png_without_metadata(sample):
    image = validate(sample.name, sample.content)

    assert png_chunk_types(content(image)) == ["IHDR", "IDAT", "IEND"]
    stored = decoded(image)
    assert stored.format == "PNG"
    assert stored.mode == "RGB"
    assert stored.size == (image.width, image.height)
    assert len(image.sha256) == 64
    assert Image.open(io.BytesIO(image.thumbnail)).format == "WEBP"


def test_exif_orientation_is_applied_so_the_image_is_stored_upright():
    image = validate("rotated.jpg", images.jpeg_with_orientation(6))

    # The 64x48 pixels were stored sideways: orientation 6 turns them 90 degrees
    # clockwise, so the red left half ends on top.
    assert (image.width, image.height) == (48, 64)
    stored = decoded(image)
    top, bottom = stored.getpixel((24, 5)), stored.getpixel((24, 58))
    assert top[0] > 180 and top[2] < 80
    assert bottom[2] > 180 and bottom[0] < 80


def test_transparency_is_composited_on_white():
    palette = decoded(validate("palette.png", images.palette_png_with_transparency()))
    grey_alpha = decoded(validate("grey-alpha.png", images.grey_alpha_png()))

    assert palette.getpixel((5, 5)) == (255, 255, 255)
    assert palette.getpixel((60, 5)) == images.BLUE
    assert grey_alpha.getpixel((5, 5)) == (255, 255, 255)
    assert grey_alpha.getpixel((60, 5)) == (0, 0, 0)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    stored = decoded(validate("grey16.png", images.grey_16bit_png(32768)))

    assert stored.getpixel((0, 0)) == (127, 127, 127)


def test_cmyk_jpeg_keeps_its_colours():
    stored = decoded(validate("cmyk.jpg", images.cmyk_jpeg()))

    red, blue = stored.getpixel((5, 5)), stored.getpixel((60, 5))
    assert red[0] > 180 and red[2] < 80
    assert blue[2] > 180 and blue[0] < 80


def test_the_same_pixels_give_the_same_hash_whatever_the_metadata():
    plain = validate("plain.png", images.png())
    with_text = validate("text.png", images.png_with_text_and_icc())

    assert plain.sha256 == with_text.sha256


def test_a_multi_picture_jpeg_keeps_its_first_image():
    # MPO and Ultra HDR files append whole JPEGs: not a polyglot.
    first = images.jpeg((64, 48))
    image = validate("mpo.jpg", first + images.jpeg((32, 32)))

    assert (image.width, image.height) == (64, 48)


def test_zero_padding_after_the_image_is_tolerated():
    image = validate("padded.png", images.png() + b"\x00" * 64)

    assert image.width == 64


def test_pixel_limit_counts_every_frame(settings):
    settings.STUDIO_MAX_UPLOAD_PIXELS = 64 * 48 * 2

    with pytest.raises(UploadRejected) as refused:
        validate("animation.png", images.animated("PNG", frames=3))

    assert refused.value.code == "too_many_pixels"
    assert "x 3 frames" in refused.value.messages[0]


def test_pixel_limit_comes_from_the_setting(settings):
    settings.STUDIO_MAX_UPLOAD_PIXELS = 64 * 48 - 1

    with pytest.raises(UploadRejected) as refused:
        validate("big.png", images.png())

    assert refused.value.code == "too_many_pixels"


def test_byte_limit_comes_from_the_setting(settings):
    content = images.png()
    settings.STUDIO_MAX_UPLOAD_BYTES = len(content) - 1

    with pytest.raises(UploadRejected) as refused:
        validate("big.png", content)

    assert refused.value.code == "too_large"


@pytest.mark.parametrize("pillow_limit", [64 * 48 - 1, (64 * 48) // 2 - 1])
def test_pillows_bomb_warning_and_error_are_refusals(
    settings, monkeypatch, pillow_limit
):
    # Past Image.MAX_IMAGE_PIXELS Pillow warns, past twice that it raises: both
    # must end as a refusal even when our own limit is higher.
    settings.STUDIO_MAX_UPLOAD_PIXELS = 10**9
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)

    with pytest.raises(UploadRejected) as refused:
        validate("big.png", images.png())

    assert refused.value.code == "decompression_bomb"


def test_our_limit_holds_when_pillows_guard_is_switched_off(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)

    with pytest.raises(UploadRejected) as refused:
        validate("bomb.png", images.decompression_bomb_png())

    assert refused.value.code == "too_many_pixels"


def test_a_validated_image_is_not_validated_twice():
    image = validate("ada.png", images.png())

    assert validate_image_upload(image) is image


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("C:\\Users\\ada\\photo.png", "photo.png"),
        ("bell\x07\x1b[31mred.png", "bell??[31mred.png"),
        ("", "(unnamed file)"),
        ("a" * 200 + ".png", "a" * 79 + "…"),
    ],
)
def test_display_names_are_safe_to_print(name, shown):
    assert display_name(name) == shown


@pytest.mark.parametrize(
    ("setting", "value", "code"),
    [
        ("STUDIO_MAX_UPLOAD_SIDE", 63, "side_too_long"),
        ("STUDIO_MAX_UPLOAD_ASPECT_RATIO", 1.3, "aspect_ratio"),
        ("STUDIO_MAX_PNG_CHUNKS", 2, "too_many_chunks"),
        ("STUDIO_UPLOAD_CHECK_MEMORY_MB", 0, "too_much_memory"),
    ],
)
def test_the_header_limits_come_from_their_settings(settings, setting, value, code):
    setattr(settings, setting, value)

    with pytest.raises(UploadRejected) as refused:
        validate("ada.png", images.png())  # 64 x 48, three chunks

    assert refused.value.code == code
    assert setting in refused.value.messages[0]
    assert refused.value.check_cost is None  # nothing was decoded


def test_the_jpeg_scan_limit_counts_progressive_scans(settings):
    progressive = images.jpeg(progressive=True)
    settings.STUDIO_MAX_JPEG_SCANS = progressive.count(b"\xff\xda") - 1

    with pytest.raises(UploadRejected) as refused:
        validate("ada.jpg", progressive)

    assert refused.value.code == "too_many_scans"
    settings.STUDIO_MAX_JPEG_SCANS += 1
    assert validate("ada.jpg", progressive).width == 64


def test_an_accepted_image_reports_what_its_bounded_decode_cost():
    image = validate("ada.png", images.png())

    assert 0 < image.check_cost.cpu_seconds < 1
    assert image.check_cost.peak_rss_bytes > 0

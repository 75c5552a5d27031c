"""fit_to_size: exact size, RGB, and where the content lands in each mode."""

from __future__ import annotations

import pytest
from PIL import Image

from generation.engine.requests import ResizeMode
from generation.engine.resize import fit_to_size

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _bands(width: int, height: int, *, vertical: bool) -> Image.Image:
    """Three equal bands red, green, blue: left to right when ``vertical``,
    else top to bottom."""
    image = Image.new("RGB", (width, height))
    for index, colour in enumerate((RED, GREEN, BLUE)):
        if vertical:
            box = (index * width // 3, 0, (index + 1) * width // 3, height)
        else:
            box = (0, index * height // 3, width, (index + 1) * height // 3)
        image.paste(colour, box)
    return image


def _close(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(pixel, colour, strict=True))


@pytest.mark.parametrize("mode", list(ResizeMode))
@pytest.mark.parametrize("source_size", [(640, 480), (480, 640), (33, 77), (8, 8)])
@pytest.mark.parametrize("target_size", [(64, 64), (96, 40), (40, 96)])
def test_every_mode_gives_exact_size_in_rgb(mode, source_size, target_size):
    source = Image.new("RGBA", source_size, (10, 20, 30, 255))
    fitted = fit_to_size(source, *target_size, mode)
    assert fitted.size == target_size
    assert fitted.mode == "RGB"


def test_grayscale_input_comes_out_rgb():
    fitted = fit_to_size(Image.new("L", (50, 30), 200), 64, 64, ResizeMode.JUST_RESIZE)
    assert fitted.mode == "RGB"
    assert fitted.getpixel((32, 32)) == (200, 200, 200)


def test_just_resize_stretches_the_whole_image():
    fitted = fit_to_size(
        _bands(300, 100, vertical=True), 90, 90, ResizeMode.JUST_RESIZE
    )
    assert _close(fitted.getpixel((10, 45)), RED)
    assert _close(fitted.getpixel((45, 45)), GREEN)
    assert _close(fitted.getpixel((80, 45)), BLUE)
    # The full height is kept: the bands run from top to bottom.
    assert _close(fitted.getpixel((10, 0)), RED)
    assert _close(fitted.getpixel((80, 89)), BLUE)


def test_crop_and_resize_keeps_the_centre_and_crops_the_sides():
    fitted = fit_to_size(
        _bands(300, 100, vertical=True), 90, 90, ResizeMode.CROP_AND_RESIZE
    )
    for point in [(3, 3), (45, 45), (86, 86), (3, 86), (86, 3)]:
        assert _close(fitted.getpixel(point), GREEN), point


def test_crop_and_resize_crops_top_and_bottom_of_a_tall_image():
    fitted = fit_to_size(
        _bands(100, 300, vertical=False), 60, 60, ResizeMode.CROP_AND_RESIZE
    )
    for point in [(2, 2), (30, 30), (57, 57)]:
        assert _close(fitted.getpixel(point), GREEN), point


def test_crop_and_resize_with_the_same_aspect_keeps_everything():
    fitted = fit_to_size(
        _bands(300, 100, vertical=True), 60, 20, ResizeMode.CROP_AND_RESIZE
    )
    assert _close(fitted.getpixel((3, 10)), RED)
    assert _close(fitted.getpixel((56, 10)), BLUE)


def test_resize_and_fill_letterboxes_a_wide_image_with_stretched_edges():
    fitted = fit_to_size(
        _bands(300, 100, vertical=True), 90, 90, ResizeMode.RESIZE_AND_FILL
    )
    # The image itself occupies the middle third (rows 30..59), bands intact.
    assert _close(fitted.getpixel((10, 45)), RED)
    assert _close(fitted.getpixel((45, 45)), GREEN)
    assert _close(fitted.getpixel((80, 45)), BLUE)
    # Above and below, the outermost rows are stretched: same columns, same colours.
    for y in (0, 15, 75, 89):
        assert _close(fitted.getpixel((10, y)), RED), y
        assert _close(fitted.getpixel((45, y)), GREEN), y
        assert _close(fitted.getpixel((80, y)), BLUE), y


def test_resize_and_fill_pillarboxes_a_tall_image_with_stretched_edges():
    fitted = fit_to_size(
        _bands(100, 300, vertical=False), 90, 90, ResizeMode.RESIZE_AND_FILL
    )
    # All three bands survive, top to bottom, across the whole width.
    for x in (0, 15, 45, 75, 89):
        assert _close(fitted.getpixel((x, 10)), RED), x
        assert _close(fitted.getpixel((x, 45)), GREEN), x
        assert _close(fitted.getpixel((x, 80)), BLUE), x


def test_resize_and_fill_does_not_stretch_the_content():
    # A black square in the middle of a white image stays square when letterboxed.
    source = Image.new("RGB", (200, 100), (255, 255, 255))
    source.paste((0, 0, 0), (75, 25, 125, 75))
    fitted = fit_to_size(source, 100, 100, ResizeMode.RESIZE_AND_FILL)
    dark = [
        (x, y)
        for x in range(100)
        for y in range(100)
        if fitted.getpixel((x, y))[0] < 128
    ]
    xs = [x for x, _ in dark]
    ys = [y for _, y in dark]
    assert max(xs) - min(xs) + 1 == pytest.approx(25, abs=2)
    assert max(ys) - min(ys) + 1 == pytest.approx(25, abs=2)
    assert (min(ys) + max(ys)) / 2 == pytest.approx(49.5, abs=1.5)


def test_a_zero_target_is_refused():
    with pytest.raises(ValueError):
        fit_to_size(Image.new("RGB", (10, 10)), 0, 10, ResizeMode.JUST_RESIZE)

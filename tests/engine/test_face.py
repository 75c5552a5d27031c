"""crop_face on a real photograph (scikit-image's astronaut) and on noise."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from generation.engine.face import crop_face, detect_faces


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    """Eileen Collins' NASA portrait, 512x512: her face is around x 180-260,
    y 70-160."""
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def astronaut_crop(astronaut) -> tuple[Image.Image, dict]:
    return crop_face(astronaut)


def _centre(box: list[int]) -> tuple[float, float]:
    left, top, width, height = box
    return left + width / 2, top + height / 2


def test_the_astronauts_face_is_found_and_cropped_square(astronaut, astronaut_crop):
    crop, info = astronaut_crop
    assert info["face_found"] is True
    assert info["faces"] >= 1
    centre_x, centre_y = _centre(info["box"])
    assert 190 <= centre_x <= 250
    assert 85 <= centre_y <= 145
    assert 60 <= info["box"][2] <= 130
    left, top, right, bottom = info["crop_box"]
    assert right - left == bottom - top == crop.width == crop.height
    assert left < centre_x < right and top < centre_y < bottom
    # The default margin adds 40% of the face on each side.
    assert crop.width == round(info["box"][2] * 1.8)
    assert crop.mode == "RGB"
    assert np.array_equal(
        np.asarray(crop), np.asarray(astronaut.crop(info["crop_box"]))
    )


def test_margin_zero_crops_to_the_face_box(astronaut):
    crop, info = crop_face(astronaut, margin=0)
    assert crop.size == (info["box"][2], info["box"][3])


def test_a_large_image_is_searched_at_a_reduced_size_and_mapped_back(
    astronaut, astronaut_crop
):
    large = astronaut.resize((1024, 1024), Image.Resampling.LANCZOS)
    _, small_info = astronaut_crop
    _, large_info = crop_face(large)
    assert large_info["face_found"] is True
    small_x, small_y = _centre(small_info["box"])
    large_x, large_y = _centre(large_info["box"])
    assert large_x == pytest.approx(2 * small_x, abs=20)
    assert large_y == pytest.approx(2 * small_y, abs=20)


def test_a_mirrored_photo_gives_a_mirrored_box(astronaut, astronaut_crop):
    _, info = astronaut_crop
    _, mirrored_info = crop_face(ImageOps.mirror(astronaut))
    centre_x, _ = _centre(info["box"])
    mirrored_x, _ = _centre(mirrored_info["box"])
    assert mirrored_x == pytest.approx(astronaut.width - centre_x, abs=15)


def test_a_face_near_the_edge_keeps_a_square_crop_inside_the_image(astronaut):
    shifted = astronaut.crop((160, 40, 512, 512))
    crop, info = crop_face(shifted, margin=0.6)
    assert info["face_found"] is True
    left, top, right, bottom = info["crop_box"]
    assert left == 0
    assert right - left == bottom - top == crop.width == crop.height
    assert right <= shifted.width and bottom <= shifted.height


def test_noise_has_no_face_and_falls_back_to_the_whole_image():
    noise = Image.fromarray(
        np.random.default_rng(7).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    )
    crop, info = crop_face(noise)
    assert info["face_found"] is False
    assert info["box"] is None
    assert info["crop_box"] == [0, 0, 400, 300]
    assert np.array_equal(np.asarray(crop), np.asarray(noise))


def test_an_image_smaller_than_the_cascade_window_has_no_face():
    assert detect_faces(Image.new("RGB", (16, 40), (128, 128, 128))) == []


def test_a_negative_margin_is_refused(astronaut):
    with pytest.raises(ValueError):
        crop_face(astronaut, margin=-0.1)

"""Control images: real controlnet-aux detectors, weight lookup and seg."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from generation.engine.errors import InvalidRequest, MissingWeights
from generation.engine.preprocessors import (
    ANNOTATORS_REPO,
    PREPROCESSORS,
    _controlnet_aux_module,
    make_control_image,
    preprocessor_name,
    validate_control_unit,
)
from generation.engine.requests import ControlType, ControlUnitInput, ResizeMode
from generation.engine.resize import fit_to_size
from tests.annotators import save_pidinet, save_tiny_segmenter

ADE_PALETTE_HEAD = [(120, 120, 120), (180, 120, 120), (6, 230, 230)]


@pytest.fixture(autouse=True)
def empty_hub_cache(monkeypatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache, so no annotator cached on this machine leaks in."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _make(
    unit: ControlUnitInput, source: Image.Image | None, width=96, height=64, **kw
):
    arguments = {"annotators_dir": None, "seg_model": None, "offline": True, **kw}
    return make_control_image(unit, source, width, height, **arguments)


def _square(size=(128, 128), box=(40, 40, 88, 88)) -> Image.Image:
    """A white square on black: its edges are known exactly."""
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste((255, 255, 255), box)
    return image


def _hub_snapshot(cache: Path) -> Path:
    """The snapshot folder of lllyasviel/Annotators in a Hugging Face cache, laid
    out as huggingface_hub writes it."""
    repo = cache / "models--lllyasviel--Annotators"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    return snapshot


# Weight-free detectors --------------------------------------------------------


def test_canny_finds_the_edges_of_a_square_at_the_target_size():
    control = _make(ControlUnitInput(ControlType.CANNY), _square(), 128, 128)
    assert control.size == (128, 128)
    assert control.mode == "RGB"
    edges = np.asarray(control)[:, :, 0] > 127
    assert edges[64, 38:43].any()  # the left side of the square
    assert edges[38:43, 64].any()  # its top
    assert not edges[50:78, 50:78].any()  # inside
    assert not edges[:30, :30].any()  # far outside


def test_canny_thresholds_reach_the_detector():
    unit = ControlUnitInput(
        ControlType.CANNY,
        preprocessor_options={"low_threshold": 50_000, "high_threshold": 90_000},
    )
    control = _make(unit, _square(), 128, 128)
    assert not np.asarray(control).any()


def test_the_source_is_fitted_with_the_resize_mode_before_detection():
    # A square at the far left of a wide image: cropped away by crop_and_resize.
    source = _square(size=(384, 128), box=(20, 40, 68, 88))
    unit = ControlUnitInput(ControlType.CANNY)
    cropped = _make(unit, source, 128, 128, resize_mode=ResizeMode.CROP_AND_RESIZE)
    stretched = _make(unit, source, 128, 128, resize_mode=ResizeMode.JUST_RESIZE)
    assert not np.asarray(cropped).any()
    assert np.asarray(stretched)[:, :40].any()


def test_lineart_standard_draws_a_dark_line_as_a_bright_one():
    source = Image.new("RGB", (128, 128), (255, 255, 255))
    ImageDraw.Draw(source).line([(20, 64), (108, 64)], fill=(0, 0, 0), width=3)
    unit = ControlUnitInput(
        ControlType.LINEART, preprocessor_options={"preprocessor": "lineart_standard"}
    )
    control = np.asarray(_make(unit, source, 128, 64))
    assert control.shape == (64, 128, 3)
    assert control[31:34, 40:90].mean() > 100  # the line (now at row 32)
    assert control[:20].mean() < 10 and control[45:].mean() < 10


def test_shuffle_is_seeded_keeps_the_source_colours_and_spares_numpys_state():
    source = Image.new("RGB", (128, 128), (255, 0, 0))
    source.paste((0, 0, 255), (64, 0, 128, 128))

    def shuffle(seed: int) -> np.ndarray:
        unit = ControlUnitInput(
            ControlType.SHUFFLE, preprocessor_options={"seed": seed}
        )
        return np.asarray(_make(unit, source, 96, 64))

    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    first = shuffle(1)
    assert np.random.random() == expected_next
    assert first.shape == (64, 96, 3)
    assert np.array_equal(first, shuffle(1))
    assert not np.array_equal(first, shuffle(2))
    assert first[:, :, 1].max() <= 8  # no green: only red and blue moved around
    assert first[:, :, 0].max() > 200 and first[:, :, 2].max() > 200


def test_a_unit_without_reference_or_control_image_is_refused():
    with pytest.raises(InvalidRequest, match="needs a reference image"):
        _make(ControlUnitInput(ControlType.CANNY), None)


def test_a_ready_made_control_image_is_only_resized():
    pose_map = _square(size=(300, 100), box=(10, 10, 60, 90))
    unit = ControlUnitInput(ControlType.OPENPOSE, control_image=pose_map)
    control = _make(unit, None, 96, 64, resize_mode=ResizeMode.RESIZE_AND_FILL)
    expected = fit_to_size(pose_map, 96, 64, ResizeMode.RESIZE_AND_FILL)
    assert np.array_equal(np.asarray(control), np.asarray(expected))


# Annotators that need weights ------------------------------------------------

WEIGHTED = sorted(name for name, p in PREPROCESSORS.items() if p.weights)


@pytest.mark.parametrize("name", WEIGHTED)
def test_missing_annotator_weights_name_the_files_and_the_folder(name, tmp_path):
    preprocessor = PREPROCESSORS[name]
    unit = ControlUnitInput(
        preprocessor.control_type, preprocessor_options={"preprocessor": name}
    )
    with pytest.raises(MissingWeights) as caught:
        _make(unit, _square(), annotators_dir=tmp_path)
    message = str(caught.value)
    for _, filename in preprocessor.weights:
        assert filename in message
    assert str(tmp_path) in message
    assert "STUDIO_ANNOTATORS_DIR" in message
    assert ANNOTATORS_REPO in message


def test_the_defaults_that_need_weights_say_so_without_a_folder():
    for control_type in (ControlType.OPENPOSE, ControlType.DEPTH, ControlType.SOFTEDGE):
        with pytest.raises(MissingWeights, match="set STUDIO_ANNOTATORS_DIR"):
            _make(ControlUnitInput(control_type), _square())


def test_only_the_absent_file_is_named(tmp_path):
    (tmp_path / "sk_model.pth").write_bytes(b"")
    unit = ControlUnitInput(ControlType.LINEART)
    with pytest.raises(MissingWeights) as caught:
        _make(unit, _square(), annotators_dir=tmp_path)
    message = str(caught.value)
    assert "sk_model2.pth" in message
    assert "sk_model.pth," not in message and "sk_model.pth " not in message
    assert "lineart_standard preprocessor needs no weights" in message


def test_annotator_weights_load_from_the_annotators_folder(tmp_path):
    save_pidinet(tmp_path / "table5_pidinet.pth")
    unit = ControlUnitInput(
        ControlType.SOFTEDGE, preprocessor_options={"preprocessor": "softedge_pidinet"}
    )
    control = _make(unit, _square(), 96, 64, annotators_dir=tmp_path)
    assert control.size == (96, 64)
    pixels = np.asarray(control)
    assert pixels.std() > 0
    again = _make(unit, _square(), 96, 64, annotators_dir=tmp_path)
    assert np.array_equal(pixels, np.asarray(again))


def test_annotator_weights_load_from_the_hugging_face_cache(empty_hub_cache):
    save_pidinet(_hub_snapshot(empty_hub_cache) / "table5_pidinet.pth", seed=1)
    unit = ControlUnitInput(
        ControlType.SCRIBBLE, preprocessor_options={"preprocessor": "scribble_pidinet"}
    )
    control = _make(unit, _square(), 64, 64)
    assert control.size == (64, 64)


def test_weight_files_may_come_from_the_folder_and_the_cache_together(
    tmp_path, empty_hub_cache
):
    """lineart needs two files: here one is in the annotators folder, the other
    only in the Hugging Face cache."""
    generator = _controlnet_aux_module("lineart").Generator
    torch.manual_seed(0)
    torch.save(generator(3, 1, 3).state_dict(), tmp_path / "sk_model.pth")
    snapshot = _hub_snapshot(empty_hub_cache)
    torch.save(generator(3, 1, 3).state_dict(), snapshot / "sk_model2.pth")
    for name in ("lineart_realistic", "lineart_coarse"):
        unit = ControlUnitInput(
            ControlType.LINEART, preprocessor_options={"preprocessor": name}
        )
        control = _make(unit, _square(), 64, 64, annotators_dir=tmp_path)
        assert control.size == (64, 64)


def test_an_unreadable_weights_file_is_reported(tmp_path):
    (tmp_path / "table5_pidinet.pth").write_bytes(b"not a checkpoint")
    unit = ControlUnitInput(
        ControlType.SOFTEDGE, preprocessor_options={"preprocessor": "softedge_pidinet"}
    )
    with pytest.raises(MissingWeights, match="could not load"):
        _make(unit, _square(), annotators_dir=tmp_path)


# Segmentation ----------------------------------------------------------------


def test_seg_without_a_model_raises_missing_weights():
    with pytest.raises(MissingWeights, match="STUDIO_SEG_MODEL"):
        _make(ControlUnitInput(ControlType.SEG), _square())


def test_seg_with_an_absent_model_raises_missing_weights(tmp_path):
    absent = str(tmp_path / "no-such-segmenter")
    with pytest.raises(MissingWeights, match="no-such-segmenter"):
        _make(ControlUnitInput(ControlType.SEG), _square(), seg_model=absent)


def test_seg_with_a_ready_made_map_keeps_its_label_colours():
    seg_map = Image.new("RGB", (90, 30), ADE_PALETTE_HEAD[0])
    seg_map.paste(ADE_PALETTE_HEAD[2], (45, 0, 90, 30))
    unit = ControlUnitInput(ControlType.SEG, control_image=seg_map)
    control = _make(unit, None, 96, 64, resize_mode=ResizeMode.JUST_RESIZE)
    assert control.size == (96, 64)
    colours = {colour for _, colour in control.getcolors()}
    assert colours == {ADE_PALETTE_HEAD[0], ADE_PALETTE_HEAD[2]}


def test_seg_runs_a_transformers_segmenter_and_paints_the_ade_palette(tmp_path):
    save_tiny_segmenter(tmp_path / "segmenter")
    control = _make(
        ControlUnitInput(ControlType.SEG),
        _square(),
        96,
        64,
        seg_model=str(tmp_path / "segmenter"),
    )
    assert control.size == (96, 64)
    assert {colour for _, colour in control.getcolors()} <= set(ADE_PALETTE_HEAD)


# Options ---------------------------------------------------------------------


def test_each_type_has_a_default_preprocessor_and_accepts_its_own():
    assert preprocessor_name(ControlUnitInput(ControlType.CANNY)) == "canny"
    assert preprocessor_name(ControlUnitInput(ControlType.LINEART)) == (
        "lineart_realistic"
    )
    for name, preprocessor in PREPROCESSORS.items():
        unit = ControlUnitInput(
            preprocessor.control_type, preprocessor_options={"preprocessor": name}
        )
        validate_control_unit(unit)
        assert preprocessor_name(unit) == name


@pytest.mark.parametrize(
    ("control_type", "options", "complaint"),
    [
        (ControlType.CANNY, {"preprocessor": "sobel"}, "Unknown preprocessor 'sobel'"),
        (ControlType.CANNY, {"preprocessor": "lineart_standard"}, "makes lineart"),
        (ControlType.CANNY, {"sigma": 2}, "no option 'sigma'"),
        (ControlType.CANNY, {"low_threshold": "low"}, "must be a whole number"),
        (ControlType.CANNY, {"low_threshold": 1.5}, "must be a whole number"),
        (ControlType.SOFTEDGE, {"safe": 1}, "must be true or false"),
        (ControlType.SHUFFLE, {"detect_resolution": 32}, "at least 64"),
        (ControlType.SEG, {"threshold": 0.5}, "no option 'threshold'"),
        (ControlType.SEG, {"detect_resolution": 512}, "no option 'detect_resolution'"),
    ],
)
def test_bad_options_are_refused_before_anything_loads(
    control_type, options, complaint
):
    unit = ControlUnitInput(control_type, preprocessor_options=options)
    with pytest.raises(InvalidRequest, match=complaint):
        validate_control_unit(unit)
    with pytest.raises(InvalidRequest, match=complaint):
        _make(unit, _square())


def test_detectors_are_imported_without_the_whole_controlnet_aux_package():
    script = (
        "import sys\n"
        "from PIL import Image\n"
        "from generation.engine.preprocessors import make_control_image\n"
        "from generation.engine.requests import ControlType, ControlUnitInput\n"
        "for control_type in (ControlType.CANNY, ControlType.SHUFFLE):\n"
        "    make_control_image(ControlUnitInput(control_type),\n"
        "        Image.new('RGB', (64, 64)), 64, 64,\n"
        "        annotators_dir=None, seg_model=None, offline=True)\n"
        "loaded = {name for name in sys.modules if name.startswith('controlnet_aux')}\n"
        "assert loaded == {'controlnet_aux.canny', 'controlnet_aux.shuffle',\n"
        "    'controlnet_aux.util'}, loaded\n"
        "import controlnet_aux\n"
        "assert controlnet_aux.CannyDetector is sys.modules['controlnet_aux.canny']"
        ".CannyDetector\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-W", "ignore", "-c", script], check=True, cwd=root)


def test_annotators_run_on_the_engines_device(tmp_path, tiny_model_root):
    """The engine hands its device to the detectors: on the CPU they run there;
    on the meta device (weights without data, so a run cannot finish) the
    detector was loaded onto it, which the detector cache shows."""
    from dataclasses import replace

    from generation.engine.config import tiny_engine_config
    from generation.engine.preprocessors import _load_detector
    from generation.engine.requests import GenerationRequest, Method, ReferenceInput
    from generation.engine.runner import Engine

    save_pidinet(tmp_path / "table5_pidinet.pth", seed=3)
    unit = ControlUnitInput(
        ControlType.SOFTEDGE, preprocessor_options={"preprocessor": "softedge_pidinet"}
    )
    request = GenerationRequest(
        model="tiny-sd15",
        prompt="a portrait",
        method=Method.CONTROLNET,
        steps=1,
        width=64,
        height=64,
        references=[ReferenceInput(_square())],
        control_units=[unit],
    )
    config = replace(tiny_engine_config(tiny_model_root), annotators_dir=tmp_path)
    weights = (("filename", str(tmp_path / "table5_pidinet.pth")),)

    result = Engine(replace(config, device="cpu")).generate(request)
    assert np.asarray(result.images[0]).std() > 0
    hits = _load_detector.cache_info().hits
    on_cpu = _load_detector("softedge_pidinet", weights, "cpu")
    assert _load_detector.cache_info().hits == hits + 1  # loaded by the engine
    assert next(on_cpu.netNetwork.parameters()).device.type == "cpu"

    with pytest.raises((NotImplementedError, RuntimeError)):
        Engine(replace(config, device="meta")).generate(request)
    hits = _load_detector.cache_info().hits
    on_meta = _load_detector("softedge_pidinet", weights, "meta")
    assert _load_detector.cache_info().hits == hits + 1  # the engine's, on meta
    assert next(on_meta.netNetwork.parameters()).device.type == "meta"

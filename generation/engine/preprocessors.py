"""Control images for ControlNet: controlnet-aux annotators and a segmenter.

Each control type has named preprocessors (AUTOMATIC1111's names); a unit picks
one with the ``preprocessor`` option, else the type's default. canny,
lineart_standard and shuffle need no weights. The others load annotator weights
(the files of the Hugging Face repository ``lllyasviel/Annotators``) from the
configured annotators folder (``STUDIO_ANNOTATORS_DIR``) or the Hugging Face
cache, offline unless told otherwise; when a file is absent, MissingWeights names
it and the folder to put it in. controlnet-aux has no segmenter: seg runs a
transformers semantic-segmentation model (``STUDIO_SEG_MODEL``) and paints the
ADE20K palette the seg ControlNets were trained on.

The source is first fitted to the target size with the request's resize mode, so
that a control map lines up with an img2img init image made from the same
reference; detection runs at the target's resolution unless the unit sets
``detect_resolution``, and the map comes back at exactly the target size. A
ready-made control image is only fitted (nearest-neighbour for seg maps, whose
colours are labels), never preprocessed. Shuffle is seeded (option ``seed``,
default 0) so that the same request gives the same map.

Detectors with weights and the segmenter run on the ``device`` they are given
(the engine gives its own: the worker's GPU), in float32; each one follows its
parameters' device in controlnet-aux.

controlnet-aux is imported one detector module at a time, without running the
package's ``__init__`` (which imports every detector and with them timm,
torchvision and more). Measured here, with torch already imported: the package
root 3.1 s; canny, shuffle, lineart_standard 0.01 s; hed, pidi, lineart 0.06 s;
open_pose 1.4 s; midas 1.5 s (it imports timm).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from generation.engine.errors import InvalidRequest, MissingWeights
from generation.engine.requests import ControlType, ControlUnitInput, ResizeMode
from generation.engine.resize import fit_to_size

ANNOTATORS_REPO = "lllyasviel/Annotators"
ANNOTATORS_SETTING = "STUDIO_ANNOTATORS_DIR"
SEG_SETTING = "STUDIO_SEG_MODEL"
SEG_PREPROCESSOR = "seg"
# The smallest detection resolution controlnet-aux can work at: it rounds the
# working size to multiples of 64.
MIN_DETECT_RESOLUTION = 64
# The largest: annotators are trained at 512; past the largest generation side
# a map gains nothing and the detector's memory grows with the square.
MAX_DETECT_RESOLUTION = 2048


@dataclass(frozen=True)
class Option:
    """A preprocessor option a request may set: the detector's keyword, its type."""

    keyword: str
    kind: type


@dataclass(frozen=True)
class Preprocessor:
    """One controlnet-aux annotator and how the studio calls it.

    ``weights`` pairs each ``from_pretrained`` keyword with the file it names in
    ``lllyasviel/Annotators``; ``fixed`` are call arguments that make this
    variant (``scribble=True``, say); ``options`` are what a request may set.
    """

    name: str
    control_type: ControlType
    module: str
    class_name: str
    weights: tuple[tuple[str, str], ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Option] = field(default_factory=dict)


_OPENPOSE_WEIGHTS = (
    ("filename", "body_pose_model.pth"),
    ("hand_filename", "hand_pose_model.pth"),
    ("face_filename", "facenet.pth"),
)
_HED_WEIGHTS = (("filename", "ControlNetHED.pth"),)
_PIDINET_WEIGHTS = (("filename", "table5_pidinet.pth"),)
_LINEART_WEIGHTS = (("filename", "sk_model.pth"), ("coarse_filename", "sk_model2.pth"))
_SAFE = {"safe": Option("safe", bool)}


def _openpose(name: str, *, hand: bool, face: bool) -> Preprocessor:
    return Preprocessor(
        name,
        ControlType.OPENPOSE,
        "open_pose",
        "OpenposeDetector",
        _OPENPOSE_WEIGHTS,
        fixed={"include_body": True, "include_hand": hand, "include_face": face},
    )


PREPROCESSORS: dict[str, Preprocessor] = {
    preprocessor.name: preprocessor
    for preprocessor in (
        Preprocessor(
            "canny",
            ControlType.CANNY,
            "canny",
            "CannyDetector",
            options={
                "low_threshold": Option("low_threshold", int),
                "high_threshold": Option("high_threshold", int),
            },
        ),
        _openpose("openpose", hand=False, face=False),
        _openpose("openpose_hand", hand=True, face=False),
        _openpose("openpose_face", hand=False, face=True),
        _openpose("openpose_full", hand=True, face=True),
        Preprocessor(
            "depth_midas",
            ControlType.DEPTH,
            "midas",
            "MidasDetector",
            (("filename", "dpt_hybrid-midas-501f0c75.pt"),),
        ),
        Preprocessor(
            "softedge_hed",
            ControlType.SOFTEDGE,
            "hed",
            "HEDdetector",
            _HED_WEIGHTS,
            options=_SAFE,
        ),
        Preprocessor(
            "softedge_pidinet",
            ControlType.SOFTEDGE,
            "pidi",
            "PidiNetDetector",
            _PIDINET_WEIGHTS,
            options={**_SAFE, "apply_filter": Option("apply_filter", bool)},
        ),
        Preprocessor(
            "scribble_hed",
            ControlType.SCRIBBLE,
            "hed",
            "HEDdetector",
            _HED_WEIGHTS,
            fixed={"scribble": True},
            options=_SAFE,
        ),
        Preprocessor(
            "scribble_pidinet",
            ControlType.SCRIBBLE,
            "pidi",
            "PidiNetDetector",
            _PIDINET_WEIGHTS,
            fixed={"scribble": True, "safe": True},
        ),
        Preprocessor(
            "lineart_realistic",
            ControlType.LINEART,
            "lineart",
            "LineartDetector",
            _LINEART_WEIGHTS,
            fixed={"coarse": False},
        ),
        Preprocessor(
            "lineart_coarse",
            ControlType.LINEART,
            "lineart",
            "LineartDetector",
            _LINEART_WEIGHTS,
            fixed={"coarse": True},
        ),
        Preprocessor(
            "lineart_standard",
            ControlType.LINEART,
            "lineart_standard",
            "LineartStandardDetector",
            # controlnet-aux spells it "guassian"; requests use the right spelling.
            options={
                "gaussian_sigma": Option("guassian_sigma", float),
                "intensity_threshold": Option("intensity_threshold", int),
            },
        ),
        Preprocessor(
            "shuffle",
            ControlType.SHUFFLE,
            "shuffle",
            "ContentShuffleDetector",
            options={"f": Option("f", int), "seed": Option("seed", int)},
        ),
    )
}

DEFAULT_PREPROCESSORS: dict[ControlType, str] = {
    ControlType.CANNY: "canny",
    ControlType.OPENPOSE: "openpose",
    ControlType.DEPTH: "depth_midas",
    ControlType.SOFTEDGE: "softedge_hed",
    ControlType.SCRIBBLE: "scribble_hed",
    ControlType.LINEART: "lineart_realistic",
    ControlType.SHUFFLE: "shuffle",
    ControlType.SEG: SEG_PREPROCESSOR,
}

# Options every preprocessor takes, handled here rather than by the detector.
_COMMON_OPTIONS = {"preprocessor", "detect_resolution"}


def preprocessor_name(unit: ControlUnitInput) -> str:
    """The preprocessor this unit runs: its ``preprocessor`` option or the default."""
    control_type = ControlType(unit.control_type)
    name = unit.preprocessor_options.get("preprocessor")
    return DEFAULT_PREPROCESSORS[control_type] if name is None else str(name)


def validate_control_unit(unit: ControlUnitInput) -> None:
    """Refuse an unknown preprocessor, one of another type, or unknown or badly
    typed options (InvalidRequest), before any model is loaded."""
    _checked_options(unit)


def make_control_image(
    unit: ControlUnitInput,
    source: Image.Image | None,
    width: int,
    height: int,
    *,
    annotators_dir: Path | None,
    seg_model: str | None,
    offline: bool,
    resize_mode: ResizeMode = ResizeMode.CROP_AND_RESIZE,
    device: str = "cpu",
) -> Image.Image:
    """The RGB control map for ``unit`` at exactly ``width`` x ``height``.

    A ready-made ``unit.control_image`` is fitted with ``resize_mode`` and
    returned as is. Otherwise ``source`` (the reference) is fitted the same way
    and run through the unit's preprocessor; models run on ``device``.
    Raises InvalidRequest for bad options, MissingWeights for absent weights.
    """
    name, options = _checked_options(unit)
    if unit.control_image is not None:
        # Colours of a segmentation map are labels: never blend them.
        resample = (
            Image.Resampling.NEAREST
            if name == SEG_PREPROCESSOR
            else Image.Resampling.LANCZOS
        )
        return fit_to_size(
            unit.control_image, width, height, resize_mode, resample=resample
        )
    if source is None:
        raise InvalidRequest(
            f"The {unit.control_type.value} unit needs a reference image or a "
            "ready-made control image."
        )
    fitted = fit_to_size(source, width, height, resize_mode)
    # By default detection runs at the target's own resolution ("pixel perfect"):
    # a map computed larger and scaled down loses its thin lines.
    detect_resolution = options.pop(
        "detect_resolution", max(MIN_DETECT_RESOLUTION, min(width, height))
    )
    if name == SEG_PREPROCESSOR:
        control = _segment(fitted, seg_model, offline=offline, device=device)
        return control.resize((width, height), Image.Resampling.NEAREST)
    preprocessor = PREPROCESSORS[name]
    detector = _detector(preprocessor, annotators_dir, offline=offline, device=device)
    arguments = {
        **preprocessor.fixed,
        **{preprocessor.options[key].keyword: value for key, value in options.items()},
    }
    seed = arguments.pop("seed", 0)
    # Shuffle draws from NumPy's global generator: seed it for this call only,
    # so that the same request gives the same map.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        control = detector(
            fitted, detect_resolution=detect_resolution, output_type="pil", **arguments
        )
    finally:
        np.random.set_state(state)
    control = control.convert("RGB")
    if control.size != (width, height):
        control = control.resize((width, height), Image.Resampling.BILINEAR)
    return control


def _checked_options(unit: ControlUnitInput) -> tuple[str, dict[str, Any]]:
    """The unit's preprocessor name and its options, converted to their types."""
    control_type = ControlType(unit.control_type)
    name = preprocessor_name(unit)
    if name == SEG_PREPROCESSOR:
        allowed: Mapping[str, Option] = {}
        common = {"preprocessor"}  # the segmenter's processor sets the size
        expected_type = ControlType.SEG
    elif name in PREPROCESSORS:
        allowed = PREPROCESSORS[name].options
        common = _COMMON_OPTIONS
        expected_type = PREPROCESSORS[name].control_type
    else:
        raise InvalidRequest(
            f"Unknown preprocessor '{name}' for {control_type.value}; choose one of "
            f"{', '.join(_names_for(control_type))}."
        )
    if expected_type is not control_type:
        raise InvalidRequest(
            f"The preprocessor '{name}' makes {expected_type.value} maps, not "
            f"{control_type.value}; choose one of "
            f"{', '.join(_names_for(control_type))}."
        )
    options: dict[str, Any] = {}
    for key, value in unit.preprocessor_options.items():
        if key == "preprocessor":
            continue
        if key == "detect_resolution" and key in common:
            options[key] = _converted(name, key, value, int)
            if not MIN_DETECT_RESOLUTION <= options[key] <= MAX_DETECT_RESOLUTION:
                raise InvalidRequest(
                    f"detect_resolution must be at least {MIN_DETECT_RESOLUTION} "
                    f"and at most {MAX_DETECT_RESOLUTION}, not {options[key]}."
                )
        elif key in allowed:
            options[key] = _converted(name, key, value, allowed[key].kind)
        else:
            known = sorted(common | set(allowed))
            raise InvalidRequest(
                f"The {name} preprocessor has no option '{key}'; it takes "
                f"{', '.join(known)}."
            )
    return name, options


def _converted(name: str, key: str, value: Any, kind: type) -> Any:
    """``value`` as ``kind``; refused when that would change it (1.5 as an int)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is bool and isinstance(value, bool):
        return value
    if kind is not bool and is_number and kind(value) == value:
        return kind(value)
    raise InvalidRequest(
        f"The {name} option '{key}' must be {_KIND_NAMES[kind]}, not {value!r}."
    )


_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number"}


def _names_for(control_type: ControlType) -> list[str]:
    if control_type is ControlType.SEG:
        return [SEG_PREPROCESSOR]
    return [p.name for p in PREPROCESSORS.values() if p.control_type is control_type]


def _detector(
    preprocessor: Preprocessor,
    annotators_dir: Path | None,
    *,
    offline: bool,
    device: str,
) -> Any:
    """The detector, ready to call: weight-free ones are built, the others loaded
    once per set of weight files and device."""
    if not preprocessor.weights:
        return _detector_class(preprocessor.name)()
    paths = {
        keyword: _weights_file(filename, annotators_dir, offline)
        for keyword, filename in preprocessor.weights
    }
    missing = [
        filename for keyword, filename in preprocessor.weights if not paths[keyword]
    ]
    if missing:
        raise MissingWeights(_missing_message(preprocessor, missing, annotators_dir))
    return _load_detector(preprocessor.name, tuple(paths.items()), device)


@lru_cache(maxsize=16)
def _load_detector(name: str, paths: tuple[tuple[str, str], ...], device: str) -> Any:
    first_folder = str(Path(paths[0][1]).parent)
    try:
        # With a folder, controlnet-aux joins it with each file name; absolute
        # names survive the join, so the files may come from different folders.
        detector = _detector_class(name).from_pretrained(first_folder, **dict(paths))
    except Exception as error:
        files = ", ".join(path for _, path in paths)
        raise MissingWeights(
            f"The {name} preprocessor could not load its weights ({files}): "
            f"{error}. Replace them with the files of {ANNOTATORS_REPO}."
        ) from error
    return detector.to(device)


def _weights_file(
    filename: str, annotators_dir: Path | None, offline: bool
) -> str | None:
    """The path of one annotator file: the annotators folder first, then the
    Hugging Face cache (downloading only when not ``offline``)."""
    if annotators_dir is not None:
        candidate = Path(annotators_dir) / filename
        if candidate.is_file():
            return str(candidate)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(ANNOTATORS_REPO, filename, local_files_only=offline)
    except OSError:  # not cached, offline mode, or the Hub unreachable
        return None


def _missing_message(
    preprocessor: Preprocessor, missing: list[str], annotators_dir: Path | None
) -> str:
    files = ", ".join(missing)
    where = (
        f"put them in {annotators_dir} (the folder {ANNOTATORS_SETTING} names)"
        if annotators_dir is not None
        else f"put them in a folder and set {ANNOTATORS_SETTING} to it"
    )
    weight_free = [
        p.name
        for p in PREPROCESSORS.values()
        if p.control_type is preprocessor.control_type and not p.weights
    ]
    alternative = (
        f" The {', '.join(weight_free)} preprocessor needs no weights."
        if weight_free
        else ""
    )
    return (
        f"The {preprocessor.name} preprocessor needs the annotator weights {files}, "
        f"which are missing. Download them from the Hugging Face repository "
        f"{ANNOTATORS_REPO} and {where}, or into the Hugging Face cache; or give "
        f"the unit a ready-made control image.{alternative}"
    )


def _detector_class(name: str) -> Any:
    preprocessor = PREPROCESSORS[name]
    return getattr(_controlnet_aux_module(preprocessor.module), preprocessor.class_name)


def _controlnet_aux_module(module: str) -> ModuleType:
    """Import ``controlnet_aux.<module>`` without running the package's __init__.

    A bare package module (its path, not its code) stands in for
    ``controlnet_aux`` while the submodule imports; it is removed afterwards so
    that a later plain ``import controlnet_aux`` still gets the whole package.
    """
    name = f"controlnet_aux.{module}"
    if name in sys.modules:
        return sys.modules[name]
    if "controlnet_aux" in sys.modules:
        return importlib.import_module(name)
    spec = importlib.util.find_spec("controlnet_aux")
    sys.modules["controlnet_aux"] = importlib.util.module_from_spec(spec)
    try:
        return importlib.import_module(name)
    finally:
        del sys.modules["controlnet_aux"]


def _segment(
    image: Image.Image, seg_model: str | None, *, offline: bool, device: str
) -> Image.Image:
    """A segmentation map in the ADE20K palette the seg ControlNets expect."""
    import torch

    processor, model = _seg_model(seg_model, offline, device)
    inputs = processor(images=image, return_tensors="pt").to(device)
    with torch.no_grad():
        outputs = model(**inputs)
    labels = processor.post_process_semantic_segmentation(
        outputs, target_sizes=[(image.height, image.width)]
    )[0]
    palette = np.array(_controlnet_aux_module("util").ade_palette(), dtype=np.uint8)
    return Image.fromarray(palette[labels.cpu().numpy() % len(palette)])


@lru_cache(maxsize=2)
def _seg_model(seg_model: str | None, offline: bool, device: str) -> tuple[Any, Any]:
    if not seg_model:
        raise MissingWeights(
            "The seg control type needs a semantic-segmentation model: set "
            f"{SEG_SETTING} to a transformers model (a local folder, or a Hub id "
            "such as openmmlab/upernet-convnext-small already in the Hugging Face "
            "cache), or give the unit a ready-made segmentation map."
        )
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    try:
        processor = AutoImageProcessor.from_pretrained(
            seg_model, local_files_only=offline
        )
        model = AutoModelForSemanticSegmentation.from_pretrained(
            seg_model, local_files_only=offline
        )
    except OSError as error:
        raise MissingWeights(
            f"The segmentation model '{seg_model}' ({SEG_SETTING}) could not be "
            f"loaded{' offline' if offline else ''}: {error}. Put the model's "
            f"files (config, preprocessor config and weights) in that folder, or "
            f"download the Hub model into the Hugging Face cache beforehand."
        ) from error
    return processor, model.to(device).eval()

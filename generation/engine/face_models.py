"""dlib's face models: where their files are, and one loaded copy per process.

The weights ship on the package index: the detector code and the HOG frontal
face detector in the prebuilt wheel ``dlib-bin``; the 5-point landmark
predictor, the 128-D face-recognition ResNet and the mmod CNN face detector as
``.dat`` files in ``face-recognition-models`` (CC0). Nothing is downloaded.

``face_recognition_models/__init__.py`` imports ``pkg_resources``, which
current setuptools no longer ships, so the package is never imported: its
folder is found with ``importlib.util.find_spec``, which locates a top-level
package without running it. The package also holds a 68-point predictor whose
training data excludes commercial use; the studio never opens it.

dlib's models are not documented as safe to call from several threads at
once, so each loaded model carries its own lock, held for every call.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import MissingWeights

MODELS_PACKAGE = "face_recognition_models"
MODELS_DISTRIBUTION = "face-recognition-models"
SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"
MODEL_FILES = (SHAPE_PREDICTOR_FILE, RECOGNITION_MODEL_FILE, CNN_DETECTOR_FILE)

_Result = TypeVar("_Result")


class FaceModelsMissing(MissingWeights):
    """dlib or the face model files are not installed; the message says what to
    install."""

    code = "face_models_missing"


@dataclass
class LockedModel:
    """A loaded dlib model and the lock every call to it holds."""

    model: Any
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, function: Callable[..., _Result], *args: Any) -> _Result:
        """``function(model, *args)`` under the model's lock."""
        with self.lock:
            return function(self.model, *args)


@dataclass(frozen=True)
class FaceModels:
    """The models every face analysis needs (the CNN detector loads apart, on
    first use, as it is an option)."""

    hog_detector: LockedModel
    shape_predictor: LockedModel
    recognizer: LockedModel


def models_directory(package: str = MODELS_PACKAGE) -> Path:
    """The folder holding the ``.dat`` files, found without importing
    ``package``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelsMissing(
            f"The face model package {package!r} is not installed: install it "
            f"with `pip install {MODELS_DISTRIBUTION}` (it holds "
            f"{', '.join(MODEL_FILES)})."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def model_file(name: str, directory: Path | None = None) -> Path:
    """The path of model file ``name``; a clear error naming it when absent."""
    if name not in MODEL_FILES:
        raise ValueError(f"{name!r} is not one of the studio's face model files")
    folder = models_directory() if directory is None else directory
    path = folder / name
    if not path.is_file():
        raise FaceModelsMissing(
            f"The face model file {name} is missing from {folder}: reinstall "
            f"it with `pip install --force-reinstall {MODELS_DISTRIBUTION}`."
        )
    return path


def _dlib() -> Any:
    try:
        import dlib
    except ImportError as error:
        raise FaceModelsMissing(
            "dlib is not installed: install the prebuilt wheel with "
            "`pip install dlib-bin`."
        ) from error
    return dlib


_load_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def _once(key: str, load: Callable[[], _Result]) -> _Result:
    # One lock for every load: two threads asking at once load the file once.
    with _load_lock:
        if key not in _loaded:
            _loaded[key] = load()
        return _loaded[key]


def face_models() -> FaceModels:
    """The HOG detector, the 5-point predictor and the recognition ResNet,
    loaded once per process."""

    def load() -> FaceModels:
        dlib = _dlib()
        return FaceModels(
            hog_detector=LockedModel(dlib.get_frontal_face_detector()),
            shape_predictor=LockedModel(
                dlib.shape_predictor(str(model_file(SHAPE_PREDICTOR_FILE)))
            ),
            recognizer=LockedModel(
                dlib.face_recognition_model_v1(str(model_file(RECOGNITION_MODEL_FILE)))
            ),
        )

    return _once("models", load)


def cnn_detector() -> LockedModel:
    """The mmod CNN face detector, loaded once per process on first use."""

    def load() -> LockedModel:
        dlib = _dlib()
        return LockedModel(
            dlib.cnn_face_detection_model_v1(str(model_file(CNN_DETECTOR_FILE)))
        )

    return _once("cnn", load)


def dlib_version() -> str:
    """The installed dlib's version, for snapshots and benchmarks."""
    return str(_dlib().__version__)

"""The face models' install: the files are where the wheels put them, they load
in a fresh process without importing face_recognition_models (whose
``pkg_resources`` import fails on current setuptools), once per process."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from generation.engine.face_models import (
    CNN_DETECTOR_FILE,
    MODEL_FILES,
    RECOGNITION_MODEL_FILE,
    SHAPE_PREDICTOR_FILE,
    FaceModelsMissing,
    cnn_detector,
    face_models,
    model_file,
    models_directory,
)

FRESH_PROCESS_CHECK = """
import sys
from generation.engine.face_models import MODEL_FILES, model_file, face_models
from generation.engine.face_models import cnn_detector
models = face_models()
cnn_detector()
print(type(models.recognizer.model).__name__)
print(*(model_file(name).stat().st_size for name in MODEL_FILES))
print("face_recognition_models" in sys.modules)
"""


@pytest.mark.parametrize("name", MODEL_FILES)
def test_every_model_file_is_installed(name):
    path = model_file(name)
    assert path.parent == models_directory()
    # The smallest, the CNN detector, is about 0.7 MB.
    assert path.stat().st_size > 500_000


def test_the_models_load_in_a_fresh_process_without_importing_their_package():
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_CHECK],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    kind, sizes, imported = result.stdout.split("\n")[:3]
    assert kind == "face_recognition_model_v1"
    assert all(int(size) > 500_000 for size in sizes.split())
    assert imported == "False"


def test_the_models_are_loaded_once_even_from_several_threads():
    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = list(pool.map(lambda _: face_models(), range(8)))
    assert all(models is loaded[0] for models in loaded)
    assert cnn_detector() is cnn_detector()


def test_a_missing_package_is_a_clear_error():
    with pytest.raises(FaceModelsMissing, match="pip install face-recognition-models"):
        models_directory("no_such_face_models_package")


def test_a_missing_file_is_a_clear_error_naming_it(tmp_path):
    (tmp_path / SHAPE_PREDICTOR_FILE).write_bytes(b"")
    with pytest.raises(FaceModelsMissing) as error:
        model_file(RECOGNITION_MODEL_FILE, tmp_path)
    assert RECOGNITION_MODEL_FILE in str(error.value)
    assert str(tmp_path) in str(error.value)
    assert error.value.code == "face_models_missing"
    assert model_file(SHAPE_PREDICTOR_FILE, tmp_path) == tmp_path / (
        SHAPE_PREDICTOR_FILE
    )


def test_the_68_point_predictor_is_never_used():
    """Its training data excludes commercial use."""
    assert "shape_predictor_68_face_landmarks.dat" not in MODEL_FILES
    assert CNN_DETECTOR_FILE in MODEL_FILES
    with pytest.raises(ValueError, match="not one of"):
        model_file("shape_predictor_68_face_landmarks.dat")

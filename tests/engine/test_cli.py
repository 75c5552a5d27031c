"""python -m generation.engine: run a request file, regenerate from its snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation.engine.__main__ import main
from generation.engine.config import TINY_LORA_FILE

REPOSITORY = Path(__file__).resolve().parents[2]


def noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def request_file(tmp_path: Path, tiny_model_root: Path) -> Path:
    """A hybrid request with a LoRA, an IP-Adapter and two control units, one of
    them a ready-made pose map; every file path is relative to the JSON file."""
    folder = tmp_path / "request"
    (folder / "images").mkdir(parents=True)
    noise_image(1, (96, 80)).save(folder / "images" / "face.png")
    noise_image(2, (64, 64)).save(folder / "images" / "pose.png")
    (folder / "persona.safetensors").write_bytes(
        (tiny_model_root / TINY_LORA_FILE).read_bytes()
    )
    request = {
        "model": "tiny-sd15",
        "prompt": "the persona on a beach",
        "seed": 7,
        "steps": 3,
        "width": 64,
        "height": 64,
        "appearance_locked": True,
        "references": [{"image": "images/face.png", "role": "face"}],
        "control_units": [
            {"control_type": "canny", "conditioning_scale": 0.6},
            {"control_type": "openpose", "control_image": "images/pose.png"},
        ],
        "ip_adapter": {"scale": 0.5, "face_crop": True},
        "lora": {"weights": "persona.safetensors", "scale": 0.7},
    }
    path = folder / "request.json"
    path.write_text(json.dumps(request))
    return path


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_run_writes_images_control_images_and_snapshot(
    request_file, tmp_path, tiny_model_root
):
    out = tmp_path / "out"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "generation.engine",
            "run",
            str(request_file),
            "--out",
            str(out),
            "--tiny-model",
            str(tiny_model_root),
        ],
        cwd=REPOSITORY,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("hybrid (")
    assert "images are noise" in completed.stdout
    assert (out / "image-1.png").is_file()
    assert (out / "control-1-canny.png").is_file()
    assert np.array_equal(
        pixels(out / "control-2-openpose.png"),
        pixels(request_file.parent / "images" / "pose.png"),
    )
    snapshot = json.loads((out / "snapshot.json").read_text())
    assert snapshot["method"] == "hybrid"
    assert snapshot["lora"]["scale"] == 0.7
    assert snapshot["ip_adapter"]["weight_name"].startswith("ip-adapter-plus-face")
    result = json.loads((out / "result.json").read_text())
    assert result["images"] == ["image-1.png"]
    assert result["timings"]["total"] > 0
    # Every image the pipeline was given is kept under the name the call uses.
    call = snapshot["call"]
    named = [call["image"], *call["control_image"], *call["ip_adapter_image"][0]]
    for image in named:
        assert (out / "inputs" / f"{image['pixel_sha256']}.png").is_file()


def test_regenerate_from_the_snapshot_gives_identical_pixels(
    request_file, tmp_path, tiny_model_root
):
    first, second = tmp_path / "first", tmp_path / "second"
    tiny = ["--tiny-model", str(tiny_model_root)]
    assert main(["run", str(request_file), "--out", str(first), *tiny]) == 0
    snapshot = first / "snapshot.json"
    assert main(["regenerate", str(snapshot), "--out", str(second), *tiny]) == 0
    assert np.array_equal(pixels(first / "image-1.png"), pixels(second / "image-1.png"))
    replayed = json.loads((second / "snapshot.json").read_text())
    assert replayed["outputs"] == json.loads(snapshot.read_text())["outputs"]


def test_regenerate_refuses_a_changed_input(
    request_file, tmp_path, tiny_model_root, capsys
):
    first = tmp_path / "first"
    tiny = ["--tiny-model", str(tiny_model_root)]
    assert main(["run", str(request_file), "--out", str(first), *tiny]) == 0
    snapshot = json.loads((first / "snapshot.json").read_text())
    key = snapshot["references"][0]["key"]
    noise_image(99, (96, 80)).save(first / "inputs" / f"{key}.png")
    status = main(
        [
            "regenerate",
            str(first / "snapshot.json"),
            "--out",
            str(tmp_path / "x"),
            *tiny,
        ]
    )
    assert status == 2
    assert "differs from the one that produced this output" in capsys.readouterr().err


def test_a_config_file_selects_the_models(request_file, tmp_path, tiny_model_root):
    config = {
        "models": {"mine": {"source": str(tiny_model_root / "sd15")}},
        "model_roots": [str(tiny_model_root)],
    }
    config_file = tmp_path / "engine.json"
    config_file.write_text(json.dumps(config))
    request_file.write_text(
        json.dumps(
            {"model": "mine", "prompt": "x", "steps": 2, "width": 64, "height": 64}
        )
    )
    out = tmp_path / "out"
    assert (
        main(
            ["run", str(request_file), "--out", str(out), "--config", str(config_file)]
        )
        == 0
    )
    assert json.loads((out / "snapshot.json").read_text())["model"]["key"] == "mine"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 100}, "width 100 is not a multiple of 8"),
        ({"strenght": 0.5}, "unknown field(s) strenght"),
        ({"method": "inpaint"}, "Unknown method 'inpaint'"),
        ({"model": "nope"}, "Unknown model 'nope'"),
        ({"references": [{"image": "missing.png"}]}, "missing.png"),
    ],
)
def test_a_refused_request_exits_2_with_the_reason(
    request_file, tmp_path, tiny_model_root, capsys, change, message
):
    request = {"model": "tiny-sd15", "prompt": "x", "width": 64, "height": 64, **change}
    request_file.write_text(json.dumps(request))
    status = main(
        [
            "run",
            str(request_file),
            "--out",
            str(tmp_path / "out"),
            "--tiny-model",
            str(tiny_model_root),
        ]
    )
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error
    assert not (tmp_path / "out").exists()

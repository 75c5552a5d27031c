"""The engine alone, from the command line (no Django, no database).

    python -m generation.engine run REQUEST.json --out DIR
    python -m generation.engine regenerate DIR/snapshot.json --out DIR2

``run`` reads a request in the JSON form documented in docs/engine-request.md
(``snapshot.request_from_dict``): image and LoRA fields are file paths relative to
the JSON file. ``regenerate`` replays a snapshot written by ``run`` and gives the
same pixels on the same hardware. Both write into ``DIR``:

- ``image-1.png`` ... one per output image;
- ``control-1-<type>.png`` ... the control images really used, one per unit;
- ``snapshot.json``: everything that reproduces the output (``snapshot.py``);
- ``result.json``: method, reason, timings, registry hit, notes, file names;
- ``inputs/<key>.png`` and ``inputs/<key>.safetensors``: every input image and
  the LoRA under its content key, so that ``regenerate`` needs nothing else, and
  every image the pipeline was given under its pixel hash (the names the
  snapshot's ``call`` uses), so that raw diffusers can replay the call.

The models come from ``--config ENGINE.json`` (the ``EngineConfig`` fields, with
``models`` as ``{key: {"source": ..., "revision": ...}}``) or, by default, from the
built-in tiny model in ``--tiny-model DIR`` (written there first when absent;
its images are noise). Exit status 0 on success, 2 for a request the engine
refuses (the message says why).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from .config import (
    EngineConfig,
    IPAdapterSpec,
    ModelSpec,
    is_tiny_model_path,
    tiny_engine_config,
)
from .errors import EngineError, InvalidRequest
from .requests import GenerationRequest, GenerationResult
from .runner import Engine
from .snapshot import (
    build_dataclass,
    image_sha256,
    lora_key,
    reference_key,
    request_from_dict,
    request_from_snapshot,
)
from .tiny_model import write_tiny_model

DEFAULT_TINY_MODEL = Path("var/models/tiny")
INPUTS_DIR = "inputs"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run it, return the exit status."""
    args = _parser().parse_args(argv)
    try:
        config = _engine_config(args)
        if args.command == "run":
            request = _read_request(args.request)
        else:
            request = _read_snapshot_request(args.snapshot)
        result = Engine(config).generate(request)
    except (EngineError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    files = write_result(result, request, args.out)
    print(
        f"{result.method.value} ({result.method_reason}): "
        f"{len(files['images'])} image(s) in {args.out}, "
        f"{result.timings.total:.2f}s"
    )
    for note in result.notes:
        print(f"note: {note}")
    return 0


def write_result(
    result: GenerationResult, request: GenerationRequest, out: Path
) -> dict[str, list[str]]:
    """Write images, control images, snapshot, result summary and inputs."""
    out.mkdir(parents=True, exist_ok=True)
    inputs = out / INPUTS_DIR
    inputs.mkdir(exist_ok=True)
    files: dict[str, list[str]] = {"images": [], "control_images": []}
    for number, image in enumerate(result.images, start=1):
        files["images"].append(_save(image, out / f"image-{number}.png"))
    for number, control in enumerate(result.control_images, start=1):
        name = f"control-{number}-{control.control_type.value}.png"
        files["control_images"].append(_save(control.image, out / name))
    for key, image in result.call_images.items():
        _save(image, inputs / f"{key}.png")
    for reference in request.references:
        _save(reference.image, inputs / f"{_safe_key(reference_key(reference))}.png")
    for unit in request.control_units:
        if unit.control_image is not None:
            key = image_sha256(unit.control_image)
            _save(unit.control_image, inputs / f"{key}.png")
    if request.lora is not None:
        path = inputs / f"{_safe_key(lora_key(request.lora))}.safetensors"
        path.write_bytes(request.lora.weights)
    (out / "snapshot.json").write_text(json.dumps(result.snapshot, indent=2) + "\n")
    summary = {
        "method": result.method.value,
        "method_reason": result.method_reason,
        "registry_hit": result.registry_hit,
        "timings": asdict(result.timings),
        "notes": result.notes,
        **files,
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    return files


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m generation.engine",
        description="Run the generation engine on one request, without Django.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="generate from a request JSON file")
    run.add_argument("request", type=Path, help="REQUEST.json (docs/engine-request.md)")
    regenerate = commands.add_parser(
        "regenerate", help="replay a snapshot.json written by run"
    )
    regenerate.add_argument("snapshot", type=Path, help="DIR/snapshot.json")
    for command in (run, regenerate):
        command.add_argument("--out", type=Path, required=True, help="output folder")
        source = command.add_mutually_exclusive_group()
        source.add_argument("--config", type=Path, help="ENGINE.json (EngineConfig)")
        source.add_argument(
            "--tiny-model",
            type=Path,
            default=DEFAULT_TINY_MODEL,
            help="tiny model folder, written there when absent "
            f"(default {DEFAULT_TINY_MODEL})",
        )
    return parser


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    if args.config is not None:
        data = _read_json(args.config)
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, dict):
            raise InvalidRequest(f"{args.config}: 'models' must be a JSON object.")
        return build_dataclass(
            EngineConfig,
            data,
            str(args.config),
            models=lambda entries: {
                key: build_dataclass(ModelSpec, {"key": key, **spec}, f"models.{key}")
                for key, spec in entries.items()
            },
            model_roots=lambda roots: [Path(root) for root in roots],
            annotators_dir=lambda folder: None if folder is None else Path(folder),
            ip_adapter=lambda spec: (
                None
                if spec is None
                else build_dataclass(IPAdapterSpec, spec, "ip_adapter")
            ),
        )
    if not is_tiny_model_path(args.tiny_model):
        write_tiny_model(args.tiny_model)
    return tiny_engine_config(args.tiny_model.resolve())


def _read_request(path: Path) -> GenerationRequest:
    folder = path.resolve().parent
    return request_from_dict(
        _read_json(path),
        open_image=lambda name: _open_image(folder / name),
        read_bytes=lambda name: (folder / name).read_bytes(),
    )


def _read_snapshot_request(path: Path) -> GenerationRequest:
    inputs = path.resolve().parent / INPUTS_DIR
    snapshot = _read_json(path)
    if not isinstance(snapshot, dict):
        raise InvalidRequest(f"{path} is not a snapshot (a JSON object).")
    return request_from_snapshot(
        snapshot,
        open_image=lambda key: _open_image(inputs / f"{_safe_key(key)}.png"),
        read_bytes=lambda key: (inputs / f"{_safe_key(key)}.safetensors").read_bytes(),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"{path} is not valid JSON: {error}") from None


def _open_image(path: Path) -> Image.Image:
    """An image file as upright RGB pixels."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def _save(image: Image.Image, path: Path) -> str:
    image.save(path, format="PNG")
    return path.name


def _safe_key(key: str) -> str:
    """A content key used as a file name must not leave the inputs folder."""
    if not key or Path(key).name != key or key in {".", ".."}:
        raise InvalidRequest(f"{key!r} cannot name an input file.")
    return key


if __name__ == "__main__":
    sys.exit(main())

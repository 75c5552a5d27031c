"""Feed one reference shape to every path that gives an image to a model, in a
process of its own whose address space is capped by the OS (``RLIMIT_AS``).

``python -m tests.reliability.bounded_inputs_probe TINY_MODEL_ROOT WORK_DIR
BUDGET_MB WxH [WxH...]`` prints one JSON object (its last line). The models
are loaded and every path run once on a small reference first (so that what
the cap measures is what the shapes cost, not a first load); then the address
space is capped at what is mapped plus ``BUDGET_MB``, and every path runs on a
reference of each shape in turn. A path that asks for more than the cap fails
with a MemoryError (or torch's and dlib's allocation errors, RuntimeError),
which the result reports by path.

Last, under the same cap, the control: what unbounded work costs, an
allocation past the budget and the tiny VAE encoding the first shape's
reference at its full size; both must fail, or the cap proves nothing.

The paths: img2img and hybrid (the VAE encodes the init image), ControlNet
with every annotator that has weights small enough to build here at random
(canny, lineart_standard, shuffle, softedge and scribble with PiDiNet and HED,
lineart_realistic, seg with a tiny SegFormer), the IP-Adapter with and
without its face crop, the face detailer (its IP-Adapter references and the
identity of its output), reference editing with FLUX.1 Kontext (stitched) and
Qwen-Image-Edit (native references), dlib's analysis of the reference and the
identity score of an output, and the CLIP consistency score.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

# Annotators run at random weights; openpose (Body, Hand, Face: about 130 M
# parameters) and MiDaS (DPT-Hybrid, 123 M) are too large to build for a test:
# they are reached through the same fitting as every other annotator.
PREPROCESSORS = (
    "canny",
    "lineart_standard",
    "shuffle",
    "softedge_pidinet",
    "scribble_pidinet",
    "softedge_hed",
    "scribble_hed",
    "lineart_realistic",
    "seg",
)
ALLOCATION_ERRORS = (MemoryError, RuntimeError)


def reference(width: int, height: int) -> Image.Image:
    """Noise in 64-pixel tiles (structure for the edge detectors), with the
    astronaut's portrait in the middle where it fits (a face for dlib)."""
    from skimage import data

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (-(-height // 64), -(-width // 64), 3), np.uint8)
    image = Image.fromarray(tiles).resize((width, height), Image.Resampling.NEAREST)
    side = min(width, height)
    if side >= 128:
        portrait = Image.fromarray(data.astronaut()).resize((side, side))
        image.paste(portrait, ((width - side) // 2, (height - side) // 2))
    return image


def mapped_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def cap_address_space(budget_bytes: int) -> int:
    limit = mapped_bytes() + budget_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


def write_annotators(folder: Path) -> tuple[Path, Path]:
    """Random PiDiNet, HED and lineart weights in lllyasviel/Annotators' file
    layout, and a tiny SegFormer: real detectors at random weights."""
    import torch

    from generation.engine.preprocessors import _controlnet_aux_module
    from tests.annotators import save_pidinet, save_tiny_segmenter

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    save_pidinet(folder / "table5_pidinet.pth")
    hed = _controlnet_aux_module("hed").ControlNetHED_Apache2()
    torch.save(hed.state_dict(), folder / "ControlNetHED.pth")
    lineart = _controlnet_aux_module("lineart")
    for name in ("sk_model.pth", "sk_model2.pth"):
        torch.save(lineart.Generator(3, 1, 3).state_dict(), folder / name)
    segmenter = save_tiny_segmenter(folder / "segmenter")
    return folder, segmenter


class Paths:
    """Every path that gives a reference to a model, on one engine."""

    def __init__(self, root: Path, work: Path):
        import torch
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        from generation.engine.config import tiny_engine_config
        from generation.engine.runner import Engine

        torch.set_num_threads(1)
        annotators, segmenter = write_annotators(work / "annotators")
        config = replace(
            tiny_engine_config(root),
            annotators_dir=annotators,
            seg_model=str(segmenter),
        )
        self.engine = Engine(config)
        self.scorer = {
            "image_encoder": CLIPVisionModelWithProjection.from_pretrained(
                root / "ip-adapter" / "models" / "image_encoder"
            ),
            "image_processor": CLIPImageProcessor.from_pretrained(
                root / "sd15" / "feature_extractor"
            ),
        }
        from skimage import data

        # An output-sized image with a face: what the detailer redraws.
        self.portrait = Image.fromarray(data.astronaut()).resize((256, 256))

    def run(self, image: Image.Image) -> dict[str, str]:
        """Run every path on ``image``; each one's outcome by name."""
        outcomes = {}
        for name, path in self.paths(image):
            try:
                path()
            except ALLOCATION_ERRORS as error:
                outcomes[name] = f"{type(error).__name__}: {str(error)[:200]}"
            except Exception:  # noqa: BLE001 - reported, never hidden
                outcomes[name] = "error: " + traceback.format_exc()[-600:]
            else:
                outcomes[name] = "ok"
        return outcomes

    def paths(self, image: Image.Image):
        from generation.engine.requests import (
            ControlType,
            ControlUnitInput,
            IPAdapterInput,
            Method,
            ReferenceInput,
        )

        references = [ReferenceInput(image, primary=True)]
        control_type = {
            "canny": ControlType.CANNY,
            "lineart_standard": ControlType.LINEART,
            "shuffle": ControlType.SHUFFLE,
            "softedge_pidinet": ControlType.SOFTEDGE,
            "scribble_pidinet": ControlType.SCRIBBLE,
            "softedge_hed": ControlType.SOFTEDGE,
            "scribble_hed": ControlType.SCRIBBLE,
            "lineart_realistic": ControlType.LINEART,
            "seg": ControlType.SEG,
        }
        yield (
            "img2img",
            lambda: self.generate(Method.IMG2IMG, references, steps=2, strength=0.5),
        )
        for preprocessor in PREPROCESSORS:
            unit = ControlUnitInput(
                control_type[preprocessor],
                preprocessor_options={"preprocessor": preprocessor},
            )
            yield (
                f"controlnet {preprocessor}",
                lambda unit=unit: self.generate(
                    Method.CONTROLNET, references, control_units=[unit]
                ),
            )
        yield (
            "hybrid",
            lambda: self.generate(
                Method.HYBRID,
                references,
                control_units=[ControlUnitInput(ControlType.CANNY)],
                steps=2,
                strength=0.5,
            ),
        )
        for face_crop in (True, False):
            yield (
                f"ip_adapter face_crop={face_crop}",
                lambda face_crop=face_crop: self.generate(
                    Method.IP_ADAPTER,
                    references,
                    ip_adapter=IPAdapterInput(face_crop=face_crop),
                ),
            )
        yield "face detailer", lambda: self.detail(references)
        yield (
            "reference_edit flux (stitched)",
            lambda: self.generate(
                Method.REFERENCE_EDIT, references, model="tiny-flux", size=64
            ),
        )
        yield (
            "reference_edit qwen-image (native)",
            lambda: self.generate(
                Method.REFERENCE_EDIT,
                references,
                model="tiny-qwen-image",
                size=64,
                true_cfg_scale=1.0,
            ),
        )
        yield "face analysis of the reference", lambda: self.analyse(image)
        yield "identity score of an output", lambda: self.identity(image)
        yield "consistency score", lambda: self.consistency(image)

    def generate(
        self, method, references, *, model="tiny-sd15", size=64, steps=1, **extra
    ):
        from generation.engine.requests import GenerationRequest

        return self.engine.generate(
            GenerationRequest(
                model=model,
                prompt="a persona",
                method=method,
                steps=steps,
                width=size,
                height=size,
                references=references,
                **extra,
            )
        )

    def detail(self, references):
        from generation.engine.detailer import DetailerRequest, detail_faces
        from generation.engine.face import analyse_faces
        from generation.engine.requests import IPAdapterInput

        embedding = analyse_faces(self.portrait).embedding
        result = detail_faces(
            self.engine,
            DetailerRequest(
                model="tiny-sd15",
                image=self.portrait,
                steps=3,
                size=64,
                references=references,
                ip_adapter=IPAdapterInput(face_crop=True),
                reference_embeddings=[embedding],
            ),
        )
        assert result.passes, result.reason  # a face was redrawn

    def analyse(self, image):
        from generation.engine.face import analyse_faces

        analyse_faces(image)

    def identity(self, image):
        from generation.engine.face import analyse_faces, score_identity

        embedding = analyse_faces(self.portrait).embedding
        score_identity(image, [embedding])

    def consistency(self, image):
        from generation.engine.scoring import consistency_score

        consistency_score(image, self.portrait, **self.scorer)


def control(image: Image.Image, budget_bytes: int, paths: Paths) -> dict[str, str]:
    """What the cap does to unbounded work: both must fail."""
    import torch

    outcomes = {}
    try:
        bytearray(budget_bytes + 64 * 1024 * 1024)
    except MemoryError:
        outcomes["allocation past the budget"] = "MemoryError"
    else:
        outcomes["allocation past the budget"] = "ok"
    from generation.engine.requests import Method

    pipe, _ = paths.engine.registry.pipeline("tiny-sd15", Method.TEXT)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
    try:
        with torch.no_grad():
            batch = pixels.permute(2, 0, 1)[None].float() / 127.5 - 1
            pipe.vae.encode(batch)
    except ALLOCATION_ERRORS as error:
        outcomes["VAE encode at full size"] = type(error).__name__
    else:
        outcomes["VAE encode at full size"] = "ok"
    return outcomes


def main(root: str, work: str, budget_mb: str, *shapes: str) -> None:
    paths = Paths(Path(root), Path(work))
    warm = paths.run(reference(128, 96))
    assert set(warm.values()) == {"ok"}, warm
    budget = int(budget_mb) * 1024 * 1024
    limit = cap_address_space(budget)
    results = []
    for shape in shapes:
        width, height = (int(side) for side in shape.split("x"))
        image = reference(width, height)
        results.append({"shape": [width, height], "outcomes": paths.run(image)})
        del image
    # The control, last, under the same cap: the first shape unbounded.
    width, height = (int(side) for side in shapes[0].split("x"))
    print(
        json.dumps(
            {
                "budget_mb": int(budget_mb),
                "address_space_limit": limit,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                // 1024,
                "shapes": results,
                "control": {
                    "shape": [width, height],
                    "outcomes": control(reference(width, height), budget, paths),
                },
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])

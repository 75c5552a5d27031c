"""The face detailer: find the faces of an output and redraw each at the model's
native size (what ADetailer and Fooocus' "Improve Detail" do).

Each face the detector finds scoring at least ``PERSONA_FACE_MIN_SCORE`` (the
persona's face when none does: the mission patch on the astronaut's suit scores
low and is left alone) becomes a rectangular mask; that mask goes through the
engine's "only masked" inpaint (``Engine.inpaint``): the face's box plus
``padding`` pixels, squared, is resized to ``size`` (None: the family's native
size), inpainted with the face prompt at ``strength`` (with the persona's
IP-Adapter plus-face and LoRA where given, for that call only), resized back
and pasted through the mask feathered by ``mask_blur``. Faces are redrawn one
after the other, each on the image the one before left. Every pixel outside the
feathered masks is the input's.

Framework free: PIL images in and out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .face import (
    PERSONA_FACE_MIN_SCORE,
    FaceBox,
    detect_faces,
    persona_face_index,
    score_identity,
)
from .identity import IdentityScore
from .requests import (
    InpaintRequest,
    InpaintResult,
    IPAdapterInput,
    LoraInput,
    ReferenceInput,
)
from .runner import Engine
from .vocabulary import (
    DEFAULT_DETAILER_PADDING,
    DEFAULT_DETAILER_PROMPT,
    DEFAULT_DETAILER_STRENGTH,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_MASK_BLUR,
    DEFAULT_STEPS,
)

NO_FACE_REASON = "No face was found: the image is returned unchanged."


@dataclass
class DetailerRequest:
    """Redraw the faces of ``image`` (see the module docstring)."""

    model: str
    image: Image.Image
    prompt: str = DEFAULT_DETAILER_PROMPT
    negative_prompt: str = ""
    seed: int = 0
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    strength: float = DEFAULT_DETAILER_STRENGTH
    padding: int = DEFAULT_DETAILER_PADDING
    mask_blur: int = DEFAULT_MASK_BLUR
    size: int | None = None
    references: list[ReferenceInput] = field(default_factory=list)
    ip_adapter: IPAdapterInput | None = None
    lora: LoraInput | None = None
    scheduler: str | None = None
    reference_embeddings: Sequence[Sequence[float] | np.ndarray] = ()
    """The persona's face embeddings: when given, the identity of the image
    before and after the pass is scored against them."""


@dataclass
class DetailerResult:
    """The image after the pass, the image before, the faces redrawn (boxes in
    the image's pixels), one inpaint result per face, and why nothing was done
    when nothing was (``reason``; None when faces were redrawn)."""

    image: Image.Image
    before: Image.Image
    faces: list[FaceBox]
    passes: list[InpaintResult]
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    identity_before: IdentityScore | None = None
    identity_after: IdentityScore | None = None

    @property
    def snapshot(self) -> dict[str, Any]:
        """The pass's record: each face's box and its inpaint snapshot."""
        return {
            "kind": "detailer",
            "reason": self.reason,
            "identity_before": None
            if self.identity_before is None
            else self.identity_before.to_dict(),
            "identity_after": None
            if self.identity_after is None
            else self.identity_after.to_dict(),
            "faces": [
                {"box": face.as_list(), "score": face.score, "inpaint": run.snapshot}
                for face, run in zip(self.faces, self.passes, strict=True)
            ],
        }


def faces_to_detail(image: Image.Image) -> list[FaceBox]:
    """The faces the detailer redraws: every face scoring at least
    ``PERSONA_FACE_MIN_SCORE``, else the persona's face, else none."""
    faces = detect_faces(image)
    strong = [face for face in faces if face.score >= PERSONA_FACE_MIN_SCORE]
    if strong or not faces:
        return strong
    return [faces[persona_face_index(faces)]]


def face_mask(size: tuple[int, int], face: FaceBox) -> Image.Image:
    """The mask of one face: its detector box in white on black."""
    mask = Image.new("L", size, 0)
    right, bottom = face.left + face.width - 1, face.top + face.height - 1
    ImageDraw.Draw(mask).rectangle((face.left, face.top, right, bottom), fill=255)
    return mask


def detail_faces(
    engine: Engine,
    request: DetailerRequest,
    *,
    should_cancel: Callable[[], bool] | None = None,
) -> DetailerResult:
    """Run the face detailer pass of ``request`` with ``engine``;
    ``should_cancel`` is checked at every denoising step of every face."""
    before = request.image.convert("RGB")
    faces = faces_to_detail(before)
    identity_before = _identity(before, request)
    if not faces:
        return DetailerResult(
            before,
            before,
            [],
            [],
            reason=NO_FACE_REASON,
            identity_before=identity_before,
            identity_after=identity_before,
        )
    image = before
    passes: list[InpaintResult] = []
    notes: list[str] = []
    for face in faces:
        result = engine.inpaint(
            InpaintRequest(
                model=request.model,
                image=image,
                mask=face_mask(image.size, face),
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                seed=request.seed,
                steps=request.steps,
                guidance_scale=request.guidance_scale,
                strength=request.strength,
                mask_blur=request.mask_blur,
                only_masked=True,
                only_masked_padding=request.padding,
                size=request.size,
                references=request.references,
                ip_adapter=request.ip_adapter,
                lora=request.lora,
                scheduler=request.scheduler,
            ),
            should_cancel=should_cancel,
        )
        passes.append(result)
        notes.extend(note for note in result.notes if note not in notes)
        image = result.image
    return DetailerResult(
        image,
        before,
        faces,
        passes,
        notes=notes,
        identity_before=identity_before,
        identity_after=_identity(image, request),
    )


def _identity(image: Image.Image, request: DetailerRequest) -> IdentityScore | None:
    if not len(request.reference_embeddings):
        return None
    return score_identity(image, request.reference_embeddings)[1]

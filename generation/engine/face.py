"""Face analysis with dlib: detection, the persona's face, its 128-D embedding,
and the face crop for the IP-Adapter plus-face adapter.

Detection returns every face dlib finds, each with its box (image pixels) and
its detector score, largest first. The default detector is dlib's HOG frontal
face detector; its mmod CNN detector is an option for hard images (profiles,
dark or blurred faces), ten to fifty times slower on the CPU.

**The persona's face is the largest face**, for an image may hold more than
one: the HOG detector also finds a "face" in the mission patch on the
astronaut's suit in scikit-image's NASA portrait. Because HOG boxes come in
pyramid steps, the patch's box is sometimes as large as the real face's, or
larger (105 against 88 pixels after a JPEG recompression at upsample 0),
while its score stays low. So the rule is: the largest face scoring at least
``PERSONA_FACE_MIN_SCORE``, ties going to the higher score; only when no face
reaches that score (a tilted head can score 0.34, the patch beside it 0.17
in a larger box), the face of the highest score. The other faces are still
reported, so that reference health can say an image holds several.

**Bounded cost.** Whatever the input's size, landmarks and face chips are taken
from a copy whose longest side is at most ``WORKING_SIDE``, and the detector
scans a copy whose longest side, after dlib's own upsampling (each step
doubles the sides), is at most ``HOG_SCAN_SIDE`` (HOG) or ``CNN_SCAN_SIDE``
(CNN). By default (``upsample=None``) the image is upsampled as few times as
brings it to that side, at most ``MAX_UPSAMPLE``: a 512-pixel output is
upsampled once, a 160-pixel one twice, a 2000-pixel photo is shrunk to 1024
and not upsampled. So the smallest face found is a share of the image's
longest side: measured on the astronaut's face pasted small into a
1024-pixel image, HOG finds it down to about 6% (57 pixels), the CNN down to
about 12% (128 pixels). Boxes are mapped back to the input's pixels.

The embedding is dlib's face-recognition ResNet (99.38% on LFW) on the face
chip that ``dlib.get_face_chip`` aligns from the 5-point landmarks (150x150
pixels, padding 0.25: the layout the network was trained on). See
docs/identity.md for what the distances between embeddings mean.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .face_models import cnn_detector, dlib_version, face_models
from .identity import IdentityScore, ReferenceFaces, identity_score

# The longest side of the copy landmarks and face chips are taken from.
WORKING_SIDE = 1024
# The longest side the detectors scan, their upsampling included. The CNN's
# memory grows with the pixels: about 250 MB at 512, over 1 GB at 1024.
HOG_SCAN_SIDE = 1024
CNN_SCAN_SIDE = 512
MAX_UPSAMPLE = 2
# An image whose scanned copy is thinner than this is not given to dlib: its
# CNN detector crashes the process (a segmentation fault) on images under
# about 10 pixels wide.
MIN_SCAN_SHORT_SIDE = 16
# Nor one thinner than this once upsampled: no face that small is ever found
# (the smallest either detector found here was 57 pixels).
MIN_FACE_SIDE = 40
# dlib's own default: a detection scoring below it is not returned.
DEFAULT_THRESHOLD = 0.0
# The score the persona's face must reach to win over a weaker, larger one.
PERSONA_FACE_MIN_SCORE = 0.5
CHIP_SIZE = 150
CHIP_PADDING = 0.25


class FaceDetector(enum.StrEnum):
    HOG = "hog"
    CNN = "cnn"


DETECTOR_NAMES = {
    FaceDetector.HOG: "dlib HOG frontal face detector",
    FaceDetector.CNN: "dlib mmod CNN face detector",
}
_SCAN_SIDES = {FaceDetector.HOG: HOG_SCAN_SIDE, FaceDetector.CNN: CNN_SCAN_SIDE}


@dataclass(frozen=True)
class FaceBox:
    """One detected face: its box in the input's pixels and the detector's
    score (higher is surer; dlib returns nothing below the threshold)."""

    left: int
    top: int
    width: int
    height: int
    score: float

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_list(self) -> list[int]:
        """``[left, top, width, height]``."""
        return [self.left, self.top, self.width, self.height]


@dataclass(frozen=True)
class FaceAnalysis:
    """Every face in an image, which one is the persona's, and its embedding.

    ``faces`` are largest first; ``persona`` indexes the persona's face in it,
    None when no face was found (and then ``embedding`` is None too: there is
    nothing to score).
    """

    faces: tuple[FaceBox, ...]
    persona: int | None
    embedding: np.ndarray | None
    landmarks: tuple[tuple[int, int], ...] | None
    detector: FaceDetector
    upsample: int
    threshold: float
    image_size: tuple[int, int]
    scanned_size: tuple[int, int]

    @property
    def face_found(self) -> bool:
        return self.persona is not None

    @property
    def persona_face(self) -> FaceBox | None:
        return None if self.persona is None else self.faces[self.persona]

    @property
    def strong_faces(self) -> int:
        """How many faces score at least ``PERSONA_FACE_MIN_SCORE``."""
        return sum(face.score >= PERSONA_FACE_MIN_SCORE for face in self.faces)

    def as_reference(self, key: str, *, face_role: bool) -> ReferenceFaces:
        """What reference health needs of this analysis."""
        return ReferenceFaces(
            key=key,
            face_role=face_role,
            faces=len(self.faces),
            strong_faces=self.strong_faces,
            embedding=self.embedding,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (the embedding as 128 floats)."""
        return {
            "detector": self.detector.value,
            "detector_name": DETECTOR_NAMES[self.detector],
            "dlib": dlib_version(),
            "upsample": self.upsample,
            "threshold": self.threshold,
            "image_size": list(self.image_size),
            "scanned_size": list(self.scanned_size),
            "faces": [
                {"box": face.as_list(), "score": face.score} for face in self.faces
            ],
            "persona": self.persona,
            "embedding": None
            if self.embedding is None
            else [float(value) for value in self.embedding],
            "landmarks": None
            if self.landmarks is None
            else [list(point) for point in self.landmarks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaceAnalysis:
        """The inverse of ``to_dict``."""
        return cls(
            faces=tuple(
                FaceBox(*face["box"], score=float(face["score"]))
                for face in data["faces"]
            ),
            persona=data["persona"],
            embedding=None
            if data["embedding"] is None
            else np.asarray(data["embedding"], dtype=np.float64),
            landmarks=None
            if data["landmarks"] is None
            else tuple((int(x), int(y)) for x, y in data["landmarks"]),
            detector=FaceDetector(data["detector"]),
            upsample=int(data["upsample"]),
            threshold=float(data["threshold"]),
            image_size=tuple(data["image_size"]),
            scanned_size=tuple(data["scanned_size"]),
        )


def persona_face_index(faces: Sequence[FaceBox]) -> int | None:
    """The persona's face among ``faces``: the largest one scoring at least
    ``PERSONA_FACE_MIN_SCORE`` (ties to the higher score); when none does,
    the one of the highest score."""
    if not faces:
        return None
    strong = [
        index
        for index, face in enumerate(faces)
        if face.score >= PERSONA_FACE_MIN_SCORE
    ]
    if strong:
        return max(strong, key=lambda index: (faces[index].area, faces[index].score))
    return max(range(len(faces)), key=lambda index: faces[index].score)


def detect_faces(
    image: Image.Image,
    *,
    detector: FaceDetector | str = FaceDetector.HOG,
    upsample: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[FaceBox]:
    """Every face in ``image`` with its box (input pixels) and score, largest
    first (ties to the higher score)."""
    detector = _checked(detector, upsample, threshold)
    rgb = image.convert("RGB")
    working = _shrunk(rgb, WORKING_SIDE)
    return _detect(rgb.size, working, detector, upsample, threshold)[0]


def analyse_faces(
    image: Image.Image,
    *,
    detector: FaceDetector | str = FaceDetector.HOG,
    upsample: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> FaceAnalysis:
    """Detect every face, choose the persona's and embed it."""
    detector = _checked(detector, upsample, threshold)
    rgb = image.convert("RGB")
    working = _shrunk(rgb, WORKING_SIDE)
    faces, scanned_size, upsample = _detect(
        rgb.size, working, detector, upsample, threshold
    )
    persona = persona_face_index(faces)
    embedding = landmarks = None
    if persona is not None:
        embedding, landmarks = _embed(rgb.size, working, faces[persona])
    return FaceAnalysis(
        faces=tuple(faces),
        persona=persona,
        embedding=embedding,
        landmarks=landmarks,
        detector=detector,
        upsample=upsample,
        threshold=float(threshold),
        image_size=rgb.size,
        scanned_size=scanned_size,
    )


def score_identity(
    image: Image.Image,
    reference_embeddings: Sequence[Sequence[float] | np.ndarray],
    *,
    detector: FaceDetector | str = FaceDetector.HOG,
) -> tuple[FaceAnalysis, IdentityScore]:
    """Analyse an output and score its persona face against the persona's face
    references' embeddings (``identity.identity_score``)."""
    analysis = analyse_faces(image, detector=detector)
    return analysis, identity_score(analysis.embedding, reference_embeddings)


def embed_face(
    image: Image.Image, face: FaceBox
) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """The 128-D embedding and the 5 landmarks (input pixels) of ``face``, a
    box found in ``image`` by ``detect_faces``."""
    rgb = image.convert("RGB")
    return _embed(rgb.size, _shrunk(rgb, WORKING_SIDE), face)


def crop_face(image: Image.Image, *, margin: float = 0.4) -> tuple[Image.Image, dict]:
    """Crop ``image`` to a square around the persona's face.

    ``margin`` is the share of the face's side added on every side of it. The
    square is moved (not shrunk) to stay inside the image where it can, and
    shrunk to the image's shorter side where it cannot. Returns the crop (RGB)
    and an info dict for the snapshot: ``face_found``, ``box`` (the face,
    left/top/width/height), ``score``, ``crop_box`` (left/top/right/bottom),
    ``faces`` (how many were found), ``detector``, ``upsample`` and
    ``fallback_reason``. Without a face: the whole image, ``face_found`` False
    and the reason.
    """
    if margin < 0:
        raise ValueError(f"margin must not be negative, got {margin}")
    rgb = image.convert("RGB")
    faces, _, upsample = _detect(
        rgb.size, _shrunk(rgb, WORKING_SIDE), FaceDetector.HOG, None, DEFAULT_THRESHOLD
    )
    persona = persona_face_index(faces)
    info: dict[str, Any] = {
        "face_found": persona is not None,
        "faces": len(faces),
        "detector": DETECTOR_NAMES[FaceDetector.HOG],
        "dlib": dlib_version(),
        "upsample": upsample,
        "margin": margin,
        "box": None,
        "score": None,
        "crop_box": [0, 0, rgb.width, rgb.height],
        "fallback_reason": None,
    }
    if persona is None:
        info["fallback_reason"] = (
            f"no face found by the {DETECTOR_NAMES[FaceDetector.HOG]}: "
            "the whole image was used"
        )
        return rgb, info
    face = faces[persona]
    side = min(
        round(max(face.width, face.height) * (1 + 2 * margin)), rgb.width, rgb.height
    )
    crop_left = _clamp(face.left + face.width // 2 - side // 2, rgb.width - side)
    crop_top = _clamp(face.top + face.height // 2 - side // 2, rgb.height - side)
    crop_box = (crop_left, crop_top, crop_left + side, crop_top + side)
    info["box"] = face.as_list()
    info["score"] = face.score
    info["crop_box"] = list(crop_box)
    return rgb.crop(crop_box), info


def _checked(
    detector: FaceDetector | str, upsample: int | None, threshold: float
) -> FaceDetector:
    try:
        detector = FaceDetector(detector)
    except ValueError:
        choices = ", ".join(member.value for member in FaceDetector)
        raise ValueError(
            f"Unknown face detector {detector!r}: choose one of {choices}"
        ) from None
    if isinstance(threshold, bool) or not (
        isinstance(threshold, int | float) and math.isfinite(threshold)
    ):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if upsample is None:
        return detector
    if isinstance(upsample, bool) or not isinstance(upsample, int):
        raise ValueError(f"upsample must be a whole number, got {upsample!r}")
    if not 0 <= upsample <= MAX_UPSAMPLE:
        raise ValueError(f"upsample must be 0 to {MAX_UPSAMPLE}, got {upsample}")
    return detector


def _shrunk(image: Image.Image, longest: int) -> Image.Image:
    """``image`` itself, or a copy whose longest side is ``longest``."""
    if max(image.size) <= longest:
        return image
    scale = longest / max(image.size)
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )


def _detect(
    image_size: tuple[int, int],
    working: Image.Image,
    detector: FaceDetector,
    upsample: int | None,
    threshold: float,
) -> tuple[list[FaceBox], tuple[int, int], int]:
    """Faces in input pixels, largest first, the scanned copy's size and the
    upsampling used."""
    scan_side = _SCAN_SIDES[detector]
    if upsample is None:
        upsample = _default_upsample(max(working.size), scan_side)
    scanned = _shrunk(working, scan_side >> upsample)
    shortest = min(scanned.size)
    if shortest < MIN_SCAN_SHORT_SIDE or shortest << upsample < MIN_FACE_SIDE:
        return [], scanned.size, upsample
    pixels = np.ascontiguousarray(np.asarray(scanned, dtype=np.uint8))
    if detector is FaceDetector.HOG:
        rects, scores, _ = face_models().hog_detector.call(
            lambda model, *args: model.run(*args), pixels, upsample, threshold
        )
        found = list(zip(rects, scores, strict=True))
    else:
        detections = cnn_detector().call(
            lambda model, *args: model(*args), pixels, upsample
        )
        found = [
            (detection.rect, detection.confidence)
            for detection in detections
            if detection.confidence >= threshold
        ]
    x_scale = image_size[0] / scanned.width
    y_scale = image_size[1] / scanned.height
    faces = []
    for rect, score in found:
        # dlib's right and bottom are inclusive, and a box may reach past the
        # image's edge: map it to input pixels and keep the part inside.
        left = max(0, round(rect.left() * x_scale))
        top = max(0, round(rect.top() * y_scale))
        right = min(image_size[0], round((rect.right() + 1) * x_scale))
        bottom = min(image_size[1], round((rect.bottom() + 1) * y_scale))
        if right > left and bottom > top:
            faces.append(
                FaceBox(left, top, right - left, bottom - top, score=float(score))
            )
    faces.sort(key=lambda face: (face.area, face.score), reverse=True)
    return faces, scanned.size, upsample


def _default_upsample(longest: int, scan_side: int) -> int:
    """The fewest doublings that bring ``longest`` to ``scan_side``, at most
    ``MAX_UPSAMPLE``."""
    upsample = 0
    while upsample < MAX_UPSAMPLE and longest << upsample < scan_side:
        upsample += 1
    return upsample


def _embed(
    image_size: tuple[int, int], working: Image.Image, face: FaceBox
) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """The face's 128-D embedding and its 5 landmarks (input pixels)."""
    import dlib

    models = face_models()
    x_scale = working.width / image_size[0]
    y_scale = working.height / image_size[1]
    rect = dlib.rectangle(
        round(face.left * x_scale),
        round(face.top * y_scale),
        round((face.left + face.width) * x_scale) - 1,
        round((face.top + face.height) * y_scale) - 1,
    )
    pixels = np.ascontiguousarray(np.asarray(working, dtype=np.uint8))
    shape = models.shape_predictor.call(lambda model, *args: model(*args), pixels, rect)
    chip = dlib.get_face_chip(pixels, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
    descriptor = models.recognizer.call(
        lambda model, *args: model.compute_face_descriptor(*args), chip
    )
    landmarks = tuple(
        (round(point.x / x_scale), round(point.y / y_scale)) for point in shape.parts()
    )
    return np.asarray(descriptor, dtype=np.float64), landmarks


def _clamp(start: int, highest: int) -> int:
    return max(0, min(start, highest))

"""Identity math over dlib's 128-D face embeddings: pure functions, no model.

- A persona's **identity** is the mean embedding of its face references.
- An output's **identity score** is the distance of its persona face (see
  ``face.persona_face_index``) to that mean, and to the nearest face
  reference, mapped to a 0..1 **similarity** (``similarity_from_distance``),
  with dlib's **same-person verdict** at distance ``SAME_PERSON_DISTANCE``.
  An output without a face has no score: the result says "no face found".
- **Reference health** flags face-role references with no face or several,
  and a reference whose face is far from the persona's other faces (likely
  another person), with the distances.
- **Best K of N** keeps the K outputs of highest identity.
- **Auto by identity**: with enough scored outputs per method, prefer the
  method whose outputs kept the persona's identity best.

docs/identity.md documents the numbers.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .requests import Method

# dlib's documented decision threshold for its face-recognition model: two
# faces closer than this are the same person (99.38% on LFW).
SAME_PERSON_DISTANCE = 0.6
# The distance at which the similarity reaches 0: twice the threshold, so the
# threshold maps to 0.5.
ZERO_SIMILARITY_DISTANCE = 2 * SAME_PERSON_DISTANCE
# Scored outputs each of at least two methods needs before auto trusts the
# persona's record over the rules.
AUTO_MIN_SCORED_OUTPUTS = 20
# dlib's face-recognition ResNet embeds a face as 128 numbers.
EMBEDDING_SIZE = 128

Embedding = np.ndarray | Sequence[float]


class IdentityStatus(enum.StrEnum):
    SCORED = "scored"
    NO_FACE = "no_face"
    NO_IDENTITY = "no_identity"


IDENTITY_STATUS_MESSAGES = {
    IdentityStatus.SCORED: "scored",
    IdentityStatus.NO_FACE: "no face found",
    IdentityStatus.NO_IDENTITY: "the persona has no face reference with a face",
}


def similarity_from_distance(distance: float) -> float:
    """Map an embedding distance to a 0..1 similarity.

    Linear and decreasing: 1 at distance 0, 0.5 at ``SAME_PERSON_DISTANCE``
    (0.6), 0 at ``ZERO_SIMILARITY_DISTANCE`` (1.2) and beyond. So a similarity
    above 0.5 is dlib's "same person".
    """
    if not math.isfinite(distance) or distance < 0:
        raise ValueError(f"a distance is a finite number >= 0, got {distance}")
    return max(0.0, 1.0 - distance / ZERO_SIMILARITY_DISTANCE)


def is_same_person(distance: float) -> bool:
    """dlib's verdict: the same person below distance 0.6."""
    return distance < SAME_PERSON_DISTANCE


def embedding_distance(first: Embedding, second: Embedding) -> float:
    """The Euclidean distance of two embeddings (dlib's metric)."""
    return float(np.linalg.norm(_vector(first) - _vector(second)))


def persona_identity(embeddings: Sequence[Embedding]) -> np.ndarray:
    """The persona's identity: the mean of its face references' embeddings."""
    if not embeddings:
        raise ValueError("a persona identity needs at least one face embedding")
    return np.mean([_vector(embedding) for embedding in embeddings], axis=0)


@dataclass(frozen=True)
class IdentityScore:
    """How close an output's face is to the persona.

    With ``status`` other than ``scored`` every number is None: there is no
    face, or no identity, to measure, and nothing is made up.
    """

    status: IdentityStatus
    distance: float | None = None
    similarity: float | None = None
    same_person: bool | None = None
    nearest_reference: int | None = None
    nearest_distance: float | None = None

    @property
    def scored(self) -> bool:
        return self.status is IdentityStatus.SCORED

    @property
    def message(self) -> str:
        if not self.scored:
            return IDENTITY_STATUS_MESSAGES[self.status]
        verdict = "same person" if self.same_person else "not the same person"
        return (
            f"identity {self.similarity:.2f} (distance {self.distance:.3f}), {verdict}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "status": self.status.value,
            "distance": self.distance,
            "similarity": self.similarity,
            "same_person": self.same_person,
            "nearest_reference": self.nearest_reference,
            "nearest_distance": self.nearest_distance,
            "same_person_distance": SAME_PERSON_DISTANCE,
        }


def identity_score(
    output_embedding: Embedding | None,
    reference_embeddings: Sequence[Embedding],
) -> IdentityScore:
    """Score an output's persona face against the persona's face references.

    ``output_embedding`` is None when no face was found in the output;
    ``reference_embeddings`` are the embeddings of the persona's face
    references that have a face (the nearest one is named by its index here).
    The distance, similarity and verdict are to the persona's identity (their
    mean); the nearest reference's distance is given beside them.
    """
    if output_embedding is None:
        return IdentityScore(IdentityStatus.NO_FACE)
    if not reference_embeddings:
        return IdentityScore(IdentityStatus.NO_IDENTITY)
    output = _vector(output_embedding)
    distance = embedding_distance(output, persona_identity(reference_embeddings))
    distances = [embedding_distance(output, ref) for ref in reference_embeddings]
    nearest = int(np.argmin(distances))
    return IdentityScore(
        IdentityStatus.SCORED,
        distance=distance,
        similarity=similarity_from_distance(distance),
        same_person=is_same_person(distance),
        nearest_reference=nearest,
        nearest_distance=distances[nearest],
    )


def below_threshold(score: IdentityScore, threshold: float) -> bool:
    """Whether an output needs review: its similarity is under ``threshold``
    (0..1), or it has no face to score."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"an identity threshold is 0..1, got {threshold}")
    return not score.scored or score.similarity < threshold


# Reference health


class HealthCode(enum.StrEnum):
    NO_FACE = "no_face"
    SEVERAL_FACES = "several_faces"
    ANOTHER_PERSON = "another_person"


@dataclass(frozen=True)
class ReferenceFaces:
    """What face analysis found in one reference.

    ``faces`` counts every face found; ``strong_faces`` those scoring at least
    the persona-face score (``FaceAnalysis.strong_faces``), which the
    several-faces warning counts, so that a weak detection in a pattern is
    not a warning. ``embedding`` is the persona face's, None without a face.
    """

    key: str
    face_role: bool
    faces: int
    strong_faces: int
    embedding: Embedding | None


@dataclass(frozen=True)
class HealthWarning:
    code: HealthCode
    message: str


@dataclass(frozen=True)
class ReferenceReport:
    """One reference's health: its distances (None where there is nothing to
    compare with) and warnings.

    ``distance_to_others`` is to the mean of the *other* face references' faces,
    so that the reference being judged does not pull the mean towards itself.
    """

    key: str
    face_role: bool
    faces: int
    distance_to_others: float | None
    nearest_other: str | None
    nearest_distance: float | None
    warnings: tuple[HealthWarning, ...] = field(default_factory=tuple)

    @property
    def healthy(self) -> bool:
        return not self.warnings


def reference_health(references: Sequence[ReferenceFaces]) -> list[ReferenceReport]:
    """The health of each reference, in the order given.

    A face-role reference is warned about when it has no face, when it has
    several strong faces (the persona's is taken to be the largest), and when
    its face is at ``SAME_PERSON_DISTANCE`` or more from the mean of the other
    face-role references' faces: likely another person. Another-person is
    judged for references of any role that have a face, against the face-role
    references other than themselves, and needs at least one of those.
    """
    keys = [reference.key for reference in references]
    if len(set(keys)) != len(keys):
        raise ValueError("each reference needs its own key")
    face_embeddings = {
        reference.key: _vector(reference.embedding)
        for reference in references
        if reference.face_role and reference.embedding is not None
    }
    return [_report(reference, face_embeddings) for reference in references]


def _report(
    reference: ReferenceFaces, face_embeddings: Mapping[str, np.ndarray]
) -> ReferenceReport:
    warnings = []
    if reference.face_role and reference.embedding is None:
        warnings.append(
            HealthWarning(
                HealthCode.NO_FACE,
                "No face was found in this face reference: it adds nothing to "
                "the persona's identity.",
            )
        )
    if reference.face_role and reference.strong_faces > 1:
        warnings.append(
            HealthWarning(
                HealthCode.SEVERAL_FACES,
                f"{reference.strong_faces} faces were found in this face "
                "reference: the largest is taken as the persona's.",
            )
        )
    others = {
        key: embedding
        for key, embedding in face_embeddings.items()
        if key != reference.key
    }
    if reference.embedding is None or not others:
        return ReferenceReport(
            reference.key,
            reference.face_role,
            reference.faces,
            None,
            None,
            None,
            tuple(warnings),
        )
    own = _vector(reference.embedding)
    distance = embedding_distance(own, persona_identity(list(others.values())))
    nearest_other, nearest_distance = min(
        (
            (key, embedding_distance(own, embedding))
            for key, embedding in others.items()
        ),
        key=lambda pair: (pair[1], pair[0]),
    )
    if not is_same_person(distance):
        warnings.append(
            HealthWarning(
                HealthCode.ANOTHER_PERSON,
                f"This face is at distance {distance:.2f} from the persona's "
                f"other face references (the same person is under "
                f"{SAME_PERSON_DISTANCE}; the nearest, {nearest_other}, is at "
                f"{nearest_distance:.2f}): likely another person.",
            )
        )
    return ReferenceReport(
        reference.key,
        reference.face_role,
        reference.faces,
        distance,
        nearest_other,
        nearest_distance,
        tuple(warnings),
    )


# Best K of N


@dataclass(frozen=True)
class BestOfSelection:
    """Which outputs to keep: ``kept`` best first, ``marked`` (the rest, kept
    too but marked) in their original order."""

    kept: tuple[int, ...]
    marked: tuple[int, ...]


def best_by_identity(
    similarities: Sequence[float | None], keep: int
) -> BestOfSelection:
    """Keep the ``keep`` outputs of highest identity similarity.

    ``similarities[i]`` is output i's similarity, None when it has no face;
    outputs without a face rank below every scored one, and ties keep the
    earlier output.
    """
    count = len(similarities)
    if count == 0:
        raise ValueError("best of N needs at least one output")
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= count:
        raise ValueError(f"keep must be 1 to {count} (the outputs made), got {keep}")
    for value in similarities:
        if value is not None:
            _check_similarity(value)
    ranked = sorted(
        range(count),
        key=lambda index: (
            similarities[index] is None,
            -(similarities[index] or 0.0),
            index,
        ),
    )
    kept = tuple(ranked[:keep])
    return BestOfSelection(
        kept=kept, marked=tuple(index for index in range(count) if index not in kept)
    )


# Auto by identity


@dataclass(frozen=True)
class MethodRecord:
    method: str
    mean_similarity: float
    outputs: int


@dataclass(frozen=True)
class IdentityChoice:
    """The method auto should prefer, or None when the rules apply; ``reason``
    says why either way."""

    method: str | None
    reason: str
    records: tuple[MethodRecord, ...]


def choose_method_by_identity(
    similarities_by_method: Mapping[str, Sequence[float]],
    *,
    minimum: int = AUTO_MIN_SCORED_OUTPUTS,
) -> IdentityChoice:
    """Prefer the method whose outputs kept the persona's identity best.

    ``similarities_by_method`` maps a method (a ``Method`` value, not auto) to
    the identity similarities of the persona's scored outputs made with it
    (outputs without a face carry no score and are not counted). The record
    is trusted when at least two methods have ``minimum`` scored outputs each
    (one method alone has nothing to be compared with): then the one of
    highest mean similarity wins (ties to more outputs, then by name).
    Otherwise ``method`` is None and the reason says the rules apply and why.
    """
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ValueError(f"minimum must be a whole number >= 1, got {minimum!r}")
    records = []
    for method, values in similarities_by_method.items():
        _check_method(method)
        for value in values:
            _check_similarity(value)
        if values:
            records.append(
                MethodRecord(method, float(np.mean(list(values))), len(values))
            )
    records.sort(key=lambda record: record.method)
    trusted = sorted(
        (record for record in records if record.outputs >= minimum),
        key=lambda record: (-record.mean_similarity, -record.outputs, record.method),
    )
    if len(trusted) < 2:
        return IdentityChoice(None, _rules_reason(records, minimum), tuple(records))
    best, *others = trusted
    # The reason reads "ip_adapter kept identity best: 0.81 over 24 outputs,
    # img2img 0.62 over 30".
    outputs = "output" if best.outputs == 1 else "outputs"
    reason = (
        f"{best.method} kept identity best: {best.mean_similarity:.2f} over "
        f"{best.outputs} {outputs}, "
        + ", ".join(
            f"{record.method} {record.mean_similarity:.2f} over {record.outputs}"
            for record in others
        )
    )
    return IdentityChoice(best.method, reason, tuple(records))


def _rules_reason(records: list[MethodRecord], minimum: int) -> str:
    need = f"identity decides once two methods have {minimum} scored outputs each"
    if not records:
        return f"the rules apply: no scored outputs yet ({need})"
    counts = ", ".join(f"{record.method} {record.outputs}" for record in records)
    return f"the rules apply: scored outputs {counts} ({need})"


def _check_method(method: str) -> None:
    try:
        value = Method(method)
    except ValueError:
        choices = ", ".join(m.value for m in Method if m is not Method.AUTO)
        raise ValueError(
            f"Unknown method {method!r}: choose one of {choices}"
        ) from None
    if value is Method.AUTO:
        raise ValueError("auto is a choice, not a method an output was made with")


def _check_similarity(value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Real) and 0.0 <= value <= 1.0
    ):
        raise ValueError(f"an identity similarity is a number 0..1, got {value!r}")


def _vector(embedding: Embedding) -> np.ndarray:
    vector = np.asarray(embedding, dtype=np.float64)
    if vector.shape != (EMBEDDING_SIZE,) or not np.all(np.isfinite(vector)):
        raise ValueError(
            f"a face embedding is {EMBEDDING_SIZE} finite numbers, "
            f"got shape {vector.shape}"
        )
    return vector

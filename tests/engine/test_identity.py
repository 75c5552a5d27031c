"""The identity rules on given values: the similarity mapping, the verdict, the
score, reference health, best of N and auto by identity. (The same rules on
real photos are in test_face.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from generation.engine.identity import (
    AUTO_MIN_SCORED_OUTPUTS,
    SAME_PERSON_DISTANCE,
    ZERO_SIMILARITY_DISTANCE,
    HealthCode,
    IdentityScore,
    IdentityStatus,
    ReferenceFaces,
    below_threshold,
    best_by_identity,
    choose_method_by_identity,
    embedding_distance,
    identity_score,
    is_same_person,
    persona_identity,
    reference_health,
    similarity_from_distance,
)


def point(*coordinates: float) -> np.ndarray:
    """A 128-D embedding with the given leading coordinates, zeros after."""
    vector = np.zeros(128)
    vector[: len(coordinates)] = coordinates
    return vector


# The similarity mapping and the verdict


def test_similarity_is_one_at_zero_half_at_the_threshold_and_zero_at_twice_it():
    assert similarity_from_distance(0.0) == 1.0
    assert similarity_from_distance(SAME_PERSON_DISTANCE) == pytest.approx(0.5)
    assert similarity_from_distance(ZERO_SIMILARITY_DISTANCE) == 0.0
    assert similarity_from_distance(5.0) == 0.0
    assert SAME_PERSON_DISTANCE == 0.6


def test_similarity_falls_strictly_as_the_distance_grows():
    distances = np.linspace(0.0, ZERO_SIMILARITY_DISTANCE, 121)
    similarities = [similarity_from_distance(float(d)) for d in distances]
    assert all(a > b for a, b in zip(similarities, similarities[1:], strict=False))
    assert all(0.0 <= value <= 1.0 for value in similarities)


@pytest.mark.parametrize("distance", [-0.1, math.nan, math.inf])
def test_a_distance_that_is_not_one_is_refused(distance):
    with pytest.raises(ValueError, match="distance"):
        similarity_from_distance(distance)


def test_the_same_person_is_below_the_threshold_distance():
    assert is_same_person(0.599)
    assert not is_same_person(SAME_PERSON_DISTANCE)
    assert not is_same_person(0.9)
    # The verdict and the similarity agree: same person means above 0.5.
    for distance in (0.3, 0.59, 0.61, 1.0):
        assert is_same_person(distance) == (similarity_from_distance(distance) > 0.5)


# The score


def test_the_identity_is_the_mean_of_the_face_references():
    identity = persona_identity([point(1.0, 0.0), point(0.0, 1.0), point(0.5, 0.5)])
    assert np.allclose(identity, point(0.5, 0.5))


def test_an_output_is_scored_against_the_mean_with_the_nearest_reference():
    references = [point(0.0), point(0.8)]
    score = identity_score(point(0.3), references)
    assert score.status is IdentityStatus.SCORED
    assert score.distance == pytest.approx(0.1)
    assert score.similarity == pytest.approx(1 - 0.1 / 1.2)
    assert score.same_person is True
    assert score.nearest_reference == 0
    assert score.nearest_distance == pytest.approx(0.3)
    assert score.message == "identity 0.92 (distance 0.100), same person"


def test_a_far_output_is_not_the_same_person():
    score = identity_score(point(0.0, 0.9), [point(0.0)])
    assert score.same_person is False
    assert score.similarity == pytest.approx(0.25)
    assert "not the same person" in score.message


def test_no_face_and_no_identity_are_said_as_such_with_no_numbers():
    no_face = identity_score(None, [point(0.0)])
    no_identity = identity_score(point(0.0), [])
    assert no_face.status is IdentityStatus.NO_FACE
    assert no_face.message == "no face found"
    assert no_identity.status is IdentityStatus.NO_IDENTITY
    for score in (no_face, no_identity):
        assert not score.scored
        stored = score.to_dict()
        for name in ("distance", "similarity", "same_person", "nearest_reference"):
            assert stored[name] is None


@pytest.mark.parametrize(
    "embedding", [np.zeros(127), np.full(128, np.nan), [[0.0] * 128]]
)
def test_an_embedding_that_is_not_one_is_refused(embedding):
    with pytest.raises(ValueError, match="128 finite numbers"):
        embedding_distance(embedding, point(0.0))


def test_persona_identity_needs_a_face():
    with pytest.raises(ValueError, match="at least one"):
        persona_identity([])


def test_an_output_below_the_persona_threshold_or_without_a_face_needs_review():
    good = identity_score(point(0.1), [point(0.0)])
    poor = identity_score(point(0.9), [point(0.0)])
    assert not below_threshold(good, 0.5)
    assert below_threshold(poor, 0.5)
    assert below_threshold(IdentityScore(IdentityStatus.NO_FACE), 0.5)
    with pytest.raises(ValueError, match="0..1"):
        below_threshold(good, 1.5)


# Reference health


def face_reference(key: str, embedding, *, face_role=True, faces=1, strong=None):
    return ReferenceFaces(
        key=key,
        face_role=face_role,
        faces=faces if embedding is not None else 0,
        strong_faces=(faces if strong is None else strong)
        if embedding is not None
        else 0,
        embedding=embedding,
    )


def test_the_reference_of_another_person_is_flagged_with_its_distances():
    reports = reference_health(
        [
            face_reference("a1", point(0.0, 0.0)),
            face_reference("a2", point(0.1, 0.0)),
            face_reference("a3", point(0.0, 0.1)),
            face_reference("b", point(0.9, 0.9)),
        ]
    )
    by_key = {report.key: report for report in reports}
    assert [report.key for report in reports] == ["a1", "a2", "a3", "b"]
    odd = by_key["b"]
    assert [warning.code for warning in odd.warnings] == [HealthCode.ANOTHER_PERSON]
    expected = float(np.hypot(0.9 - 0.1 / 3, 0.9 - 0.1 / 3))
    assert odd.distance_to_others == pytest.approx(expected)
    assert odd.nearest_other in ("a2", "a3")
    assert odd.nearest_distance == pytest.approx(np.hypot(0.8, 0.9))
    assert "likely another person" in odd.warnings[0].message
    for key in ("a1", "a2", "a3"):
        assert by_key[key].healthy
        assert by_key[key].distance_to_others < SAME_PERSON_DISTANCE


def test_a_single_face_reference_has_nothing_to_be_compared_with():
    (report,) = reference_health([face_reference("only", point(0.0))])
    assert report.healthy
    assert report.distance_to_others is None and report.nearest_other is None


def test_face_references_without_a_face_or_with_several_are_warned_of():
    reports = reference_health(
        [
            face_reference("blank", None),
            face_reference("group", point(0.0), faces=3, strong=2),
            face_reference("patterned", point(0.05), faces=2, strong=1),
            face_reference("pose", None, face_role=False),
        ]
    )
    by_key = {report.key: report for report in reports}
    assert [w.code for w in by_key["blank"].warnings] == [HealthCode.NO_FACE]
    assert [w.code for w in by_key["group"].warnings] == [HealthCode.SEVERAL_FACES]
    assert "2 faces" in by_key["group"].warnings[0].message
    # A weak second detection (a pattern) is not a second face.
    assert by_key["patterned"].healthy
    assert by_key["pose"].healthy


def test_a_reference_of_another_role_is_judged_against_the_face_references():
    reports = reference_health(
        [
            face_reference("face", point(0.0)),
            face_reference("style", point(0.0, 1.0), face_role=False),
        ]
    )
    face, style = reports
    # The face reference is not compared with the style reference's face.
    assert face.healthy and face.distance_to_others is None
    assert [w.code for w in style.warnings] == [HealthCode.ANOTHER_PERSON]


def test_reference_keys_must_be_unique():
    with pytest.raises(ValueError, match="own key"):
        reference_health([face_reference("a", point(0.0))] * 2)


# Best K of N


def test_best_of_n_keeps_the_highest_identity_and_marks_the_rest():
    selection = best_by_identity([0.42, 0.81, None, 0.77, 0.81, 0.10], 3)
    # Ties keep the earlier output; no face ranks last.
    assert selection.kept == (1, 4, 3)
    assert selection.marked == (0, 2, 5)


def test_best_of_n_ranks_outputs_without_a_face_last():
    assert best_by_identity([None, 0.0, None], 2).kept == (1, 0)
    assert best_by_identity([None, None], 1).kept == (0,)


@pytest.mark.parametrize("keep", [0, 4, True, 1.0])
def test_best_of_n_needs_a_keep_between_one_and_n(keep):
    with pytest.raises(ValueError, match="keep must be 1 to 3"):
        best_by_identity([0.5, 0.6, 0.7], keep)


def test_best_of_n_refuses_a_similarity_out_of_range():
    with pytest.raises(ValueError, match="0..1"):
        best_by_identity([0.5, 1.2], 1)
    with pytest.raises(ValueError, match="at least one"):
        best_by_identity([], 1)


# Auto by identity


def values(mean: float, count: int, spread: float = 0.05) -> list[float]:
    """``count`` similarities averaging exactly ``mean``."""
    offsets = [spread if index % 2 else -spread for index in range(count)]
    if count % 2:
        offsets[-1] = 0.0
    return [mean + offset for offset in offsets]


def test_auto_prefers_the_method_that_kept_identity_best():
    choice = choose_method_by_identity(
        {
            "img2img": values(0.62, 30),
            "ip_adapter": values(0.81, 24),
            "controlnet": values(0.70, 3),
        }
    )
    assert choice.method == "ip_adapter"
    assert choice.reason == (
        "ip_adapter kept identity best: 0.81 over 24 outputs, img2img 0.62 over 30"
    )
    assert {record.method: record.outputs for record in choice.records} == {
        "controlnet": 3,
        "img2img": 30,
        "ip_adapter": 24,
    }


def test_auto_lists_every_trusted_method_best_first():
    choice = choose_method_by_identity(
        {
            "text": values(0.30, 20),
            "img2img": values(0.55, 20),
            "hybrid": values(0.6, 21),
        }
    )
    assert choice.method == "hybrid"
    assert choice.reason == (
        "hybrid kept identity best: 0.60 over 21 outputs, "
        "img2img 0.55 over 20, text 0.30 over 20"
    )


def test_a_tie_goes_to_the_method_with_more_outputs_then_by_name():
    more = choose_method_by_identity({"img2img": [0.7] * 20, "hybrid": [0.7] * 25})
    assert more.method == "hybrid"
    same = choose_method_by_identity({"img2img": [0.7] * 20, "hybrid": [0.7] * 20})
    assert same.method == "hybrid"


def test_the_rules_apply_until_two_methods_have_enough_scored_outputs():
    minimum = AUTO_MIN_SCORED_OUTPUTS
    one = choose_method_by_identity(
        {"ip_adapter": values(0.9, minimum), "img2img": values(0.5, minimum - 1)}
    )
    assert one.method is None
    assert one.reason == (
        f"the rules apply: scored outputs img2img {minimum - 1}, ip_adapter "
        f"{minimum} (identity decides once two methods have {minimum} scored "
        "outputs each)"
    )
    none = choose_method_by_identity({"img2img": []})
    assert none.method is None
    assert none.reason.startswith("the rules apply: no scored outputs yet")


def test_the_minimum_is_a_parameter():
    choice = choose_method_by_identity(
        {"img2img": [0.4, 0.5], "ip_adapter": [0.9]}, minimum=1
    )
    assert choice.method == "ip_adapter"
    assert choice.reason == (
        "ip_adapter kept identity best: 0.90 over 1 output, img2img 0.45 over 2"
    )
    with pytest.raises(ValueError, match="minimum"):
        choose_method_by_identity({}, minimum=0)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ({"dreambooth": [0.5]}, "Unknown method 'dreambooth'"),
        ({"auto": [0.5]}, "auto is a choice"),
        ({"img2img": [1.5]}, "0..1"),
        ({"img2img": [None]}, "0..1"),
    ],
)
def test_auto_refuses_records_that_are_not_identity_values(records, message):
    with pytest.raises(ValueError, match=message):
        choose_method_by_identity(records)

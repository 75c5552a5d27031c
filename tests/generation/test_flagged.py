"""A flagged output on the Django side: the row says so, the gallery card and
the content page show it, the admin and the gallery filter it.

The engine's tiny safety checker (tests/engine/test_safety.py, a real
``StableDiffusionSafetyChecker`` whose thresholds flag every image, or none)
runs on the tiny model in this process's engine (``generation.runtime``); the
row is claimed and its result stored by the services the job calls
(``content_claim``, ``content_store_result``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from django.urls import reverse

from generation import runtime, services
from generation.models import Content, ContentStatus
from generation.parameters import GenerationOverrides, request_from_row
from generation.queues import get_queue
from tests.engine.test_safety import write_checker

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def checkers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkers")
    return {
        "flags": write_checker(root / "flags", flags_everything=True),
        "passes": write_checker(root / "passes", flags_everything=False),
    }


@pytest.fixture
def checked_by(studio_settings, tiny_model_dir, checkers):
    """Start this process's worker run with the engine checking under
    ``policy`` with the checker named; the run is reset afterwards."""

    def start(policy: str, checker: str) -> None:
        from generation.engine.runner import Engine

        def factory(config):
            return Engine(
                replace(
                    config,
                    model_roots=[*config.model_roots, checkers[checker].parent],
                    safety_policy=policy,
                    safety_checker=str(checkers[checker]),
                )
            )

        runtime.start(factory=factory)

    get_queue("gpu").empty()
    yield start
    runtime.start()


def generate(persona, django_capture_on_commit_callbacks) -> Content:
    with django_capture_on_commit_callbacks(execute=True):
        content = services.content_enqueue(
            persona=persona,
            prompt="on a beach",
            overrides=GenerationOverrides(method="text", seed=3),
        )
    assert services.content_claim(
        content_id=content.pk, job_id=content.rq_job_id, worker_name="test"
    )
    content.refresh_from_db()
    request, inputs = request_from_row(
        content.request, replay_snapshot=content.replay_snapshot, inputs=content.inputs
    )
    result = runtime.engine().generate(request)
    assert services.content_store_result(
        content=content, result=result, inputs=inputs, timings={}
    )
    content.refresh_from_db()
    return content


def test_a_flagged_output_is_stored_flagged_and_shown(
    checked_by, persona_with_reference, django_capture_on_commit_callbacks,
    admin_client,
):
    checked_by("black", "flags")
    content = generate(persona_with_reference, django_capture_on_commit_callbacks)
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.flagged is True
    assert any("replaced by a black image" in note for note in content.notes)
    assert content.snapshot["safety"]["flagged"] == [True]

    page = admin_client.get(reverse("gallery:content", args=[content.pk]))
    assert "Flagged by the safety checker" in page.content.decode()
    card = admin_client.get(reverse("gallery:content-card", args=[content.pk]))
    assert "Flagged by the safety checker" in card.content.decode()
    change = admin_client.get(
        reverse("admin:generation_content_change", args=[content.pk])
    )
    assert change.context["adminform"].form.instance.flagged is True
    assert "field-flagged" in change.content.decode()


def test_an_output_the_checker_passes_is_not_flagged_and_the_filters_tell_apart(
    checked_by, persona_with_reference, django_capture_on_commit_callbacks,
    admin_client,
):
    checked_by("flag", "passes")
    passed = generate(persona_with_reference, django_capture_on_commit_callbacks)
    checked_by("flag", "flags")
    flagged = generate(persona_with_reference, django_capture_on_commit_callbacks)
    assert passed.status == flagged.status == ContentStatus.SUCCEEDED
    assert (passed.flagged, flagged.flagged) == (False, True)
    assert any("flagged by the safety checker and kept" in n for n in flagged.notes)

    card = admin_client.get(reverse("gallery:content-card", args=[passed.pk]))
    assert "Flagged by the safety checker" not in card.content.decode()

    persona_url = reverse("gallery:persona", args=[persona_with_reference.slug])
    shown = admin_client.get(persona_url, {"flagged": "yes"}).context["page"]
    assert [row.pk for row in shown.contents] == [flagged.pk]
    shown = admin_client.get(persona_url, {"flagged": "no"}).context["page"]
    assert [row.pk for row in shown.contents] == [passed.pk]

    changelist = reverse("admin:generation_content_changelist")
    listed = admin_client.get(changelist, {"flagged__exact": "1"})
    assert listed.status_code == 200
    assert [row.pk for row in listed.context["cl"].result_list] == [flagged.pk]

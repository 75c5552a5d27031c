"""The training pages in the admin: "Train LoRA…" from the persona, the start
page's defaults and refusals, the run's page with its chart and samples, the
version comparison and the choice of the active version. Runs train in a real
worker process on the real Redis."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from generation import services
from generation.models import ContentStatus
from generation.training_models import TrainingRun, TrainingStatus
from personas.models import LoraSource, Persona, PersonaLoraVersion
from personas.services import lora_version_add
from tests.workers import wait_finished, wait_for, wait_samples_scored

pytestmark = pytest.mark.django_db

FAST = {
    "steps": "4",
    "rank": "4",
    "alpha": "4",
    "learning_rate": "0.01",
    "resolution": "64",
    "batch_size": "1",
    "noise_offset": "0",
    "flip": "on",
    "seed": "1",
    "checkpoint_every": "2",
    "sample_every": "0",
    "sample_steps": "2",
    "preset": "quick",
    "trigger_word": "ada_person",
    "validation_prompts": "ada_person smiling",
}


def start_url(persona: Persona) -> str:
    return f"/admin/generation/trainingrun/start/{persona.pk}/"


def form_data(persona: Persona, **changes: str) -> dict:
    references = [r for r in persona.references.all() if r.role != "other"]
    data = {**FAST, "references": [str(r.pk) for r in references], "start": "1"}
    for reference in persona.references.all():
        data[f"caption_{reference.pk}"] = f"ada_person, {reference.caption}"
    data.update(changes)
    return data


def train(admin_client, persona) -> TrainingRun:
    response = admin_client.post(start_url(persona), form_data(persona))
    assert response.status_code == 302, response.content.decode()[:2000]
    run = TrainingRun.objects.latest("created_at")
    run = wait_for(
        lambda: TrainingRun.objects.filter(
            pk=run.pk, status__in=(TrainingStatus.SUCCEEDED, TrainingStatus.FAILED)
        ).first(),
        what=f"training #{run.pk} to finish",
    )
    assert run.status == TrainingStatus.SUCCEEDED, run.error_detail
    return run


def test_the_persona_page_offers_train_lora_to_who_may_train(
    admin_client, client, training_persona
):
    page = admin_client.get(f"/admin/personas/persona/{training_persona.pk}/change/")
    assert start_url(training_persona) in page.content.decode()

    editor = User.objects.create_user("editor", password="x", is_staff=True)
    editor.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["change_persona", "view_persona", "view_trainingrun"]
        )
    )
    client.force_login(editor)
    page = client.get(f"/admin/personas/persona/{training_persona.pk}/change/")
    assert page.status_code == 200
    assert start_url(training_persona) not in page.content.decode()
    assert client.get(start_url(training_persona)).status_code == 403
    listing = client.get("/admin/personas/persona/")
    assert "train_lora" not in listing.content.decode()


def test_the_admin_action_opens_the_training_page_of_one_persona(
    admin_client, training_persona
):
    response = admin_client.post(
        "/admin/personas/persona/",
        {"action": "train_lora", "_selected_action": [training_persona.pk]},
    )
    assert response.status_code == 302
    assert response["Location"] == start_url(training_persona)


def test_the_start_page_defaults_to_face_half_and_full_body_with_captions(
    admin_client, training_persona
):
    page = admin_client.get(start_url(training_persona))
    form = page.context["form"]
    chosen = {int(pk) for pk in form["references"].value()}
    roles = {r.role for r in training_persona.references.all() if r.pk in chosen}
    assert roles == {"face", "half_body", "full_body"}
    face = training_persona.references.get(role="face")
    assert form[f"caption_{face.pk}"].value() == (
        "ada_person, face view, a red and blue test card"
    )
    assert form["steps"].value() == 1000  # the standard preset


def test_apply_preset_loads_the_presets_values(admin_client, training_persona):
    data = form_data(training_persona, preset="strong", apply_preset="1")
    del data["start"]
    page = admin_client.post(start_url(training_persona), data)
    form = page.context["form"]
    assert form["steps"].value() == "2000"
    assert form["train_text_encoder"].value() is True
    assert not TrainingRun.objects.exists()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"resolution": "60"}, "not a multiple of 8"),
        ({"resolution": "2048"}, "trains at 64 to 1024 pixels"),
    ],
)
def test_the_start_page_refuses_settings_that_cannot_work_with_the_reason(
    admin_client, training_persona, changes, reason
):
    page = admin_client.post(
        start_url(training_persona), form_data(training_persona, **changes)
    )
    assert page.status_code == 200
    assert reason in page.content.decode()
    assert not TrainingRun.objects.exists()


def test_the_start_page_refuses_too_few_images(admin_client, training_persona):
    data = form_data(training_persona)
    data["references"] = data["references"][:2]
    page = admin_client.post(start_url(training_persona), data)
    assert "at least 3 images; 2 were chosen" in page.content.decode()
    assert not TrainingRun.objects.exists()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_run_started_from_the_page_trains_and_shows_chart_and_samples(
    admin_client, training_persona, start_worker, redis_connection
):
    cpu = start_worker("cpu")  # scores the samples, off the training worker
    start_worker("train-page")
    run = wait_samples_scored(train(admin_client, training_persona))
    from rq.job import Job

    sample = run.samples.first()
    job = Job.fetch(sample.score_job_id, connection=redis_connection)
    assert job.worker_name == cpu.name
    assert LogEntry.objects.filter(object_id=str(training_persona.pk)).exists()
    assert len(run.loss_history) == 4
    assert [c["step"] for c in run.checkpoints] == [2, 4]
    page = admin_client.get(f"/admin/generation/trainingrun/{run.pk}/change/")
    text = page.content.decode()
    assert "Succeeded: step 4 of 4" in text
    assert f"/admin/generation/trainingrun/{run.pk}/chart.svg" in text
    assert "no_face" in text  # the sample's identity verdict, from dlib
    chart = admin_client.get(f"/admin/generation/trainingrun/{run.pk}/chart.svg")
    assert chart["Content-Type"] == "image/svg+xml"
    assert chart.content.startswith(b"<?xml") and b"<svg" in chart.content


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_staff_compare_two_versions_and_pick_the_active_one(
    admin_client, training_persona, start_worker
):
    start_worker("train-compare")
    first = train(admin_client, training_persona)
    second = train(admin_client, training_persona)
    one, two = first.lora_version, second.lora_version
    assert (one.number, two.number) == (1, 2)
    one.refresh_from_db()
    assert two.is_active and not one.is_active

    page = admin_client.get(
        f"/admin/generation/trainingrun/compare/{training_persona.pk}/"
        f"?a={one.pk}&b={two.pk}"
    )
    columns = page.context["columns"]
    assert [c["version"] for c in columns] == [one, two]
    assert all(len(c["samples"]) == 2 for c in columns)  # one prompt, two seeds

    admin_client.post(
        "/admin/personas/personaloraversion/",
        {"action": "activate_lora_version", "_selected_action": [one.pk]},
    )
    assert PersonaLoraVersion.objects.get(is_active=True) == one
    persona = Persona.objects.get(pk=training_persona.pk)
    assert persona.lora_sha256 == one.sha256

    # An uploaded LoRA is a version too, compared by the generations made with
    # it (it has no training samples); activating it is the same action.
    uploaded = lora_version_add(
        persona=persona,
        file=SimpleUploadedFile("mine.safetensors", one.weights.read()),
        label="uploaded, mine.safetensors",
    )
    one.weights.close()
    assert (uploaded.number, uploaded.source) == (3, LoraSource.UPLOADED)
    (content,) = services.content_enqueue_batch(
        persona=Persona.objects.get(pk=persona.pk), prompt="ada_person", count=1
    ).contents.all()
    assert wait_finished(content).status == ContentStatus.SUCCEEDED
    page = admin_client.get(
        f"/admin/generation/trainingrun/compare/{training_persona.pk}/"
        f"?a={uploaded.pk}&b={two.pk}"
    )
    mine, theirs = page.context["columns"]
    assert mine["samples"] == [] and mine["outputs"] == [content]
    assert theirs["outputs"] == [] and len(theirs["samples"]) == 2
    assert "an uploaded version" in page.content.decode()
    admin_client.post(
        "/admin/personas/personaloraversion/",
        {"action": "activate_lora_version", "_selected_action": [one.pk]},
    )
    assert PersonaLoraVersion.objects.get(is_active=True) == one

    # Deleting a run removes its checkpoints and samples; its version stays.
    files = [n for c in first.checkpoints for n in c["files"].values()]
    files += [s.image.name for s in first.samples.all()]
    assert files and all(default_storage.exists(name) for name in files)
    admin_client.post(
        f"/admin/generation/trainingrun/{first.pk}/delete/", {"post": "yes"}
    )
    assert not TrainingRun.objects.filter(pk=first.pk).exists()
    assert not any(default_storage.exists(name) for name in files)
    assert PersonaLoraVersion.objects.filter(pk=one.pk).exists()
    # The active version cannot be deleted; another one goes with its file.
    admin_client.post(
        f"/admin/personas/personaloraversion/{one.pk}/delete/", {"post": "yes"}
    )
    assert PersonaLoraVersion.objects.filter(pk=one.pk).exists()
    two_file = two.weights.name
    admin_client.post(
        f"/admin/personas/personaloraversion/{two.pk}/delete/", {"post": "yes"}
    )
    assert not PersonaLoraVersion.objects.filter(pk=two.pk).exists()
    assert not default_storage.exists(two_file)

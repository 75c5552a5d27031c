"""Identity on the Django side (docs/identity.md): reference health, the scoring
job, best of N, auto that learns, the admin's and the gallery's identity views.

Faces are real photos (public domain): scikit-image's astronaut (Eileen
Collins) and matplotlib's Grace Hopper; dlib's real models analyse them. The
rules (best of N, auto) are tested on rows whose identity values the test
gives. Jobs run in this process through RQ's ``SimpleWorker`` on the real
Redis; the end-to-end run through worker processes is test_identity_e2e.py.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from PIL import Image, ImageOps
from rq import SimpleWorker
from skimage import data

from generation import score_services, services
from generation.engine.face import DETECTOR_NAMES, FaceDetector
from generation.forms import GenerateForm
from generation.models import Batch, BatchKind, Content, ContentStatus, IdentityStatus
from generation.parameters import GenerationOverrides
from generation.queues import get_queue
from generation.reconcile import reconcile
from personas.face_analysis import persona_reference_health
from personas.models import Persona, ReferenceImage, ReferenceRole
from personas.services import persona_create, reference_image_add
from tests.images import encode

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def hopper() -> Image.Image:
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with Image.open(path) as photo:
        return photo.convert("RGB")


@pytest.fixture
def queues(studio_settings):
    """Generations and CPU work on this test session's real Redis."""
    studio_settings.STUDIO_CPU_QUEUE = "cpu-identity"
    studio_settings.RQ_QUEUES = {
        name: {"URL": studio_settings.REDIS_URL, "DEFAULT_TIMEOUT": 600}
        for name in ("gpu", "cpu-identity")
    }
    cpu = get_queue("cpu-identity")
    cpu.empty()
    get_queue("gpu").empty()
    return studio_settings


def run_cpu_jobs() -> None:
    """Run every job waiting on the CPU queue, in this process."""
    queue = get_queue("cpu-identity")
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def _upload(persona: Persona, image: Image.Image, *, role: str = ReferenceRole.FACE,
            primary: bool = False, caption: str = "") -> ReferenceImage:
    return reference_image_add(
        persona=persona,
        file=SimpleUploadedFile(f"{caption or 'photo'}.png", encode(image, "PNG")),
        role=role,
        is_primary=primary,
        caption=caption,
    )


def _persona(slug: str = "eileen", **fields) -> Persona:
    return persona_create(
        name=slug.title(), slug=slug, width=64, height=64, steps=2, **fields
    )


def _astronaut_views(astronaut: Image.Image) -> list[Image.Image]:
    """Three different photos of the astronaut (the gallery refuses one twice)."""
    return [
        astronaut,
        ImageOps.mirror(astronaut),
        astronaut.crop((96, 0, 416, 320)).resize((400, 400)),
    ]


# --- Reference health ---------------------------------------------------------------


def test_an_upload_queues_its_face_analysis_on_the_cpu_queue_and_the_job_stores_it(
    queues, astronaut, django_capture_on_commit_callbacks
):
    persona = _persona()
    with django_capture_on_commit_callbacks(execute=True):
        reference = _upload(persona, astronaut, primary=True)
    reference.refresh_from_db()
    assert reference.face_analysed_at is None  # the upload did not wait
    assert get_queue("cpu-identity").count == 1

    run_cpu_jobs()

    reference.refresh_from_db()
    assert reference.face_analysed_at is not None
    assert reference.face_error == ""
    # The astronaut's face and the mission patch on her suit.
    assert reference.face_count >= 1
    assert len(reference.face_embedding) == 128
    left, top, width, height = reference.face_box
    assert 150 < left + width / 2 < 300 and 50 < top + height / 2 < 200  # the face
    assert reference.face_detector == DETECTOR_NAMES[FaceDetector.HOG]
    assert reference.face_detail["faces"][0]["box"] == reference.face_box


def test_reference_health_flags_the_other_person_with_the_distances_in_the_admin(
    queues, astronaut, hopper, admin_client, django_capture_on_commit_callbacks
):
    persona = _persona()
    with django_capture_on_commit_callbacks(execute=True):
        astronauts = [
            _upload(persona, view, primary=index == 0, caption=f"astronaut {index}")
            for index, view in enumerate(_astronaut_views(astronaut))
        ]
        other = _upload(persona, hopper, caption="hopper")
    run_cpu_jobs()

    health = {entry.reference.pk: entry for entry in persona_reference_health(
        persona=persona
    )}
    for reference in astronauts:
        assert "another_person" not in [
            warning.code for warning in health[reference.pk].report.warnings
        ]
        assert health[reference.pk].report.distance_to_others < 0.6
    flagged = health[other.pk]
    assert [warning.code for warning in flagged.report.warnings] == ["another_person"]
    assert flagged.report.distance_to_others >= 0.6
    distance = f"{flagged.report.distance_to_others:.2f}"

    page = admin_client.get(
        reverse("admin:personas_persona_change", args=[persona.pk])
    ).content.decode()
    assert "Reference health" in page
    assert f"Reference #{other.pk}: This face is at distance {distance}" in page
    assert "likely another person" in page
    assert reverse("gallery:persona-identity", args=[persona.slug]) in page


def test_a_face_reference_without_a_face_is_warned_of(
    queues, django_capture_on_commit_callbacks
):
    persona = _persona()
    noise = Image.fromarray(
        np.random.default_rng(3).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    )
    with django_capture_on_commit_callbacks(execute=True):
        reference = _upload(persona, noise, caption="noise")
    run_cpu_jobs()
    reference.refresh_from_db()
    assert reference.face_count == 0
    assert reference.face_embedding is None
    (entry,) = persona_reference_health(persona=persona)
    assert [warning.code for warning in entry.report.warnings] == ["no_face"]


def test_the_command_analyses_the_references_left_and_prints_the_warnings(
    queues, astronaut, hopper, capsys
):
    persona = _persona()
    # Uploaded without a commit callback: never analysed, as before this existed.
    _upload(persona, astronaut, primary=True, caption="astronaut")
    _upload(persona, hopper, caption="hopper")
    assert ReferenceImage.objects.filter(face_analysed_at__isnull=True).count() == 2

    call_command("studio_analyse_references", "--persona", persona.slug)

    output = capsys.readouterr().out
    assert ReferenceImage.objects.filter(face_analysed_at__isnull=True).count() == 0
    assert output.count("faces found") == 2
    # One photo of each: nothing says which is the persona, so both are flagged.
    assert output.count("likely another person") == 2
    call_command("studio_analyse_references")
    assert "Nothing to analyse." in capsys.readouterr().out


def test_the_reconciler_queues_references_left_unanalysed_once(queues, astronaut):
    persona = _persona()
    # Uploaded while Redis was unreachable, say: no analysis job was queued.
    reference = _upload(persona, astronaut, primary=True)
    queue = get_queue("cpu-identity")
    assert queue.count == 0

    reconcile()
    reconcile()  # a second worker's reconcile: still one job
    assert queue.count == 1

    run_cpu_jobs()
    reference.refresh_from_db()
    assert reference.face_analysed_at is not None and reference.face_count >= 1
    reconcile()
    assert queue.count == 0


# --- The scoring job ----------------------------------------------------------------


def _stored_output(persona: Persona, image: Image.Image, **fields) -> Content:
    """A row as the GPU job leaves it (output stored, scoring queued), with a real
    photo as its output: the face model measures it for real."""
    content = services.content_enqueue(
        persona=persona, prompt="a portrait", overrides=GenerationOverrides(**fields)
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    content.output_image.save("output.png", ContentFile(buffer.getvalue()), save=False)
    content.status = ContentStatus.SUCCEEDED
    content.method_used = fields.get("method") or "img2img"
    content.finished_at = timezone.now()
    score_services.content_queue_scoring(content=content)
    content.save()
    return content


@pytest.fixture
def eileen(queues, astronaut, django_capture_on_commit_callbacks) -> Persona:
    """A persona whose face references are three photos of the astronaut, not
    analysed yet (the scoring job analyses them)."""
    persona = _persona(method="img2img")
    for index, view in enumerate(_astronaut_views(astronaut)):
        _upload(persona, view, primary=index == 0, caption=f"astronaut {index}")
    return persona


def test_scoring_an_output_of_the_persona_says_same_person_with_its_numbers(
    eileen, astronaut, django_capture_on_commit_callbacks
):
    output = astronaut.crop((0, 0, 480, 480)).rotate(5)
    with django_capture_on_commit_callbacks(execute=True):
        content = _stored_output(eileen, output)
    assert content.identity_status == IdentityStatus.PENDING
    assert content.scoring

    run_cpu_jobs()

    content.refresh_from_db()
    assert content.identity_status == IdentityStatus.SCORED
    assert content.identity_same_person is True
    assert content.identity_distance < 0.6
    assert content.identity_similarity == pytest.approx(
        1 - content.identity_distance / 1.2
    )
    assert content.identity_nearest_reference.persona_id == eileen.pk
    assert content.identity_nearest_distance <= content.identity_distance + 0.2
    assert content.identity_detail["face_references"] == list(
        eileen.references.order_by("order", "id").values_list("pk", flat=True)
    )
    assert content.flagged_for_review is False
    # The consistency score is measured beside it, on the CPU.
    assert 0.0 <= content.consistency_score <= 1.0
    assert content.score_detail["ssim"] is not None


def test_an_output_of_another_person_is_not_the_same_and_is_flagged(
    eileen, hopper, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        content = _stored_output(eileen, hopper)
    run_cpu_jobs()
    content.refresh_from_db()
    assert content.identity_status == IdentityStatus.SCORED
    assert content.identity_same_person is False
    assert content.identity_similarity < 0.5
    assert content.flagged_for_review is True


def test_an_output_without_a_face_says_no_face_found_and_no_number(
    eileen, django_capture_on_commit_callbacks
):
    noise = Image.fromarray(
        np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    )
    with django_capture_on_commit_callbacks(execute=True):
        content = _stored_output(eileen, noise)
    run_cpu_jobs()
    content.refresh_from_db()
    assert content.identity_status == IdentityStatus.NO_FACE
    assert content.identity_similarity is None
    assert content.identity_same_person is None
    assert content.identity_detail["message"] == "no face found"
    assert content.flagged_for_review is True


def test_a_lost_scoring_job_is_enqueued_again_by_the_reconciler(
    eileen, astronaut, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        content = _stored_output(eileen, astronaut)
    lost_job = content.score_job_id
    get_queue("cpu-identity").connection.flushall()  # Redis lost its jobs

    with django_capture_on_commit_callbacks(execute=True):
        report = reconcile()
    assert report.scoring_requeued == [content.pk]
    content.refresh_from_db()
    assert content.score_job_id != lost_job
    assert content.identity_status == IdentityStatus.PENDING

    run_cpu_jobs()
    content.refresh_from_db()
    assert content.identity_status == IdentityStatus.SCORED


def test_scoring_gives_up_after_the_attempts_with_a_reason(eileen, astronaut, settings):
    content = _stored_output(eileen, astronaut)  # its job never enqueued
    Content.objects.filter(pk=content.pk).update(
        score_attempts=settings.STUDIO_MAX_ATTEMPTS
    )
    report = reconcile()
    assert report.scoring_failed == [content.pk]
    content.refresh_from_db()
    assert content.identity_status == IdentityStatus.FAILED
    assert "gave up" in content.identity_detail["error"]


# --- Best K of N and auto, on given values ------------------------------------------


def _scored(persona: Persona, similarity: float | None, *, batch=None,
            method: str = "img2img", **fields) -> Content:
    """A succeeded row whose identity the test gives (None: no face)."""
    content = services.content_enqueue(persona=persona, prompt="p")
    values = {
        "batch": batch,
        "status": ContentStatus.SUCCEEDED,
        "method_used": method,
        "identity_status": IdentityStatus.NO_FACE
        if similarity is None
        else IdentityStatus.SCORED,
        "identity_similarity": similarity,
        "identity_same_person": None if similarity is None else similarity > 0.5,
    }
    Content.objects.filter(pk=content.pk).update(**{**values, **fields})
    return Content.objects.get(pk=content.pk)


def test_best_of_n_marks_the_others_once_every_output_is_scored(queues):
    persona = _persona(method="img2img")
    _upload(persona, Image.new("RGB", (64, 64), "red"), role=ReferenceRole.OTHER)
    batch = Batch.objects.create(
        persona=persona, kind=BatchKind.BATCH, prompt="p", keep_best=2
    )
    values = [0.4, None, 0.9, 0.7]
    rows = [_scored(persona, value, batch=batch) for value in values[:3]]
    waiting = _scored(persona, None, batch=batch, identity_status="pending")
    assert score_services.batch_apply_best_of(batch_id=batch.pk) is False

    Content.objects.filter(pk=waiting.pk).update(
        identity_status=IdentityStatus.SCORED, identity_similarity=values[3]
    )
    assert score_services.batch_apply_best_of(batch_id=batch.pk) is True
    marked = set(batch.contents.filter(not_kept=True).values_list("pk", flat=True))
    # Kept: 0.9 and 0.7; marked: 0.4 and the output without a face.
    assert marked == {rows[0].pk, rows[1].pk}
    assert batch.contents.count() == 4  # the others are kept, only marked
    assert score_services.batch_apply_best_of(batch_id=batch.pk) is False  # once


def test_the_batch_service_and_the_form_take_keep_best_below_the_count(queues):
    persona = _persona(method="text")
    batch = services.content_enqueue_batch(
        persona=persona, prompt="p", count=3, keep_best=1
    )
    assert batch.keep_best == 1
    with pytest.raises(Exception, match="Keep between 1 and 2 of 3"):
        services.content_enqueue_batch(
            persona=persona, prompt="p", count=3, keep_best=3
        )
    form = GenerateForm({"prompt": "p", "count": 2, "keep_best": 2})
    assert not form.is_valid()
    assert "Keep fewer than you generate" in str(form.errors["keep_best"])


def test_auto_prefers_the_method_that_kept_identity_best_and_says_so(queues):
    persona = _persona(method="auto")
    _upload(persona, Image.new("RGB", (64, 64), "red"), role=ReferenceRole.OTHER,
            primary=True)
    for _ in range(24):
        _scored(persona, 0.81, method="ip_adapter")
    for _ in range(30):
        _scored(persona, 0.62, method="img2img")

    content = services.content_enqueue(persona=persona, prompt="a portrait")

    assert content.method_requested == "auto"
    assert content.request["method"] == "ip_adapter"
    assert content.method_reason == (
        "auto by identity: ip_adapter kept identity best: 0.81 over 24 outputs, "
        "img2img 0.62 over 30"
    )


def test_auto_keeps_its_rules_without_enough_scored_outputs_and_says_why(queues):
    persona = _persona(method="auto")
    _upload(persona, Image.new("RGB", (64, 64), "red"), role=ReferenceRole.OTHER,
            primary=True)
    for _ in range(19):
        _scored(persona, 0.9, method="img2img")
    for _ in range(25):
        _scored(persona, 0.5, method="ip_adapter")
    _scored(persona, None, method="img2img")  # no face: not counted

    content = services.content_enqueue(persona=persona, prompt="a portrait")

    assert content.request["method"] == "auto"
    assert content.method_reason == (
        "the rules apply: scored outputs img2img 19, ip_adapter 25 (identity "
        "decides once two methods have 20 scored outputs each)"
    )


# --- The admin and the gallery --------------------------------------------------------


def test_the_content_admin_filters_and_sorts_by_identity(queues, admin_client):
    persona = _persona(method="text")
    low, high = _scored(persona, 0.3), _scored(persona, 0.8)
    faceless = _scored(persona, None)
    url = reverse("admin:generation_content_changelist")

    def ids(query: str) -> list[int]:
        response = admin_client.get(url + query)
        return [row.pk for row in response.context["cl"].result_list]

    assert ids("?identity=below_half") == [low.pk]
    assert ids("?identity=not_same") == [low.pk]
    assert ids("?identity=no_face") == [faceless.pk]
    page = admin_client.get(url).content.decode()
    assert "identity below 0.5" in page and "not the same person" in page
    assert "0.80 same person" in page and "No face found" in page
    column = admin_client.get(url).context["cl"].list_display.index("identity_display")
    assert ids(f"?o={column}")[:2] == [high.pk, low.pk]


def test_the_gallery_filters_sorts_and_shows_identity(queues, admin_client):
    persona = _persona(method="text")
    low, high = _scored(persona, 0.3), _scored(persona, 0.8)
    pending = _scored(persona, None, identity_status="pending")
    url = reverse("gallery:persona", args=[persona.slug])

    page = admin_client.get(url + "?sort=identity")
    assert [c.pk for c in page.context["page"].contents][:2] == [high.pk, low.pk]
    filtered = admin_client.get(url + "?identity=below_half").context["page"]
    assert [c.pk for c in filtered.contents] == [low.pk]
    body = page.content.decode()
    assert "0.80 same person" in body and "0.30 not the same person" in body
    assert "scoring…" in body
    progress = admin_client.get(
        reverse("gallery:progress") + f"?ids={pending.pk}"
    ).json()["contents"][str(pending.pk)]
    assert progress["finished"] is False and progress["label"] == "Scoring…"
    detail = admin_client.get(reverse("gallery:content", args=[low.pk]))
    assert "not the same person" in detail.content.decode()


def test_the_identity_page_draws_an_svg_chart_and_the_csv_has_the_rows(
    queues, admin_client
):
    persona = _persona(method="text")
    rows = [
        _scored(persona, 0.9, method="ip_adapter", review_state="approved"),
        _scored(persona, 0.3, method="ip_adapter"),
        _scored(persona, 0.6, method="img2img"),
        _scored(persona, None, method="img2img"),
    ]
    page = admin_client.get(reverse("gallery:persona-identity", args=[persona.slug]))
    assert page.status_code == 200
    body = page.content.decode()
    assert "<svg" in body and "</svg>" in body and "<?xml" not in body
    methods = {row.method: row for row in page.context["methods"]}
    assert methods["ip_adapter"].scored == 2
    assert methods["ip_adapter"].mean_similarity == pytest.approx(0.6)
    assert methods["ip_adapter"].same_person_share == 0.5
    assert methods["ip_adapter"].approved == 1
    assert methods["img2img"].no_face == 1

    response = admin_client.get(
        reverse("gallery:persona-identity-csv", args=[persona.slug])
    )
    assert response["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [int(row["id"]) for row in table] == [row.pk for row in rows]
    assert [row["identity_similarity"] for row in table] == ["0.9", "0.3", "0.6", ""]
    assert table[3]["identity_status"] == "no_face"


def test_rescore_from_the_gallery_scores_again_after_a_new_face_reference(
    queues, astronaut, admin_client, django_capture_on_commit_callbacks
):
    persona = _persona(method="img2img")
    _upload(persona, Image.new("RGB", (64, 64), "red"), role=ReferenceRole.OTHER)
    with django_capture_on_commit_callbacks(execute=True):
        content = _stored_output(persona, astronaut)
    run_cpu_jobs()
    content.refresh_from_db()
    assert content.identity_status == IdentityStatus.NO_IDENTITY  # no face ref yet
    assert content.flagged_for_review is False  # nothing was measured

    with django_capture_on_commit_callbacks(execute=True):
        _upload(persona, ImageOps.mirror(astronaut), caption="astronaut")
        page = admin_client.get(reverse("gallery:content", args=[content.pk]))
        assert "Rescore identity" in page.content.decode()
        admin_client.post(
            reverse("gallery:content-action", args=[content.pk, "rescore"])
        )
    content.refresh_from_db()
    assert content.identity_status == IdentityStatus.PENDING
    run_cpu_jobs()
    content.refresh_from_db()
    assert content.identity_status == IdentityStatus.SCORED
    assert content.identity_same_person is True

"""The face detailer and manual inpainting on the Django side, in this process:
the persona's detailer settings and their per-run overrides in the row's
request, the refusals before anything is queued (a detailer pass or an inpaint
sure to fail, a bad mask: not a PNG, of another size, empty), the plan check's
refusal for a family without an inpaint pipeline, and the stored files.

Outputs are real generations of the tiny model in this process's engine
(``generation.runtime``), stored by the services the job calls; the worker
runs of the same paths are in test_detailer_e2e.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, ImageDraw

from generation import actions, runtime, services
from generation.engine import vocabulary
from generation.engine.families import SD15
from generation.engine.plan import inpaint_problems
from generation.engine.requests import InpaintRequest
from generation.models import Content, ContentStatus
from generation.parameters import GenerationOverrides
from generation.queues import get_queue
from personas.models import Persona, ReferenceRole
from personas.services import reference_image_add
from studio import conf
from tests.generation.test_regenerate_exactly import generate
from tests.images import encode, halves
from tests.workers import make_persona

pytestmark = pytest.mark.django_db

SIDE = 64


@pytest.fixture
def engine_here(studio_settings, tiny_model_dir):
    """This process's engine on the tiny model, its queue emptied after."""
    get_queue("gpu").empty()
    runtime.start()
    yield
    runtime.start()


def generated(persona: Persona, capture) -> Content:
    """A succeeded generation of ``persona``, run here as the job runs it."""
    return generate(persona, capture, method="text")


def mask_file(size=(SIDE, SIDE), box=(16, 16, 40, 40), image_format="PNG"):
    mask = Image.new("L", size, 0)
    if box is not None:
        ImageDraw.Draw(mask).rectangle(box, fill=255)
    extension = {"PNG": "png", "JPEG": "jpg"}[image_format]
    return SimpleUploadedFile(
        f"mask.{extension}", encode(mask.convert("RGB"), image_format)
    )


def refused(**kwargs) -> str:
    before = Content.objects.count()
    with pytest.raises(ValidationError) as raised:
        services.content_inpaint(**kwargs)
    assert Content.objects.count() == before, "a refused inpaint queued a row"
    return " ".join(raised.value.messages)


# --- Settings and defaults ---------------------------------------------------------


def test_the_detailer_and_inpaint_defaults_are_the_vocabularys(studio_settings):
    persona = Persona(name="Ada", slug="ada")
    assert persona.detailer_enabled is False
    assert persona.detailer_strength == vocabulary.DEFAULT_DETAILER_STRENGTH
    assert persona.detailer_prompt == vocabulary.DEFAULT_DETAILER_PROMPT
    assert persona.detailer_padding == vocabulary.DEFAULT_DETAILER_PADDING
    assert conf.MASK_BLUR == vocabulary.DEFAULT_MASK_BLUR
    assert conf.ONLY_MASKED_PADDING == vocabulary.DEFAULT_ONLY_MASKED_PADDING


def test_a_persona_with_the_detailer_on_carries_it_in_its_request(
    studio_settings, django_capture_on_commit_callbacks
):
    studio_settings.STUDIO_MASK_BLUR = 6
    persona = make_persona(
        detailer_enabled=True, detailer_strength=0.5, detailer_padding=20
    )
    face = reference_image_add(
        persona=persona,
        file=SimpleUploadedFile("face.png", encode(halves((48, 64)), "PNG")),
        role=ReferenceRole.FACE,
    )
    with django_capture_on_commit_callbacks(execute=False):
        content = services.content_enqueue(persona=persona, prompt="full body")
    detailer = content.request["detailer"]
    assert detailer["strength"] == 0.5
    assert detailer["padding"] == 20
    assert detailer["mask_blur"] == 6
    assert detailer["prompt"] == (
        f"a red and blue test card, {vocabulary.DEFAULT_DETAILER_PROMPT}"
    )
    # The face reference goes to IP-Adapter plus-face (the tiny model has one).
    assert [data["image"] for data in detailer["references"]] == [face.image.name]
    assert detailer["ip_adapter"] == {
        "scale": persona.ip_adapter_scale,
        "face_crop": True,
        "reference_indexes": None,
    }


def test_a_run_overrides_the_personas_detailer(
    studio_settings, django_capture_on_commit_callbacks
):
    persona = make_persona(detailer_enabled=True)
    with django_capture_on_commit_callbacks(execute=False):
        off = services.content_enqueue(
            persona=persona, prompt="x", overrides=GenerationOverrides(detailer=False)
        )
        on = services.content_enqueue(
            persona=make_persona(slug="bea"),
            prompt="x",
            overrides=GenerationOverrides(
                detailer=True, detailer_strength=0.9, detailer_prompt="sharp eyes"
            ),
        )
    assert off.request["detailer"] is None
    assert on.request["detailer"]["strength"] == 0.9
    assert on.request["detailer"]["prompt"].endswith("sharp eyes")
    # No face reference: no IP-Adapter for the redraw.
    assert on.request["detailer"]["ip_adapter"] is None


def test_the_generate_forms_take_the_detailer_override(studio_settings):
    from generation.forms import GenerateForm, PersonaGenerateForm

    form = GenerateForm({"prompt": "x", "count": 1, "detailer": "off"})
    assert form.is_valid(), form.errors
    assert GenerationOverrides.from_data(form.cleaned_data).detailer is False
    persona = make_persona(detailer_enabled=True)
    page = PersonaGenerateForm(persona=persona)
    assert page["detailer"].initial is True
    assert page["detailer_strength"].initial == persona.detailer_strength


def test_a_detailer_pass_sure_to_fail_is_refused_before_queueing(
    studio_settings, django_capture_on_commit_callbacks
):
    persona = make_persona(steps=2, detailer_enabled=True, detailer_strength=0.4)
    with pytest.raises(ValidationError) as raised:
        with django_capture_on_commit_callbacks(execute=True):
            services.content_enqueue(persona=persona, prompt="full body")
    message = " ".join(raised.value.messages)
    assert message.startswith("The face detailer: 2 steps at strength 0.4")
    assert "raise the steps or the strength" in message
    assert not Content.objects.exists()


def test_out_of_range_detailer_overrides_are_refused(studio_settings):
    with pytest.raises(ValidationError) as raised:
        GenerationOverrides(detailer_strength=1.5, detailer_padding=9999).validate()
    assert set(raised.value.error_dict) == {"detailer_strength", "detailer_padding"}


def test_a_family_without_an_inpaint_pipeline_is_refused_by_the_plan_check():
    request = InpaintRequest(
        model="m",
        image=Image.new("RGB", (8, 8)),
        mask=Image.new("L", (8, 8), 255),
        prompt="",
    )
    without = replace(SD15, key="no-inpaint", inpaint_pipeline_class="")
    (problem,) = inpaint_problems(request, without, what="The face detailer")
    assert problem.code == "inpaint_unsupported"
    assert problem.message.startswith(
        "The face detailer needs an inpaint pipeline, and the Stable Diffusion 1.5 "
        "family has none"
    )
    assert "sd15, sdxl" in problem.message
    assert inpaint_problems(request, SD15) == []


# --- Manual inpainting -------------------------------------------------------------


def test_an_inpaint_queues_a_child_content_that_owns_its_mask(
    engine_here, django_capture_on_commit_callbacks
):
    parent = generated(make_persona(), django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        child = services.content_inpaint(
            content=parent, mask=mask_file(), prompt="a hat", strength=0.8
        )
    child.refresh_from_db()
    assert child.status == ContentStatus.QUEUED
    assert child.inpainted_from == parent and child.is_inpaint
    assert child.request["image"] == parent.output_image.name
    assert child.request["mask"] == child.inpaint_mask.name
    assert child.request["strength"] == 0.8
    assert child.request["only_masked_padding"] == conf.ONLY_MASKED_PADDING
    with default_storage.open(child.inpaint_mask.name, "rb") as file:
        stored = Image.open(file).convert("L")
        assert stored.size == (SIDE, SIDE)
        assert stored.getbbox() == (16, 16, 41, 41)
    assert list(parent.inpaintings.all()) == [child]
    # A new seed of it owns a mask of its own.
    with django_capture_on_commit_callbacks(execute=True):
        again = services.content_regenerate(content=child)
    assert again.inpainted_from == parent
    assert again.inpaint_mask.name != child.inpaint_mask.name
    assert again.request["mask"] == again.inpaint_mask.name


def test_a_mask_of_another_size_is_refused_before_queueing(
    engine_here, django_capture_on_commit_callbacks
):
    parent = generated(make_persona(), django_capture_on_commit_callbacks)
    message = refused(
        content=parent, mask=mask_file(size=(48, 64)), prompt="a hat", strength=0.8
    )
    assert message == (
        "The mask is 48x64 but the image is 64x64: draw the mask on the image itself."
    )


def test_an_empty_mask_is_refused_before_queueing(
    engine_here, django_capture_on_commit_callbacks
):
    parent = generated(make_persona(), django_capture_on_commit_callbacks)
    message = refused(content=parent, mask=mask_file(box=None), prompt="x", strength=1)
    assert message == "The mask is empty: paint the region to redraw."


def test_a_mask_that_is_not_a_png_is_refused(
    engine_here, django_capture_on_commit_callbacks
):
    parent = generated(make_persona(), django_capture_on_commit_callbacks)
    message = refused(
        content=parent, mask=mask_file(image_format="JPEG"), prompt="x", strength=1
    )
    assert message.startswith("The mask must be a PNG")
    garbage = SimpleUploadedFile("mask.png", b"not an image at all")
    assert "not a PNG, JPEG or WebP image" in refused(
        content=parent, mask=garbage, prompt="x", strength=1
    )


def test_an_inpaint_that_denoises_no_step_or_of_no_output_is_refused(
    engine_here, django_capture_on_commit_callbacks
):
    parent = generated(make_persona(), django_capture_on_commit_callbacks)
    assert refused(
        content=parent, mask=mask_file(), prompt="x", strength=0.1
    ).startswith("4 steps at strength 0.1 denoise no step")
    with django_capture_on_commit_callbacks(execute=True):
        queued = services.content_enqueue(persona=parent.persona, prompt="x")
    assert "Only a generation that succeeded" in refused(
        content=queued, mask=mask_file(), prompt="x", strength=0.8
    )


def test_the_inpaint_action_logs_and_needs_the_generate_permission(
    engine_here, django_capture_on_commit_callbacks, rf
):
    from django.contrib.admin.models import LogEntry
    from django.contrib.auth.models import User
    from django.contrib.messages.storage.fallback import FallbackStorage
    from django.core.exceptions import PermissionDenied

    parent = generated(make_persona(), django_capture_on_commit_callbacks)
    viewer = User.objects.create_user("viewer", is_staff=True)
    request = rf.post("/")
    request.user = viewer
    with pytest.raises(PermissionDenied):
        actions.perform(actions.INPAINT, [parent], request=request, data={})
    admin = User.objects.create_superuser("boss", "boss@example.com", "pw")
    request = rf.post("/")
    request.user = admin
    request.session = {}
    request._messages = FallbackStorage(request)
    data = {"mask": mask_file(), "prompt": "a hat", "strength": 0.8}
    with django_capture_on_commit_callbacks(execute=True):
        (child,) = actions.perform(
            actions.INPAINT, [parent], request=request, data=data
        )
    entry = LogEntry.objects.get(object_id=str(parent.pk))
    assert entry.user == admin
    assert entry.change_message == f"Inpainted as content #{child.pk}."


def test_an_inpaint_of_a_model_no_longer_configured_is_refused(
    engine_here, django_capture_on_commit_callbacks
):
    parent = generated(make_persona(), django_capture_on_commit_callbacks)
    Content.objects.filter(pk=parent.pk).update(
        request={**parent.request, "model": "gone"}
    )
    parent.refresh_from_db()
    assert refused(content=parent, mask=mask_file(), prompt="x", strength=0.8) == (
        "The model gone is no longer configured in this studio, so its outputs "
        "cannot be inpainted."
    )

"""Hostile numbers and text through the admin forms and the command line.

"Generate…" and "X/Y/Z grid…" (the persona changelist's intermediate
pages), the persona form's consistency settings and ``studio_generate`` get
out-of-range and non-finite numbers, huge prompts, NUL bytes and other control
characters, and sizes or counts that would exhaust memory or time. Each must be
refused with a clear message where the person acted (the form shown again with
its error, HTTP 200; a one-line command error), storing nothing and enqueueing
nothing: the worker's queue stays empty.
"""

from __future__ import annotations

import html
import io
import uuid

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse

from generation import services
from generation.models import Content, ContentStatus
from generation.queues import get_queue
from personas.models import Persona
from tests.reliability.admin_forms import change_form_data, page_errors
from tests.reliability.conftest import studio_state
from tests.workers import make_persona, use_queue

pytestmark = pytest.mark.reliability

CHANGELIST = reverse("admin:personas_persona_changelist")
HUGE_PROMPT = "a persona, " * 100_000  # 1.1 MB: under Django's 5 MB body limit
ESCAPES = "a portrait \x1b[2J\x1b[31m of \x07 someone \x08\x7f"
NUL = "a portrait\x00 of someone"
BIDI = "a portrait \u202e of someone"


@pytest.fixture
def persona_on_own_queue(studio_settings, transactional_db) -> Persona:
    """A persona with a reference whose generations go to a queue of this test's
    own, so that "nothing was enqueued" means this test."""
    use_queue(studio_settings, f"hostile-{uuid.uuid4().hex[:8]}")
    return make_persona(slug="target")


@pytest.fixture
def staff_client(client: Client, superuser) -> Client:
    client.force_login(superuser)
    return client


def queued_jobs() -> int:
    return get_queue(settings.STUDIO_DEFAULT_QUEUE).count


def action_page(client: Client, persona: Persona, action: str, fields: dict[str, str]):
    return client.post(
        CHANGELIST,
        {
            "action": action,
            "_selected_action": [str(persona.pk)],
            "post": "yes",
            **fields,
        },
    )


GENERATE_DEFAULTS = {
    "prompt": "a portrait",
    "negative_prompt": "",
    "count": "1",
    "method": "",
    "strength": "",
    "seed": "",
}
HOSTILE_GENERATE = [
    ("prompt", HUGE_PROMPT, "a 1.1 MB prompt"),
    ("prompt", NUL, "a NUL byte in the prompt"),
    ("prompt", ESCAPES, "terminal escapes and control characters in the prompt"),
    ("prompt", BIDI, "a right-to-left override in the prompt"),
    ("prompt", "", "an empty prompt"),
    ("negative_prompt", HUGE_PROMPT, "a 1.1 MB negative prompt"),
    ("negative_prompt", NUL, "a NUL byte in the negative prompt"),
    ("count", "1000000000", "a billion images"),
    ("count", "0", "zero images"),
    ("count", "-5", "a negative count"),
    ("count", "1e3", "a count in exponent notation"),
    ("strength", "nan", "a NaN strength"),
    ("strength", "inf", "an infinite strength"),
    ("strength", "-0.1", "a strength below 0"),
    ("strength", "1.0000001", "a strength above 1"),
    ("strength", "1e309", "a strength that overflows a double"),
    ("seed", "-1", "a negative seed"),
    ("seed", str(2**64), "a seed past 64 bits"),
    ("seed", "9" * 5000, "a 5000-digit seed"),
    ("method", "exec", "an unknown method"),
]
HOSTILE_GRID = [
    ("x_values", "nan, 0.5", "NaN among the strengths"),
    ("x_values", "inf", "an infinite strength"),
    ("x_values", "1e309", "a strength that overflows a double"),
    ("x_values", "-0.5, 0.5", "a negative strength"),
    ("x_values", ", ".join(["0.5"] * 10_000), "ten thousand strengths"),
    ("x_values", "0.5;rm -rf /", "shell text among the strengths"),
    ("x_values", "0.5, 0.5", "a strength given twice"),
    ("x_parameter", "__class__", "an unknown axis parameter"),
    ("y_values", "4, 1000000000", "a billion steps on the Y axis"),
    ("y_values", "7.5", "fractional steps on the Y axis"),
    ("prompt", HUGE_PROMPT, "a 1.1 MB prompt"),
    ("prompt", ESCAPES, "control characters in the prompt"),
    ("seed", str(2**64), "a seed past 64 bits"),
]
HOSTILE_PERSONA = [
    ("width", str(2**20), "a width of a million pixels"),
    ("height", "65536", "a height past the maximum"),
    ("width", "-512", "a negative width"),
    ("width", "513", "a width that is not a multiple of 8"),
    ("steps", "1000000000", "a billion steps"),
    ("steps", "0", "zero steps"),
    ("img2img_strength", "nan", "a NaN strength"),
    ("img2img_strength", "2", "a strength above 1"),
    ("guidance_scale", "inf", "an infinite guidance scale"),
    ("guidance_scale", "1e308", "a huge guidance scale"),
    ("ip_adapter_scale", "-1", "a negative IP-Adapter scale"),
    ("lora_scale", "nan", "a NaN LoRA scale"),
    ("seed", "-1", "a negative fixed seed"),
    ("seed", str(2**64), "a fixed seed past 64 bits"),
    ("appearance", HUGE_PROMPT, "a 1.1 MB appearance (it anchors every prompt)"),
    ("appearance", ESCAPES, "control characters in the appearance"),
    ("negative_prompt", NUL, "a NUL byte in the negative prompt"),
    ("name", NUL, "a NUL byte in the name"),
]


def assert_form_refused(response, field: str) -> str:
    """The intermediate page again, HTTP 200, with an error on ``field``."""
    page = response.content.decode()
    assert response.status_code == 200, (response.status_code, page[-1500:])
    assert "Traceback" not in page
    form = response.context["form"]
    assert field in form.errors, (field, form.errors)
    shown = html.unescape(page)
    assert all(message in shown for message in form.errors[field])
    return " ".join(form.errors[field])


@pytest.mark.parametrize(
    "field, value, description", HOSTILE_GENERATE, ids=[c[2] for c in HOSTILE_GENERATE]
)
def test_generate_page_refuses_hostile_parameter(
    staff_client, persona_on_own_queue, media_root, field, value, description, figures
):
    before = studio_state()

    response = action_page(
        staff_client,
        persona_on_own_queue,
        "generate",
        {**GENERATE_DEFAULTS, field: value},
    )

    message = assert_form_refused(response, field)
    assert studio_state() == before
    assert queued_jobs() == 0
    figures.record(group="admin Generate… page", item=description, outcome=message)


@pytest.mark.parametrize(
    "field, value, description", HOSTILE_GRID, ids=[c[2] for c in HOSTILE_GRID]
)
def test_grid_page_refuses_hostile_parameter(
    staff_client, persona_on_own_queue, media_root, field, value, description, figures
):
    before = studio_state()

    response = action_page(
        staff_client,
        persona_on_own_queue,
        "grid",
        {
            "prompt": "a portrait",
            "x_parameter": "strength",
            "x_values": "0.3, 0.7",
            "y_parameter": "steps",
            "y_values": "4",
            "seed": "",
            field: value,
        },
    )

    message = assert_form_refused(response, field)
    assert studio_state() == before
    assert queued_jobs() == 0
    figures.record(group="admin X/Y/Z grid… page", item=description, outcome=message)


@pytest.mark.parametrize(
    "field, value, description", HOSTILE_PERSONA, ids=[c[2] for c in HOSTILE_PERSONA]
)
def test_persona_form_refuses_hostile_setting(
    staff_client, persona_on_own_queue, media_root, field, value, description, figures
):
    url = reverse("admin:personas_persona_change", args=[persona_on_own_queue.pk])
    data = change_form_data(staff_client.get(url))
    data.update({field: value, "seed_policy": "fixed" if field == "seed" else "random"})
    before = studio_state()

    response = staff_client.post(url, {**data, "_save": "Save"})

    page = response.content.decode()
    assert response.status_code == 200, (response.status_code, page[-1500:])
    assert "Traceback" not in page
    errors = response.context["adminform"].form.errors
    assert field in errors, (field, page_errors(response))
    assert studio_state() == before
    figures.record(
        group="admin persona_on_own_queue form",
        item=description,
        outcome=" ".join(errors[field]),
    )


def test_a_request_body_past_djangos_limit_is_a_400_not_a_500(
    staff_client, persona_on_own_queue, media_root, figures
):
    before = studio_state()

    response = action_page(
        staff_client,
        persona_on_own_queue,
        "generate",
        {**GENERATE_DEFAULTS, "prompt": "x" * 6_000_000},
    )

    assert response.status_code == 400
    assert studio_state() == before
    assert queued_jobs() == 0
    figures.record(
        group="admin Generate… page",
        item="a 6 MB prompt (past DATA_UPLOAD_MAX_MEMORY_SIZE)",
        outcome="HTTP 400 from Django's request size guard",
    )


def test_a_sound_generate_request_is_queued(staff_client, persona_on_own_queue):
    """The control case: the same page with sound values does enqueue."""
    response = action_page(
        staff_client, persona_on_own_queue, "generate", GENERATE_DEFAULTS
    )

    assert response.status_code == 302
    assert persona_on_own_queue.contents.count() == 1
    assert queued_jobs() == 1


HOSTILE_COMMAND = [
    (["--prompt", HUGE_PROMPT], "a 1.1 MB prompt"),
    (["--prompt", NUL], "a NUL byte in the prompt"),
    (["--prompt", ESCAPES], "control characters in the prompt"),
    (["--negative-prompt", NUL], "a NUL byte in the negative prompt"),
    (["--strength", "nan"], "a NaN strength"),
    (["--strength", "-inf"], "a negative infinite strength"),
    (["--strength", "1.5"], "a strength above 1"),
    (["--seed", "-1"], "a negative seed"),
    (["--seed", str(2**64)], "a seed past 64 bits"),
    (["--count", "1000000000"], "a billion images"),
    (["--count", "0"], "zero images"),
    (["--count", "-3"], "a negative count"),
    (["--method", "exec"], "an unknown method"),
    (["--persona", "target\x1b[31m"], "control characters in the persona slug"),
]


@pytest.mark.parametrize(
    "arguments, description", HOSTILE_COMMAND, ids=[c[1] for c in HOSTILE_COMMAND]
)
def test_studio_generate_refuses_hostile_arguments(
    persona_on_own_queue, media_root, arguments, description, figures
):
    options = {"--persona": "target", "--prompt": "a portrait"}
    options.update(zip(arguments[::2], arguments[1::2], strict=True))
    argv = [part for pair in options.items() for part in pair]
    before = studio_state()
    out = io.StringIO()

    with pytest.raises(CommandError) as refused:
        call_command("studio_generate", *argv, stdout=out, stderr=out)

    message = str(refused.value)
    assert message and "Traceback" not in message + out.getvalue()
    assert message.isprintable(), repr(message)
    assert len(message) < 1000
    assert "queued" not in out.getvalue()
    assert studio_state() == before
    assert queued_jobs() == 0
    figures.record(group="studio_generate", item=description, outcome=message)


HOSTILE_NOTES = [
    (NUL, "a NUL byte in the note"),
    (ESCAPES, "control characters in the note"),
    (HUGE_PROMPT, "a 1.1 MB note"),
]


@pytest.mark.parametrize(
    "note, description", HOSTILE_NOTES, ids=[c[1] for c in HOSTILE_NOTES]
)
def test_gallery_reject_refuses_a_hostile_note(
    staff_client, persona_on_own_queue, note, description, figures
):
    content = services.content_enqueue(
        persona=persona_on_own_queue, prompt="a portrait"
    )
    Content.objects.filter(pk=content.pk).update(status=ContentStatus.SUCCEEDED)
    before = studio_state()

    response = staff_client.post(
        reverse("gallery:content-action", args=[content.pk, "reject"]),
        {"note": note},
        follow=True,
    )

    assert response.status_code == 200
    shown = [str(message) for message in response.context["messages"]]
    assert len(shown) == 1 and "characters" in shown[0], shown
    assert studio_state() == before
    figures.record(
        group="gallery Reject with a note", item=description, outcome=shown[0]
    )

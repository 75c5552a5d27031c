"""The generate page of a persona (gallery:generate): every per-run override,
the persona's values as defaults, the overrides reaching the rows' requests, the
plan check's refusals on the page, and the batch page it opens."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from generation.models import Batch, Content
from personas.models import ControlNetUnit, Persona
from personas.services import (
    control_unit_save,
    persona_create,
    persona_set_lora,
    reference_image_add,
)
from tests.generation.test_plan import lora_file
from tests.images import encode, halves

VIEW = "generation.view_content"
GENERATE = "generation.generate_content"


@pytest.fixture
def carla(db, settings, tiny_model_dir: Path) -> Persona:
    """A persona with two references, a canny unit and a LoRA that fits the
    tiny model, which is installed (so the whole plan check runs)."""
    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tiny_model_dir)
    gallery_persona = persona_create(
        name="Carla",
        appearance="a card",
        method="auto",
        width=64,
        height=64,
        steps=12,
        guidance_scale=6.0,
    )
    for index, size in enumerate(((64, 64), (48, 64))):
        reference_image_add(
            persona=gallery_persona,
            file=SimpleUploadedFile(f"ref{index}.png", encode(halves(size), "PNG")),
            is_primary=index == 0,
        )
    control_unit_save(
        unit=ControlNetUnit(persona=gallery_persona, control_type="canny")
    )
    persona_set_lora(
        persona=gallery_persona,
        file=SimpleUploadedFile("me.safetensors", lora_file(32)),
    )
    return gallery_persona


@pytest.fixture
def staff(make_user) -> Client:
    client = Client()
    client.force_login(make_user(VIEW, GENERATE))
    return client


def page_data(response) -> dict[str, object]:
    """What a browser posts for the form as rendered (its initial values)."""
    form = response.context["form"]
    data: dict[str, object] = {}
    for name in form.fields:
        value = form[name].value()
        if value is None or value is False or value == []:
            continue
        data[name] = "on" if value is True else value
    return data


def test_the_page_starts_at_the_personas_settings(carla, staff):
    response = staff.get(reverse("gallery:generate", args=[carla.slug]))
    assert response.status_code == 200
    form = response.context["form"]
    (unit,) = carla.control_units.all()
    assert form["steps"].value() == 12
    assert form["guidance_scale"].value() == 6.0
    assert form["width"].value() == 64
    assert form["method"].value() == "auto"
    assert form["lora_scale"].value() == carla.lora_scale
    assert form[f"unit_{unit.pk}_enabled"].value() is True
    assert form[f"unit_{unit.pk}_scale"].value() == unit.conditioning_scale
    page = response.content.decode()
    assert 'name="scheduler"' in page
    assert "Canny edges unit: scale" in page


def test_every_override_reaches_the_rows_request(carla, staff):
    url = reverse("gallery:generate", args=[carla.slug])
    (unit,) = carla.control_units.all()
    second = carla.references.order_by("pk").last()
    data = page_data(staff.get(url))
    data.update(
        prompt="on a beach",
        negative_prompt="blurry",
        count="2",
        method="hybrid",
        strength="0.5",
        width="128",
        height="96",
        steps="20",
        guidance_scale="4.5",
        scheduler="EulerDiscreteScheduler",
        seed_policy="fixed",
        seed="42",
        ip_adapter_scale="0.3",
        ip_adapter_references=[str(second.pk)],
        lora_scale="0.4",
        **{
            f"unit_{unit.pk}_scale": "0.6",
            f"unit_{unit.pk}_start": "0.1",
            f"unit_{unit.pk}_end": "0.8",
        },
    )
    response = staff.post(url, data, follow=True)
    batch = Batch.objects.get()
    assert response.redirect_chain[-1][0] == reverse("gallery:batch", args=[batch.pk])
    rows = list(Content.objects.order_by("pk"))
    assert [row.seed for row in rows] == [42, 43]
    request = rows[0].request
    assert request["prompt"].endswith("on a beach")
    assert request["negative_prompt"].endswith("blurry")
    assert request["method"] == "hybrid"
    assert (request["width"], request["height"]) == (128, 96)
    assert (request["steps"], request["guidance_scale"]) == (20, 4.5)
    assert request["strength"] == 0.5
    assert request["scheduler"] == "EulerDiscreteScheduler"
    assert request["lora"]["scale"] == 0.4
    ((control),) = request["control_units"]
    assert (
        control["conditioning_scale"],
        control["guidance_start"],
        control["guidance_end"],
    ) == (0.6, 0.1, 0.8)
    # hybrid takes no IP-Adapter settings from the persona (parameters.py)
    assert request["ip_adapter"] is None
    page = response.content.decode()
    assert f'href="{reverse("gallery:batch", args=[batch.pk])}"' in page
    assert all(f'id="content-{row.pk}"' in page for row in rows)
    assert "data-progress" in page


def test_ip_adapter_overrides_go_with_the_automatic_method(carla, staff):
    url = reverse("gallery:generate", args=[carla.slug])
    second = carla.references.order_by("pk").last()
    data = page_data(staff.get(url))
    data.update(
        prompt="a portrait", ip_adapter_scale="0.3", ip_adapter_references=[second.pk]
    )
    staff.post(url, data)
    request = Content.objects.get().request
    assert request["ip_adapter"]["scale"] == 0.3
    assert request["ip_adapter"]["reference_indexes"] == [1]


def test_a_unit_turned_off_does_not_run(carla, staff):
    url = reverse("gallery:generate", args=[carla.slug])
    (unit,) = carla.control_units.all()
    data = page_data(staff.get(url))
    data.update(prompt="a portrait", method="img2img")
    data.pop(f"unit_{unit.pk}_enabled")
    staff.post(url, data)
    assert Content.objects.get().request["control_units"] == []
    data.update(method="controlnet")
    response = staff.post(url, data, follow=True)
    assert "needs an enabled ControlNet unit" in response.content.decode()
    assert Content.objects.count() == 1


def test_a_run_sure_to_fail_is_refused_on_the_page(carla, staff):
    url = reverse("gallery:generate", args=[carla.slug])
    data = page_data(staff.get(url))
    data.update(prompt="a portrait", method="img2img", strength="0.02")
    response = staff.post(url, data)
    assert response.status_code == 200  # the page again, with the refusal
    assert "raise the steps to 50 or raise the strength to 0.09" in (
        response.content.decode()
    )
    assert Content.objects.count() == 0


def test_a_window_that_ends_before_it_starts_is_a_field_error(carla, staff):
    url = reverse("gallery:generate", args=[carla.slug])
    (unit,) = carla.control_units.all()
    data = page_data(staff.get(url))
    data.update(
        prompt="a portrait",
        **{f"unit_{unit.pk}_start": "0.7", f"unit_{unit.pk}_end": "0.2"},
    )
    response = staff.post(url, data)
    assert "The window must end after it starts." in response.content.decode()
    assert Content.objects.count() == 0


def test_a_random_seed_policy_ignores_the_personas_fixed_seed(carla, staff):
    carla.seed_policy, carla.seed = "fixed", 7
    carla.save()
    url = reverse("gallery:generate", args=[carla.slug])
    data = page_data(staff.get(url))
    data.update(prompt="a portrait", count="3", seed_policy="random", seed="7")
    staff.post(url, data)
    seeds = list(Content.objects.values_list("seed", flat=True))
    assert len(set(seeds)) == 3 and seeds != [7, 8, 9]


def test_the_page_needs_the_generate_permission(carla, make_user):
    client = Client()
    client.force_login(make_user(VIEW))
    url = reverse("gallery:generate", args=[carla.slug])
    assert client.get(url).status_code == 403
    assert client.post(url, {"prompt": "x"}).status_code == 403
    assert Content.objects.count() == 0


def test_the_page_is_linked_from_the_gallery_and_the_admin(carla, admin_client):
    url = reverse("gallery:generate", args=[carla.slug])
    gallery = admin_client.get(reverse("gallery:persona", args=[carla.slug]))
    assert f'href="{url}"' in gallery.content.decode()
    change = admin_client.get(reverse("admin:personas_persona_change", args=[carla.pk]))
    assert f'href="{url}"' in change.content.decode()
    action = admin_client.post(
        reverse("admin:personas_persona_changelist"),
        {"action": "generate", "_selected_action": [carla.pk]},
    )
    assert f'href="{url}"' in action.content.decode()


def test_the_admin_action_message_links_to_the_batch(carla, admin_client):
    response = admin_client.post(
        reverse("admin:personas_persona_changelist"),
        {
            "action": "generate",
            "_selected_action": [carla.pk],
            "post": "yes",
            "prompt": "a portrait",
            "count": "1",
        },
        follow=True,
    )
    batch = Batch.objects.get()
    assert f'href="{reverse("gallery:batch", args=[batch.pk])}"' in (
        response.content.decode()
    )

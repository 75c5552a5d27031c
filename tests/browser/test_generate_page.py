"""The generate page in a real browser: from the persona's gallery to its
generate page, change overrides (steps, size, a ControlNet unit off), submit,
and watch the new content finish on the batch page without a reload. A real
worker runs the tiny model behind the live server."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile

from generation.models import Content, ContentStatus
from personas.models import ControlNetUnit
from personas.services import control_unit_save, persona_create, reference_image_add
from tests.images import encode, halves
from tests.workers import use_queue

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

GENERATION_TIMEOUT_MILLISECONDS = 180_000
PASSWORD = "a-long-test-password"
QUEUE = "generate-browser"


def test_the_generate_page_with_overrides_in_the_browser(
    page, screenshot, start_worker, studio_settings
):
    use_queue(studio_settings, QUEUE)
    User.objects.create_superuser("maker", "maker@example.com", PASSWORD)
    persona = persona_create(
        name="Gina", appearance="a card", method="auto", width=64, height=64, steps=4
    )
    reference_image_add(
        persona=persona,
        file=SimpleUploadedFile("ref.png", encode(halves((64, 64)), "PNG")),
        is_primary=True,
    )
    unit = control_unit_save(unit=ControlNetUnit(persona=persona, control_type="canny"))

    page.goto(f"/gallery/personas/{persona.slug}/")
    page.fill("#id_username", "maker")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.click(f"a[href='/gallery/personas/{persona.slug}/generate/']")
    page.wait_for_url(f"**/gallery/personas/{persona.slug}/generate/")
    assert page.input_value("#id_steps") == "4"
    page.fill("#id_prompt", "a portrait on a beach")
    page.fill("#id_steps", "6")
    page.fill("#id_width", "96")
    page.uncheck(f"#id_unit_{unit.pk}_enabled")
    screenshot(page, "10-generate-page")
    page.click("#generate-form input[type=submit]")
    page.wait_for_url("**/gallery/batches/*/")
    content = Content.objects.get(persona=persona)
    assert (content.request["steps"], content.request["width"]) == (6, 96)
    assert content.request["control_units"] == []
    assert page.locator(".messagelist a[href*='/gallery/batches/']").count() == 1

    card = f"#content-{content.pk}"
    page.wait_for_selector(f"{card} [data-progress]")
    page.evaluate("window.neverReloaded = true")
    start_worker(QUEUE)
    page.wait_for_selector(
        f"{card} .gallery-thumb img:not([data-preview])",
        timeout=GENERATION_TIMEOUT_MILLISECONDS,
    )
    assert page.evaluate("window.neverReloaded") is True
    content.refresh_from_db()
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    screenshot(page, "11-batch-page")

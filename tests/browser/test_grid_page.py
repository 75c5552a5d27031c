"""An X/Y grid in a real browser: from a hybrid persona's gallery to its grid
page, a strength × guidance grid (2 × 2), its tiles run by a real worker on the
tiny model and scored by a real CPU worker, the labelled contact sheet with
each tile's scores and the method it ran (hybrid: a strength axis does not
turn it into plain img2img), then "Use this value" on a Y value, and the
persona changed (with its history entry)."""

from __future__ import annotations

import re

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User

from generation.models import Content, ContentStatus
from personas.models import ControlNetUnit
from personas.services import control_unit_save
from tests.workers import make_persona, use_queue

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

GENERATION_TIMEOUT_MILLISECONDS = 240_000
PASSWORD = "a-long-test-password"
QUEUE = "grid-browser"
CPU_QUEUE = "grid-browser-cpu"


def test_an_xy_grid_and_use_this_value_in_the_browser(
    page, screenshot, start_worker, studio_settings
):
    studio_settings.STUDIO_CPU_QUEUE = CPU_QUEUE
    use_queue(studio_settings, QUEUE)
    User.objects.create_superuser("gridder", "gridder@example.com", PASSWORD)
    persona = make_persona(slug="hana", method="hybrid", guidance_scale=7.5)
    control_unit_save(unit=ControlNetUnit(persona=persona, control_type="canny"))

    page.goto(f"/gallery/personas/{persona.slug}/")
    page.fill("#id_username", "gridder")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.click(f"a[href='/gallery/personas/{persona.slug}/grid/']")
    page.wait_for_url(f"**/gallery/personas/{persona.slug}/grid/")
    page.fill("#id_prompt", "a portrait in a garden")
    assert page.input_value("#id_x_parameter") == "strength"
    page.fill("#id_x_values", "0.5, 0.9")
    page.select_option("#id_y_parameter", "guidance_scale")
    page.fill("#id_y_values", "3, 7")
    screenshot(page, "12-grid-form")
    page.click("#grid-form input[type=submit]")
    page.wait_for_url(re.compile(r"/gallery/grids/\d+/$"))
    grid = persona.batches.get()
    assert page.url.endswith(f"/gallery/grids/{grid.pk}/")
    contents = list(Content.objects.filter(batch=grid))
    assert {content.request["method"] for content in contents} == {"hybrid"}

    start_worker.spawn(CPU_QUEUE, STUDIO_CPU_QUEUE=CPU_QUEUE)
    start_worker(QUEUE, STUDIO_CPU_QUEUE=CPU_QUEUE)
    # Each tile reloads the sheet when it finishes; done when all four show
    # their output and nothing is running or scoring.
    page.wait_for_function(
        "document.querySelectorAll('.gallery-grid-tile img').length === 4"
        " && !document.querySelector('[data-progress]')",
        timeout=GENERATION_TIMEOUT_MILLISECONDS,
    )
    for content in contents:
        content.refresh_from_db()
        assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert page.locator("thead .gallery-grid-value").all_text_contents() == [
        "img2img strength 0.5",
        "img2img strength 0.9",
    ]
    assert page.locator("tbody th .gallery-grid-value").all_text_contents() == [
        "guidance scale 3",
        "guidance scale 7",
    ]
    assert page.locator("[data-method]").all_inner_texts() == (
        ["img2img + ControlNet"] * 4
    )
    for score in page.locator("[data-score]").all_inner_texts():
        assert re.fullmatch(r"\d\.\d{3}", score), score
    for identity in page.locator("[data-identity]").all_inner_texts():
        assert identity.strip() and "Scoring" not in identity, identity
    screenshot(page, "13-grid-contact-sheet")

    page.locator("tbody th", has_text="guidance scale 3").locator(
        "input[value='Use this value']"
    ).click()
    page.wait_for_selector(".messagelist .success")
    assert "Hana now uses guidance scale 3." in page.inner_text(".messagelist")
    persona.refresh_from_db()
    assert persona.guidance_scale == 3.0
    assert (
        "current" in page.locator("tbody th", has_text="guidance scale 3").inner_text()
    )
    history = [
        entry.get_change_message()
        for entry in LogEntry.objects.filter(object_id=str(persona.pk))
    ]
    assert history == [
        f"Changed guidance scale to 3 (a value of the Y axis of grid #{grid.pk}).",
        f"Queued Grid #{grid.pk} of Hana.",
    ]
    screenshot(page, "14-grid-value-chosen")

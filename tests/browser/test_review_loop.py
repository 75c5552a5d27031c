"""The whole review loop in a real browser, as staff do it: log in, create a
persona with a reference in the admin, run "Generate…", watch the progress bar
reach the end in the gallery without a reload, drag the compare slider, approve
with the keyboard, run a one-axis strength grid from the admin (what the
strength sweep was) and pick a strength from its contact sheet (also reached
from the admin), and back out of a bulk regenerate's
confirmation. A real worker process runs the tiny model behind the live server."""

from __future__ import annotations

import re
import time

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from generation.models import Content, ContentStatus, ReviewState
from personas.models import Persona
from tests.images import encode, halves
from tests.workers import use_queue, wait_finished, wait_scored

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

GENERATION_TIMEOUT_MILLISECONDS = 180_000
PASSWORD = "a-long-test-password"
QUEUE = "gallery-browser"


def _log_in(page, username: str) -> None:
    page.goto("/gallery/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/gallery/")


def _create_persona_in_the_admin(page, screenshot) -> Persona:
    page.goto("/admin/personas/persona/add/")
    page.locator("#id_name").press_sequentially("Ada")
    expect(page.locator("#id_slug")).to_have_value("ada")  # prepopulated
    page.fill("#id_appearance", "a red and blue test card")
    page.select_option("#id_method", "img2img")
    # Small images on the tiny model, with enough steps to watch them run.
    page.fill("#id_width", "128")
    page.fill("#id_height", "128")
    page.fill("#id_steps", "150")
    page.set_input_files(
        "#id_references-0-image",
        files=[
            {
                "name": "ada.png",
                "mimeType": "image/png",
                "buffer": encode(halves((64, 64)), "PNG"),
            }
        ],
    )
    page.check("#id_references-0-primary")
    screenshot(page, "01-admin-persona-add")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")
    return Persona.objects.get(slug="ada")


def _run_persona_action(
    page, persona: Persona, action: str, fields: dict, on_form=None
) -> None:
    """Select the persona in the admin changelist, run ``action``, fill its
    intermediate page (``on_form`` runs before it is submitted) and submit."""
    page.goto("/admin/personas/persona/")
    page.check(f"input[name=_selected_action][value='{persona.pk}']")
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")
    for name, value in fields.items():
        page.fill(f"#id_{name}", value)
    if on_form:
        on_form()
    page.click("input[type=submit].default")
    page.wait_for_selector(".messagelist .success")


def test_review_loop_in_the_browser(page, screenshot, start_worker, studio_settings):
    use_queue(studio_settings, QUEUE)
    User.objects.create_superuser("reviewer", "reviewer@example.com", PASSWORD)
    _log_in(page, "reviewer")
    screenshot(page, "00-gallery-empty")
    persona = _create_persona_in_the_admin(page, screenshot)

    # Generate… from the admin, then watch it in the gallery.
    _run_persona_action(
        page,
        persona,
        "generate",
        {"prompt": "a portrait in the park"},
        on_form=lambda: screenshot(page, "02-admin-generate-form"),
    )
    content = Content.objects.get(persona=persona)

    # The page shows it queued; only then does a worker start to run it.
    page.goto(f"/gallery/personas/{persona.slug}/")
    card = f"#content-{content.pk}"
    page.wait_for_selector(f"{card} [data-progress][data-status=queued]")
    page.evaluate("window.galleryNeverReloaded = true")
    start_worker(QUEUE)
    start_worker.spawn(studio_settings.STUDIO_CPU_QUEUE)  # scores the output
    bar = page.locator(f"{card} [role=progressbar]")
    # The output's thumbnail (a live preview may stand in its place meanwhile).
    output = f"{card} .gallery-thumb img[alt='Output of content #{content.pk}']"
    thumbnail = page.locator(output)
    seen: set[int] = set()
    deadline = time.monotonic() + GENERATION_TIMEOUT_MILLISECONDS / 1000
    # Until the card shows the output (its scores may still be landing).
    while not thumbnail.count():
        assert time.monotonic() < deadline, f"the card never finished: {seen}"
        value = bar.get_attribute("aria-valuenow") if bar.count() else None
        if value is not None and 0 < int(value) < 100 and not seen - {0, 100}:
            screenshot(page, "03-gallery-running")
        if value is not None:
            seen.add(int(value))
        content.refresh_from_db()
        assert content.status in (
            ContentStatus.QUEUED,
            ContentStatus.RUNNING,
            ContentStatus.SUCCEEDED,
        ), content.error_detail
        page.wait_for_timeout(100)
    page.wait_for_selector(output)
    assert page.evaluate("window.galleryNeverReloaded") is True
    assert any(0 < value < 100 for value in seen), f"no progress seen: {seen}"
    content.refresh_from_db()
    assert content.status == ContentStatus.SUCCEEDED
    screenshot(page, "04-gallery-persona")

    # The content page: drag the compare slider, approve with the keyboard.
    page.click(f"{card} .gallery-card-title a")
    page.wait_for_url(f"**/gallery/content/{content.pk}/")
    slider = page.locator("[data-compare]")
    box = slider.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(
        box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5, steps=8
    )
    page.mouse.up()
    position = slider.evaluate("node => node.style.getPropertyValue('--position')")
    assert abs(float(position.rstrip("%")) - 20) <= 2, position
    handle = page.locator("[data-compare-handle]")
    assert abs(int(handle.get_attribute("aria-valuenow")) - 20) <= 2
    screenshot(page, "05-content-compare")
    page.keyboard.press("a")
    page.wait_for_selector("#review-state:has-text('Approved')")
    content.refresh_from_db()
    assert content.review_state == ReviewState.APPROVED
    screenshot(page, "06-content-approved")

    # A strength grid from the admin, compared on its contact sheet.
    _run_persona_action(
        page,
        persona,
        "grid",
        {
            "prompt": "a portrait in the park",
            "x_values": "0.3, 0.6, 0.9",
        },
    )
    sweep = persona.batches.get(kind="grid")
    page.goto(f"/gallery/personas/{persona.slug}/")
    page.click(f"a[href='/gallery/grids/{sweep.pk}/']")
    page.wait_for_url(f"**/gallery/grids/{sweep.pk}/")
    # Until each tile shows its output (its scores may still be landing).
    page.wait_for_function(
        "document.querySelectorAll("
        "'.gallery-grid-tile img:not([data-preview])').length === 3",
        timeout=GENERATION_TIMEOUT_MILLISECONDS,
    )
    labels = page.locator("thead .gallery-grid-value").all_text_contents()
    assert labels == [
        "img2img strength 0.3",
        "img2img strength 0.6",
        "img2img strength 0.9",
    ]
    assert "Reference" in page.locator(".gallery-grid-reference").inner_text()
    screenshot(page, "07-grid-contact-sheet")
    page.locator("thead th", has_text="img2img strength 0.6").locator(
        "input[value='Use this value']"
    ).click()
    page.wait_for_selector(".messagelist .success")
    persona.refresh_from_db()
    assert persona.img2img_strength == 0.6
    assert (
        "current"
        in page.locator("thead th", has_text="img2img strength 0.6").text_content()
    )
    screenshot(page, "08-grid-strength-chosen")

    # Reject one grid output with a note typed into the prompt; it moves on.
    # (Once scored: a page whose scores land meanwhile reloads itself.)
    for tile in sweep.contents.all():
        wait_scored(wait_finished(tile))
    rejected = min(sweep.contents.all(), key=lambda row: row.pk)
    page.goto(f"/gallery/content/{rejected.pk}/")
    page.once("dialog", lambda dialog: dialog.accept("too far from the reference"))
    page.keyboard.press("r")
    # Rejecting moves on to the next output waiting for review.
    page.wait_for_url(re.compile(rf"/gallery/content/(?!{rejected.pk}/)\d+/"))
    rejected.refresh_from_db()
    assert rejected.review_state == ReviewState.REJECTED
    assert rejected.review_note == "too far from the reference"

    page.goto("/gallery/")
    screenshot(page, "09-gallery-index")

    # The admin's batch page links to the one contact sheet.
    page.goto(f"/admin/generation/batch/{sweep.pk}/change/")
    page.click("a:has-text('Contact sheet')")
    page.wait_for_url(f"**/gallery/grids/{sweep.pk}/")
    # The strength sweeps' old address leads to the same sheet.
    page.goto(f"/gallery/sweeps/{sweep.pk}/")
    page.wait_for_url(f"**/gallery/grids/{sweep.pk}/")

    # The content's admin page, from templates; a bulk regenerate asks first,
    # and going back queues nothing.
    page.goto(f"/admin/generation/content/{content.pk}/change/")
    expect(page.locator(".studio-panel img")).to_have_count(2)
    screenshot(page, "10-admin-content")
    page.goto("/admin/generation/content/")
    for row in (content, rejected):
        page.check(f"input[name=_selected_action][value='{row.pk}']")
    page.select_option("select[name=action]", "regenerate")
    page.click("button[name=index]")
    expect(page.locator("#content")).to_contain_text(
        "for each of the 2 selected contents. Are you sure?"
    )
    screenshot(page, "11-admin-regenerate-confirmation")
    page.click("a.cancel-link")
    page.wait_for_url("**/admin/generation/content/")
    assert not Content.objects.filter(regenerated_from__in=[content, rejected]).exists()

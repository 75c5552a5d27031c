"""Manual inpainting in a real browser: on a content's page staff paint a mask
on the canvas over the output (brush size, eraser, undo, clear), type a prompt
and get a child content, which a real worker process inpaints on the tiny
model; both pages show the lineage. An empty mask is refused with the
service's message before anything is queued."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.files.storage import default_storage
from PIL import Image
from playwright.sync_api import expect

from generation import services
from generation.models import Content, ContentStatus
from generation.parameters import GenerationOverrides
from tests.workers import make_persona, use_queue, wait_finished

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

PASSWORD = "a-long-test-password"
QUEUE = "inpaint-browser"
SIDE = 64


def _log_in(page, username: str) -> None:
    page.goto("/gallery/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/gallery/")


def _stroke(page, canvas, start, end) -> None:
    """Drag the mouse over the canvas from ``start`` to ``end`` (fractions)."""
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(
        box["x"] + box["width"] * start[0], box["y"] + box["height"] * start[1]
    )
    page.mouse.down()
    page.mouse.move(
        box["x"] + box["width"] * end[0], box["y"] + box["height"] * end[1], steps=10
    )
    page.mouse.up()


def _painted(canvas, x: int, y: int) -> bool:
    """Whether the canvas pixel (in the output's pixels) holds paint."""
    return canvas.evaluate(
        "(node, [x, y]) => node.getContext('2d').getImageData(x, y, 1, 1).data[3] > 0",
        [x, y],
    )


def test_paint_a_mask_and_get_a_child_content(
    page, screenshot, start_worker, studio_settings
):
    use_queue(studio_settings, QUEUE)
    start_worker(QUEUE)
    parent = wait_finished(
        services.content_enqueue(
            persona=make_persona(),
            prompt="a portrait",
            overrides=GenerationOverrides(method="text", seed=21),
        )
    )
    assert parent.status == ContentStatus.SUCCEEDED, parent.error_detail
    User.objects.create_superuser("painter", "painter@example.com", PASSWORD)
    _log_in(page, "painter")
    page.goto(f"/gallery/content/{parent.pk}/")
    canvas = page.locator("[data-inpaint-canvas]")
    assert canvas.evaluate("node => [node.width, node.height]") == [SIDE, SIDE]

    # An empty mask is refused with what to fix; nothing is queued.
    page.fill("#id_prompt", "a red hat")
    page.click("[data-inpaint-form] button[type=submit]")
    expect(page.locator(".messagelist .error")).to_contain_text(
        "The mask is empty: paint the region to redraw."
    )
    assert not Content.objects.filter(inpainted_from=parent).exists()

    canvas = page.locator("[data-inpaint-canvas]")
    page.locator("[data-inpaint-size]").evaluate("node => { node.value = '6'; }")
    _stroke(page, canvas, (0.3, 0.3), (0.6, 0.6))
    assert _painted(canvas, 29, 29)
    # A second stroke, then undo: only the first is left.
    _stroke(page, canvas, (0.1, 0.85), (0.9, 0.85))
    assert _painted(canvas, 32, 54)
    page.click("[data-inpaint-undo]")
    assert not _painted(canvas, 32, 54) and _painted(canvas, 29, 29)
    # The eraser takes paint away where it passes.
    page.click("[data-inpaint-eraser]")
    expect(page.locator("[data-inpaint-eraser]")).to_have_attribute(
        "aria-pressed", "true"
    )
    _stroke(page, canvas, (0.55, 0.55), (0.62, 0.62))
    assert not _painted(canvas, 37, 37) and _painted(canvas, 29, 29)
    # Clear removes everything; undo brings the mask back.
    page.click("[data-inpaint-clear]")
    assert not _painted(canvas, 29, 29)
    page.click("[data-inpaint-undo]")
    assert _painted(canvas, 29, 29)
    screenshot(page, "20-inpaint-mask")

    page.fill("#id_prompt", "a red hat")
    page.click("[data-inpaint-form] button[type=submit]")
    page.wait_for_url(re.compile(rf"/gallery/content/(?!{parent.pk}/)\d+/"))
    child = Content.objects.get(inpainted_from=parent)
    assert page.url.endswith(f"/gallery/content/{child.pk}/")
    assert child.prompt == "a red hat"

    # The mask sent is the painted one, at the output's size.
    with default_storage.open(child.inpaint_mask.name, "rb") as file:
        mask = Image.open(io.BytesIO(file.read())).convert("L")
    assert mask.size == (SIDE, SIDE)
    assert mask.getpixel((29, 29)) == 255
    assert mask.getpixel((37, 37)) == 0  # erased
    assert mask.getpixel((32, 54)) == 0  # undone
    assert mask.getpixel((2, 2)) == 0

    child = wait_finished(child)
    assert child.status == ContentStatus.SUCCEEDED, child.error_detail
    page.reload()
    expect(page.locator("#inpainted-from")).to_have_text(f"#{parent.pk}")
    expect(page.locator(".gallery-detail-facts")).to_contain_text("Inpaint of")
    screenshot(page, "21-inpaint-child")
    page.goto(f"/gallery/content/{parent.pk}/")
    expect(page.locator(".gallery-detail-facts")).to_contain_text(
        f"Inpainted as #{child.pk}"
    )
    # Its card in the persona's grid says what it is.
    page.goto(f"/gallery/personas/{parent.persona.slug}/")
    expect(page.locator(f"#content-{child.pk}")).to_contain_text(
        f"Inpaint of #{parent.pk}"
    )

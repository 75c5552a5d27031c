"""The queue page and comparing two outputs, in a real browser: three
generations wait in the queue, the third is moved to the front on the queue page
and a worker then runs it first; on the content page, another output is chosen
as the left side of the compare slider. A real worker runs the tiny model
behind the live server."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from generation import services
from generation.models import Content, ContentStatus
from tests.workers import make_persona, use_queue, wait_finished

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

PASSWORD = "a-long-test-password"
QUEUE = "queue-browser"


def _log_in(page, url: str) -> None:
    page.goto(url)
    page.fill("#id_username", "lead")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"**{url}")


def test_move_to_the_front_then_compare_two_outputs(
    page, screenshot, start_worker, studio_settings
):
    use_queue(studio_settings, QUEUE)
    User.objects.create_superuser("lead", "lead@example.com", PASSWORD)
    persona = make_persona(slug="quinn")
    first, second, third = (
        services.content_enqueue(persona=persona, prompt=f"portrait {n}")
        for n in (1, 2, 3)
    )

    _log_in(page, "/gallery/queue/")
    rows = page.locator("tr[id^=queued-]")
    assert [row.get_attribute("data-position") for row in rows.all()] == [
        "1",
        "2",
        "3",
    ]
    assert page.locator(f"#queued-{first.pk}").get_attribute("data-position") == "1"
    page.click(f"#queued-{third.pk} button:has-text('Move to the front')")
    page.wait_for_selector(".messagelist .success")
    assert page.locator(f"#queued-{third.pk}").get_attribute("data-position") == "1"
    assert page.locator(f"#queued-{first.pk}").get_attribute("data-position") == "2"
    assert page.locator(f"#queued-{second.pk}").get_attribute("data-position") == "3"
    screenshot(page, "30-queue-moved")

    # One worker takes them in the queue's order: the moved one first.
    start_worker(QUEUE)
    finished = [wait_finished(content) for content in (first, second, third)]
    assert all(c.status == ContentStatus.SUCCEEDED for c in finished), [
        c.error_detail for c in finished
    ]
    order = sorted(finished, key=lambda content: content.started_at)
    assert [content.pk for content in order] == [third.pk, first.pk, second.pk]

    # Compare two outputs: the first output on the left of the third's slider.
    page.goto(f"/gallery/content/{third.pk}/")
    page.fill("input[name=compare]", str(first.pk))
    page.click("form.gallery-compare-with button[type=submit]")
    page.wait_for_url(f"**/gallery/content/{third.pk}/?compare={first.pk}")
    left = page.locator("[data-compare-before]")
    assert left.get_attribute("alt") == f"Left: output #{first.pk}"
    first_output = Content.objects.get(pk=first.pk).output_image.name
    assert left.get_attribute("src").endswith(first_output)
    slider = page.locator("[data-compare]")
    box = slider.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(
        box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=6
    )
    page.mouse.up()
    handle = page.locator("[data-compare-handle]")
    assert abs(int(handle.get_attribute("aria-valuenow")) - 70) <= 2
    screenshot(page, "31-compare-two-outputs")

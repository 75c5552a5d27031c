"""Live progress and review on the persona's gallery in a real browser, with a
real worker running the tiny model behind the live server:

- a long run shows its phase, "step k of n" and a live preview of the image
  forming (the worker's approximate decode of the latents, through Redis);
  when it ends the card shows the output and the persona's counts update, all
  without a reload, and no preview is left in Redis;
- keyboard review on the grid: j/k (or the arrows) move the focus from card to
  card, a approves and r rejects the card in focus, and the focus moves on.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from generation import services
from generation.models import Content, ContentStatus, ReviewState
from tests.workers import make_persona, use_queue, wait_finished

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

GENERATION_TIMEOUT_MILLISECONDS = 180_000
PASSWORD = "a-long-test-password"


def _log_in(page, next_url: str) -> None:
    User.objects.create_superuser("reviewer", "reviewer@example.com", PASSWORD)
    page.goto(next_url)
    page.fill("#id_username", "reviewer")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"**{next_url}")


def test_a_running_card_shows_its_phase_and_a_live_preview_then_the_counts_follow(
    page, screenshot, start_worker, studio_settings, redis_connection
):
    queue = "preview-browser"
    use_queue(studio_settings, queue)
    # Enough steps at a size big enough to watch: the run lasts several seconds.
    persona = make_persona(
        slug="vera", method="text", width=256, height=256, steps=150
    )
    content = services.content_enqueue(persona=persona, prompt="a slow portrait")
    _log_in(page, f"/gallery/personas/{persona.slug}/")
    counts = page.locator(".gallery-counts")
    expect(counts).to_contain_text("1 queued or running")
    card = page.locator(f"#content-{content.pk}")
    expect(card.locator(".gallery-progress-label")).to_have_text(
        "Waiting in the queue"
    )
    page.evaluate("window.neverReloaded = true")

    start_worker(
        queue, STUDIO_PREVIEW_EVERY_STEPS="2", STUDIO_PREVIEW_MIN_INTERVAL_MS="100"
    )
    # The preview takes the place of the card's placeholder picture.
    preview = card.locator(".gallery-thumb img[data-preview]")
    expect(preview).to_be_visible(timeout=GENERATION_TIMEOUT_MILLISECONDS)
    expect(preview).to_have_attribute("src", re.compile(r"/preview\.jpg\?step=\d+$"))
    page.wait_for_function(
        "(image) => image.complete && image.naturalWidth > 0",
        arg=preview.element_handle(),
    )
    # The approximate preview is the latents' size: 1/8 of the output's.
    assert preview.evaluate("(image) => image.naturalWidth") == 256 // 8
    # From the second step report on, the step rate gives an ETA.
    expect(card.locator(".gallery-progress-label")).to_have_text(
        re.compile(r"^Step \d+ of \d+ · about \d+ (s|min \d+ s) left$")
    )
    screenshot(page, "20-live-preview")
    first_preview = preview.get_attribute("src")
    # A later preview replaces it while the run goes on.
    page.wait_for_function(
        "([selector, first]) => {"
        " const image = document.querySelector(selector);"
        " return !image || image.getAttribute('src') !== first; }",
        arg=[f"#content-{content.pk} img[data-preview]", first_preview],
        timeout=GENERATION_TIMEOUT_MILLISECONDS,
    )

    # The output's thumbnail replaces the preview in the card's picture.
    expect(card.locator(".gallery-thumb img:not([data-preview])")).to_be_visible(
        timeout=GENERATION_TIMEOUT_MILLISECONDS
    )
    expect(card.locator("img[data-preview]")).to_have_count(0)
    expect(counts).to_contain_text("1 pending review")
    expect(counts).not_to_contain_text("queued or running")
    assert page.evaluate("window.neverReloaded") is True
    content.refresh_from_db()
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    # Its preview is gone (other tests of this process may have their own).
    assert not redis_connection.exists(f"studio:preview:{content.rq_job_id}")
    screenshot(page, "21-live-preview-done")


def test_keyboard_review_on_the_grid(page, screenshot, start_worker, studio_settings):
    queue = "grid-review-browser"
    start_worker(queue)
    persona = make_persona(slug="kira", method="text", steps=2)
    contents = [
        services.content_enqueue(persona=persona, prompt=f"portrait {index}")
        for index in range(3)
    ]
    for content in contents:
        assert wait_finished(content).status == ContentStatus.SUCCEEDED
    _log_in(page, f"/gallery/personas/{persona.slug}/")
    expect(page.locator("#grid-keys")).to_contain_text("a approve")
    order = [
        int(card_id.removeprefix("content-"))
        for card_id in page.locator("[data-card]").evaluate_all(
            "(cards) => cards.map((card) => card.id)"
        )
    ]
    assert sorted(order) == sorted(content.pk for content in contents)
    first, second, third = order

    def in_focus() -> str:
        return page.evaluate(
            "() => document.activeElement.closest('[data-card]')?.id ?? ''"
        )

    page.keyboard.press("j")
    assert in_focus() == f"content-{first}"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("k")
    assert in_focus() == f"content-{first}"
    page.keyboard.press("a")
    expect(page.locator(f"#content-{first}")).to_have_class(
        re.compile("gallery-review-approved")
    )
    page.wait_for_function(f"() => document.activeElement.closest('#content-{second}')")
    page.keyboard.press("r")
    expect(page.locator(f"#content-{second}")).to_have_class(
        re.compile("gallery-review-rejected")
    )
    page.wait_for_function(f"() => document.activeElement.closest('#content-{third}')")
    counts = page.locator(".gallery-counts")
    expect(counts).to_contain_text("1 approved")
    expect(counts).to_contain_text("1 rejected")
    expect(counts).to_contain_text("1 pending review")
    screenshot(page, "22-grid-keyboard-review")
    states = dict(
        Content.objects.filter(persona=persona).values_list("pk", "review_state")
    )
    assert states == {
        first: ReviewState.APPROVED,
        second: ReviewState.REJECTED,
        third: ReviewState.PENDING,
    }

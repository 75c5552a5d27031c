"""Browser fixtures: Debian's Chromium driven by Playwright's sync API against
pytest-django's live server, and screenshots saved as test artifacts.

Without /usr/bin/chromium the browser tests skip with the reason, unless
``STUDIO_REQUIRE_BROWSER=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
]
SCREENSHOTS = Path(settings.BASE_DIR) / "test-artifacts" / "screenshots"
TIMEOUT_MILLISECONDS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One Chromium for the module. Playwright's sync API keeps an event loop in
    this thread, so Django's guard against database calls from async code is
    lifted while it runs (the calls are synchronous: the guard does not apply)."""
    if not CHROMIUM.exists():
        reason = (
            f"Debian's Chromium is not installed at {CHROMIUM} "
            "(apt-get install chromium)"
        )
        if os.environ.get("STUDIO_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and STUDIO_REQUIRE_BROWSER=1 requires it.")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with pytest.MonkeyPatch.context() as patch, sync_playwright() as playwright:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server) -> Iterator[object]:
    """A fresh browser tab (no cookies) on the live server."""
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(TIMEOUT_MILLISECONDS)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture
def screenshot() -> Callable[[object, str], None]:
    """``screenshot(page, name)``: the full page in the light and the dark theme,
    as test-artifacts/screenshots/<name>-light.png and <name>-dark.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(tab, name: str) -> None:
        for scheme in ("light", "dark"):
            tab.emulate_media(color_scheme=scheme)
            tab.screenshot(path=SCREENSHOTS / f"{name}-{scheme}.png", full_page=True)
        tab.emulate_media(color_scheme="light")

    return take

"""Several reference images at once on the persona page, in a real browser: the
drop zone's file picker turns three files into three gallery rows; one is not an
image, so the save is refused on that row, the two accepted uploads are kept
(the page says which) and the next save, after removing the refused row, adds
them without picking them again."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from personas.models import Persona
from tests.images import encode, halves

pytestmark = [pytest.mark.browser]

PASSWORD = "a-long-test-password"


def test_drop_several_references_and_keep_the_accepted_ones(
    page, screenshot, live_server, transactional_db
):
    User.objects.create_superuser("curator", "curator@example.com", PASSWORD)
    page.goto("/admin/personas/persona/add/")
    page.fill("#id_username", "curator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/personas/persona/add/")
    page.locator("#id_name").press_sequentially("Nell")
    page.fill("#id_appearance", "a test card")

    page.set_input_files(
        "#references-drop-zone input[type=file]",
        files=[
            {
                "name": "front.png",
                "mimeType": "image/png",
                "buffer": encode(halves((64, 64)), "PNG"),
            },
            {
                "name": "side.webp",
                "mimeType": "image/webp",
                "buffer": encode(halves((48, 64)), "WEBP"),
            },
            {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"},
        ],
    )
    expect(page.locator("[data-drop-status]")).to_contain_text("3 files added")
    # The inline's blank row takes the first file; two rows are added.
    rows = page.locator(
        "#references-group tr.form-row:not(.has_original):not(.empty-form)"
    )
    expect(rows).to_have_count(3)
    names = rows.locator("input[type=file]").evaluate_all(
        "(inputs) => inputs.map((input) => input.files[0]?.name ?? '')"
    )
    assert names == ["front.png", "side.webp", "notes.png"]
    rows.nth(0).locator("input[name$='-primary']").check()
    screenshot(page, "30-reference-drop-zone")
    page.click("input[name=_save]")

    expect(page.locator(".messagelist")).to_contain_text(
        "Kept the 2 accepted uploads (front.png, side.webp)"
    )
    expect(page.locator(".errorlist")).to_contain_text("notes.png")
    kept = page.locator(".staged-upload")
    expect(kept).to_have_count(2)
    assert not Persona.objects.exists()
    screenshot(page, "31-references-kept")

    # Remove the refused row; pick nothing again; save.
    refused = page.locator(
        "#references-group tr.form-row", has=page.locator(".errorlist")
    )
    refused.locator("input[name$='-DELETE'], a.inline-deletelink").first.click()
    page.click("input[name=_save]")
    expect(page.locator(".messagelist .success")).to_be_visible()
    persona = Persona.objects.get()
    assert sorted(persona.references.values_list("original_filename", flat=True)) == [
        "front.png",
        "side.webp",
    ]
    assert persona.primary_reference.original_filename == "front.png"

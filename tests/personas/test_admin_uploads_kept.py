"""Uploads are never silently lost on the persona page: when one row or field of
a save is refused, the uploads that passed are kept (staged in their rows), the
page says which, and the next save adds them without picking them again; a
reference smaller than the model family's native size is added with a warning."""

from __future__ import annotations

import html
import re

from django.core import signing
from django.urls import reverse

from personas.models import Persona
from personas.staging import STAGED_TOKEN_SALT
from tests import images
from tests.personas.conftest import stored_files, upload
from tests.personas.test_admin import ADD, management, new_reference, persona_data


def staged_tokens(response) -> dict[int, str]:
    """Row index -> the staged token the page carries in that row."""
    page = response.content.decode()
    return {
        int(index): html.unescape(value)
        for index, value in re.findall(
            r'name="references-(\d+)-staged" value="([^"]+)"', page
        )
    }


def staging(media_root) -> set[str]:
    return {name for name in stored_files(media_root) if name.startswith("staging/")}


def test_a_refused_row_keeps_the_accepted_uploads_and_the_next_save_adds_them(
    admin_client, db, media_root, django_capture_on_commit_callbacks
):
    refused = persona_data(
        **management("references", 3),
        **new_reference(0, "front.png", images.png((64, 48)), primary=True),
        **new_reference(1, "side.jpg", images.jpeg((48, 64))),
        **new_reference(2, "notes.png", b"not an image at all"),
    )
    response = admin_client.post(ADD, refused)

    assert response.status_code == 200
    page = html.unescape(response.content.decode())
    assert "notes.png" in page  # its refusal, on its row
    assert "Kept the 2 accepted uploads (front.png, side.jpg)" in page
    assert "Kept from the last save: <strong>front.png</strong>" in page
    assert "Kept from the last save: <strong>side.jpg</strong>" in page
    assert not Persona.objects.exists()
    assert len(staging(media_root)) == 2
    tokens = staged_tokens(response)
    assert set(tokens) == {0, 1}

    # The person fixes the refused row (removes it) and saves again, picking
    # nothing: the kept files are added, then their staged copies removed.
    fixed = persona_data(
        **management("references", 2),
        **{
            "references-0-staged": tokens[0],
            "references-0-role": "face",
            "references-0-caption": "",
            "references-0-order": "0",
            "references-0-primary": "on",
            "references-1-staged": tokens[1],
            "references-1-role": "face",
            "references-1-caption": "",
            "references-1-order": "1",
        },
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(ADD, fixed)

    assert response.status_code == 302, html.unescape(response.content.decode())
    persona = Persona.objects.get()
    references = {ref.original_filename: ref for ref in persona.references.all()}
    assert set(references) == {"front.png", "side.jpg"}
    assert (references["side.jpg"].width, references["side.jpg"].height) == (48, 64)
    assert references["front.png"].is_primary
    assert staging(media_root) == set()


def test_a_refused_persona_field_keeps_the_upload_too(admin_client, db, media_root):
    response = admin_client.post(
        ADD,
        persona_data(
            steps="0",
            **management("references", 1),
            **new_reference(0, "front.png", images.png(), primary=True),
        ),
    )

    assert response.status_code == 200
    assert "Kept the accepted upload front.png" in html.unescape(
        response.content.decode()
    )
    assert set(staged_tokens(response)) == {0}
    assert len(staging(media_root)) == 1


def test_a_kept_upload_is_not_staged_twice_when_the_page_fails_again(
    admin_client, db, media_root
):
    first = admin_client.post(
        ADD,
        persona_data(
            steps="0",
            **management("references", 1),
            **new_reference(0, "front.png", images.png(), primary=True),
        ),
    )
    token = staged_tokens(first)[0]
    again = admin_client.post(
        ADD,
        persona_data(
            steps="0",
            **management("references", 1),
            **{
                "references-0-staged": token,
                "references-0-role": "face",
                "references-0-order": "0",
                "references-0-primary": "on",
            },
        ),
    )

    assert staged_tokens(again) == {0: token}
    assert len(staging(media_root)) == 1


def test_a_forged_token_names_no_file_and_asks_for_the_file_again(admin_client, db):
    forged = signing.dumps(
        {"name": "references/someone-else.png", "original": "x.png"},
        salt=STAGED_TOKEN_SALT,
    )
    for token in (forged, "not-a-token"):
        response = admin_client.post(
            ADD,
            persona_data(
                **management("references", 1),
                **{
                    "references-0-staged": token,
                    "references-0-role": "face",
                    "references-0-order": "0",
                },
            ),
        )
        assert response.status_code == 200
        assert "pick it again" in html.unescape(response.content.decode())
        assert not Persona.objects.exists()


def test_a_reference_smaller_than_the_native_size_is_added_with_a_warning(
    admin_client, db
):
    data = persona_data(
        **management("references", 2),
        **new_reference(0, "small.png", images.png((300, 200)), primary=True),
        **new_reference(1, "large.png", images.png((512, 512))),
    )
    response = admin_client.post(ADD, data, follow=True)

    assert response.status_code == 200
    messages = [str(message) for message in response.context["messages"]]
    warnings = [message for message in messages if "native" in message]
    assert warnings == [
        '"small.png" is 300 × 200, smaller than Stable Diffusion 1.5\'s native '
        "512 × 512: it is upscaled to the working size and may come out soft. "
        "It was added; a larger image keeps more detail."
    ]
    assert Persona.objects.get().references.count() == 2


def test_the_persona_page_has_a_drop_zone_for_several_files(admin_client, db):
    page = admin_client.get(ADD).content.decode()
    assert 'id="references-drop-zone"' in page
    assert re.search(r'<input type="file" multiple accept="image/png[^"]*"', page)
    assert "personas/reference_drop.js" in page


def test_an_upload_on_its_own_reference_page_is_unchanged(admin_client, bare_persona):
    response = admin_client.post(
        reverse("admin:personas_referenceimage_add"),
        {
            "persona": str(bare_persona.pk),
            "image": upload("solo.png", images.png()),
            "role": "face",
            "caption": "",
            "order": "0",
        },
    )
    assert response.status_code == 302
    assert bare_persona.references.get().original_filename == "solo.png"

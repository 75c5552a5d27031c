"""The persona rules live in personas.services; every entry point (the services
themselves, the persona admin and its gallery, the reference admin and its
delete pages, the lock action, the import command) keeps them and gives the
services' message, never a traceback."""

from __future__ import annotations

import html
import io
from pathlib import Path

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from personas.models import Persona, ReferenceImage
from personas.services import (
    persona_check_lockable,
    persona_create,
    persona_lock_appearance,
    persona_update,
    reference_check_keeps_primary,
    reference_check_not_duplicate,
    reference_image_add,
    reference_image_delete,
    reference_set_primary,
    reference_update,
)
from personas.uploads import validate_image_upload
from tests import images
from tests.personas.conftest import upload
from tests.personas.test_admin import (
    change_url,
    errors_in,
    existing_reference,
    management,
    persona_data,
    run_action,
)


def add_image(bare_persona: Persona, name: str, content: bytes) -> ReferenceImage:
    return reference_image_add(persona=bare_persona, file=upload(name, content))


def refusal(call) -> ValidationError:
    with pytest.raises(ValidationError) as refused:
        call()
    return refused.value


def page_messages(response) -> list[str]:
    messages = get_messages(response.wsgi_request)
    return [html.unescape(str(message)) for message in messages]


@pytest.fixture
def lock_message(bare_persona) -> str:
    """The services' message for a lock without a primary image."""
    error = refusal(
        lambda: persona_check_lockable(persona=bare_persona, has_primary=False)
    )
    assert error.code == "lock_without_primary"
    (message,) = error.messages
    return message


@pytest.fixture
def locked(bare_persona) -> tuple[Persona, ReferenceImage]:
    """A persona whose appearance is locked to its primary image."""
    primary = reference_image_add(
        persona=bare_persona, file=upload("a.png", images.png()), is_primary=True
    )
    persona_lock_appearance(persona=bare_persona)
    return bare_persona, primary


@pytest.fixture
def keep_primary_message(locked) -> str:
    """The services' message for unmarking or deleting a locked persona's primary."""
    _, primary = locked
    error = refusal(lambda: reference_check_keeps_primary(reference=primary))
    assert error.code == "primary_of_locked_persona"
    (message,) = error.messages
    return message


# --- A locked appearance needs a primary image ------------------------------------


def test_every_service_refuses_a_lock_without_primary_with_one_message(
    bare_persona, lock_message
):
    created = refusal(lambda: persona_create(name="Grace", appearance_locked=True))
    updated = refusal(
        lambda: persona_update(persona=bare_persona, data={"appearance_locked": True})
    )
    locked = refusal(lambda: persona_lock_appearance(persona=bare_persona))

    assert created.message_dict == {"appearance_locked": [lock_message]}
    assert updated.message_dict == {"appearance_locked": [lock_message]}
    assert locked.messages == [lock_message]
    assert not Persona.objects.filter(appearance_locked=True).exists()


def test_the_admin_form_and_the_lock_action_give_the_services_message(
    admin_client, bare_persona, lock_message
):
    form = admin_client.post(
        change_url(bare_persona),
        persona_data(slug=bare_persona.slug, appearance_locked="on"),
    )
    action = run_action(admin_client, "lock_appearance", bare_persona)

    assert form.status_code == 200
    assert lock_message in errors_in(form)
    assert f"{bare_persona} was not locked: {lock_message}" in page_messages(action)
    bare_persona.refresh_from_db()
    assert not bare_persona.appearance_locked


def test_the_admin_locks_with_a_primary_it_saves_in_the_same_submit(
    admin_client, bare_persona
):
    data = persona_data(
        slug=bare_persona.slug,
        appearance_locked="on",
        **management("references", 1),
        **{
            "references-0-image": upload("a.png", images.png()),
            "references-0-role": "face",
            "references-0-caption": "",
            "references-0-order": "0",
            "references-0-primary": "on",
        },
    )

    response = admin_client.post(change_url(bare_persona), data)

    assert response.status_code == 302, errors_in(response)
    bare_persona.refresh_from_db()
    assert bare_persona.appearance_locked
    assert bare_persona.primary_reference is not None


# --- The primary image of a locked persona stays --------------------------------


def test_the_services_keep_the_primary_of_a_locked_persona(
    locked, keep_primary_message
):
    bare_persona, primary = locked

    unmarked = refusal(
        lambda: reference_update(reference=primary, data={"is_primary": False})
    )
    deleted = refusal(lambda: reference_image_delete(reference=primary))

    assert unmarked.messages == deleted.messages == [keep_primary_message]
    primary.refresh_from_db()
    assert primary.is_primary


def test_the_primary_of_a_locked_persona_moves_to_another_image(locked):
    bare_persona, primary = locked
    other = add_image(bare_persona, "b.png", images.png((8, 8)))

    reference_set_primary(reference=other)
    reference_image_delete(reference=primary)

    assert bare_persona.primary_reference == other
    assert not ReferenceImage.objects.filter(pk=primary.pk).exists()


def test_the_reference_admin_form_gives_the_services_message(
    admin_client, locked, keep_primary_message
):
    _, primary = locked
    change = reverse("admin:personas_referenceimage_change", args=[primary.pk])

    response = admin_client.post(change, {"role": "face", "caption": "", "order": "1"})

    assert response.status_code == 200
    assert keep_primary_message in errors_in(response)
    primary.refresh_from_db()
    assert primary.is_primary


def test_the_reference_admin_delete_page_refuses_with_the_services_message(
    admin_client, locked, keep_primary_message
):
    _, primary = locked
    delete = reverse("admin:personas_referenceimage_delete", args=[primary.pk])

    response = admin_client.post(delete, {"post": "yes"}, follow=True)

    assert response.status_code == 200
    assert keep_primary_message in page_messages(response)
    assert ReferenceImage.objects.filter(pk=primary.pk, is_primary=True).exists()


def test_the_reference_admin_delete_action_refuses_with_the_services_message(
    admin_client, locked, keep_primary_message
):
    bare_persona, primary = locked
    other = add_image(bare_persona, "b.png", images.png((8, 8)))
    changelist = reverse("admin:personas_referenceimage_changelist")

    response = admin_client.post(
        changelist,
        {
            "action": "delete_selected",
            "_selected_action": [str(primary.pk), str(other.pk)],
            "post": "yes",
        },
        follow=True,
    )

    assert response.status_code == 200
    (message,) = page_messages(response)
    assert message.startswith("Nothing was deleted.")
    assert f"{primary}: {keep_primary_message}" in message
    assert bare_persona.references.count() == 2


def test_the_reference_admin_deletes_what_the_services_allow(
    admin_client, bare_persona
):
    reference = reference_image_add(
        persona=bare_persona, file=upload("a.png", images.png())
    )
    changelist = reverse("admin:personas_referenceimage_changelist")

    response = admin_client.post(
        changelist,
        {
            "action": "delete_selected",
            "_selected_action": [str(reference.pk)],
            "post": "yes",
        },
        follow=True,
    )

    assert response.status_code == 200
    assert not ReferenceImage.objects.filter(pk=reference.pk).exists()


def test_the_persona_gallery_cannot_drop_the_primary_of_a_locked_persona(
    admin_client, locked, lock_message
):
    bare_persona, primary = locked
    data = persona_data(
        slug=bare_persona.slug,
        appearance_locked="on",
        **management("references", 1, initial=1),
        **existing_reference(0, primary, primary=False),
    )

    response = admin_client.post(change_url(bare_persona), data)

    assert response.status_code == 200
    assert lock_message in errors_in(response)
    primary.refresh_from_db()
    assert primary.is_primary


# --- The import command -----------------------------------------------------------


def run_import(*args: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("studio_import_references", *args, stdout=out, no_color=True)
    except CommandError as error:
        return out.getvalue(), error
    return out.getvalue(), None


def test_the_import_command_keeps_the_primary_of_a_locked_persona(
    locked, tmp_path: Path
):
    bare_persona, primary = locked
    path = tmp_path / "b.png"
    path.write_bytes(images.png((8, 8)))

    output, error = run_import(bare_persona.slug, str(path))

    assert error is None, output
    assert bare_persona.primary_reference == primary
    assert bare_persona.references.count() == 2


def test_the_import_command_and_the_admin_refuse_a_duplicate_alike(
    admin_client, bare_persona, tmp_path: Path
):
    content = images.png()
    reference_image_add(persona=bare_persona, file=upload("a.png", content))
    expected = refusal(
        lambda: reference_check_not_duplicate(
            persona=bare_persona,
            image=validate_image_upload(upload("copy.png", content)),
        )
    ).messages[0]
    path = tmp_path / "copy.png"
    path.write_bytes(content)

    output, error = run_import(bare_persona.slug, str(path))
    page = admin_client.post(
        reverse("admin:personas_referenceimage_add"),
        {
            "persona": str(bare_persona.pk),
            "image": upload("copy.png", content),
            "role": "face",
            "caption": "",
            "order": "0",
        },
    )

    assert error is not None
    assert f"rejected {path}: {expected}" in output
    assert expected in errors_in(page)
    assert bare_persona.references.count() == 1

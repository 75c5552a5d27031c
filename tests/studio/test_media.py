"""Media is served per model: only to staff who may see the row owning the file."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from generation import services
from personas.services import persona_set_lora
from tests.images import encode, halves, safetensors_lora
from tests.workers import make_persona


@pytest.fixture
def files(db) -> dict[str, str]:
    """The storage name of a reference, its thumbnail, a LoRA and an output."""
    persona = make_persona(slug="ada")
    persona_set_lora(
        persona=persona,
        file=SimpleUploadedFile("persona.safetensors", safetensors_lora()),
    )
    reference = persona.references.get()
    content = services.content_enqueue(persona=persona, prompt="a portrait")
    content.output_image.save(
        "output.png", ContentFile(encode(halves((8, 8)), "PNG")), save=True
    )
    return {
        "reference": reference.image.name,
        "reference thumbnail": reference.thumbnail.name,
        "lora": persona.lora_weights.name,
        "output": content.output_image.name,
    }


def staff_client(*permissions: str) -> Client:
    user = get_user_model().objects.create_user(
        f"staff-{len(permissions)}-{'-'.join(permissions)}"[:150], is_staff=True
    )
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("permission", "served"),
    [
        ("personas.view_persona", {"reference", "reference thumbnail"}),
        ("personas.view_referenceimage", {"reference", "reference thumbnail"}),
        ("personas.change_persona", {"lora"}),
        ("generation.view_content", {"output"}),
        ("generation.view_batch", set()),
    ],
)
def test_a_file_is_served_only_with_a_permission_on_its_owner(
    files, permission, served
):
    client = staff_client(permission)

    answered = {kind: client.get(f"/media/{name}").status_code
                for kind, name in files.items()}

    assert {kind for kind, status in answered.items() if status == 200} == served
    assert set(answered.values()) <= {200, 403}


@pytest.mark.parametrize(
    "path", ["generated/", "generated", "references/", "thumbnails/", ".", "loras"]
)
def test_a_folder_under_the_media_url_answers_404(files, path):
    client = staff_client("generation.view_content", "personas.change_persona")

    assert client.get(f"/media/{path}").status_code == 404


def test_a_file_no_row_owns_answers_404(files):
    orphan = default_storage.save("generated/1/orphan.png", ContentFile(b"x"))
    client = staff_client("generation.view_content")

    assert client.get(f"/media/{orphan}").status_code == 404


def test_a_file_whose_row_lost_it_answers_404(files):
    default_storage.delete(files["output"])
    client = staff_client("generation.view_content")

    assert client.get(f"/media/{files['output']}").status_code == 404

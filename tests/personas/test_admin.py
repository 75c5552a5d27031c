"""Every persona admin page through the admin client: the changelist, add and
change with the gallery and ControlNet inlines posted, and each action."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from personas.models import ControlNetUnit, Persona, ReferenceImage
from personas.services import persona_create, persona_set_lora, reference_image_add
from tests import images
from tests.personas.conftest import stored_files, upload

CHANGELIST = reverse("admin:personas_persona_changelist")
ADD = reverse("admin:personas_persona_add")


def change_url(bare_persona: Persona) -> str:
    return reverse("admin:personas_persona_change", args=[bare_persona.pk])


def management(prefix: str, total: int, initial: int = 0) -> dict[str, str]:
    return {
        f"{prefix}-TOTAL_FORMS": str(total),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def persona_data(**overrides: Any) -> dict[str, Any]:
    """The persona form as the admin posts it, with empty inlines."""
    data = {
        "name": "Ada Lovelace",
        "slug": "ada-lovelace",
        "description": "",
        "appearance": "short dark hair, Victorian dress",
        "method": "auto",
        "img2img_strength": "0.7",
        "resize_mode": "crop_and_resize",
        "ip_adapter_scale": "0.6",
        "ip_adapter_face_crop": "on",
        "guidance_scale": "7.5",
        "steps": "30",
        "negative_prompt": "",
        "width": "512",
        "height": "512",
        "base_model": "tiny-sd15",
        "seed_policy": "random",
        "seed": "",
        "lora_scale": "0.8",
        "identity_threshold": "0.5",
        "detailer_strength": "0.4",
        "detailer_prompt": "detailed face, sharp focus",
        "detailer_padding": "32",
        **management("references", 0),
        **management("control_units", 0),
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def new_reference(index: int, name: str, content: bytes, **fields: str) -> dict:
    prefix = f"references-{index}"
    return {
        f"{prefix}-image": upload(name, content),
        f"{prefix}-role": fields.get("role", "face"),
        f"{prefix}-caption": fields.get("caption", ""),
        f"{prefix}-order": fields.get("order", str(index)),
        **({f"{prefix}-primary": "on"} if fields.get("primary") else {}),
    }


def existing_reference(index: int, reference: ReferenceImage, **fields: Any) -> dict:
    prefix = f"references-{index}"
    data = {
        f"{prefix}-id": str(reference.pk),
        f"{prefix}-persona": str(reference.persona_id),
        f"{prefix}-role": fields.get("role", reference.role),
        f"{prefix}-caption": fields.get("caption", reference.caption),
        f"{prefix}-order": str(reference.order),
    }
    if fields.get("primary", reference.is_primary):
        data[f"{prefix}-primary"] = "on"
    if fields.get("delete"):
        data[f"{prefix}-DELETE"] = "on"
    return data


def new_unit(index: int, **fields: Any) -> dict:
    prefix = f"control_units-{index}"
    data = {
        f"{prefix}-control_type": fields.get("control_type", "canny"),
        f"{prefix}-enabled": "on",
        f"{prefix}-conditioning_scale": "1.0",
        f"{prefix}-guidance_start": fields.get("guidance_start", "0.0"),
        f"{prefix}-guidance_end": fields.get("guidance_end", "1.0"),
        f"{prefix}-preprocessor_options": fields.get("options", "{}"),
        f"{prefix}-reference": fields.get("reference", ""),
        f"{prefix}-order": str(index),
    }
    if "control_image" in fields:
        data[f"{prefix}-control_image"] = fields["control_image"]
    return data


def add_reference(
    bare_persona: Persona, name: str, content: bytes, **kw
) -> ReferenceImage:
    return reference_image_add(persona=bare_persona, file=upload(name, content), **kw)


def errors_in(response) -> str:
    """The error lists on an admin page, as plain text."""
    lists = re.findall(
        r'<ul class="errorlist[^"]*"[^>]*>.*?</ul>', response.content.decode(), re.S
    )
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", item) for item in lists))


@pytest.fixture
def staff_user(db):
    """Staff who may view and change personas, but not lock them."""
    user = get_user_model().objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="personas",
            codename__in=[
                "view_persona",
                "change_persona",
                "view_referenceimage",
                "add_referenceimage",
                "change_referenceimage",
            ],
        )
    )
    return user


# --- Changelist ---------------------------------------------------------------


def test_changelist_shows_primary_thumbnail_and_gallery_count(
    admin_client, bare_persona
):
    primary = add_reference(
        bare_persona, "a.png", images.png((64, 48)), is_primary=True
    )
    add_reference(bare_persona, "b.png", images.png((48, 64)))

    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    thumbnail = reverse("studio-media", kwargs={"path": primary.thumbnail.name})
    assert f'src="{thumbnail}"' in response.content.decode()
    assert '<td class="field-gallery_count">2</td>' in response.content.decode()
    assert admin_client.get(thumbnail)["Content-Type"] == "image/webp"


def test_changelist_queries_do_not_grow_with_personas(admin_client, bare_persona):
    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(CHANGELIST).status_code == 200
        return len(queries)

    add_reference(bare_persona, "a.png", images.png(), is_primary=True)
    with_one = count_queries()
    for index in range(4):
        other = persona_create(name=f"Persona {index}")
        add_reference(other, "a.png", images.png(), is_primary=True)
        add_reference(other, "b.png", images.png((48, 64)))

    assert count_queries() == with_one


def test_changelist_search_and_filters(admin_client, bare_persona):
    persona_create(name="Grace Hopper", method="img2img")

    found = admin_client.get(CHANGELIST, {"q": "grace"}).content.decode()
    filtered = admin_client.get(CHANGELIST, {"method__exact": "img2img"})

    assert "Grace Hopper" in found and "Ada Lovelace" not in found
    assert filtered.context["cl"].result_count == 1


# --- Add and change ------------------------------------------------------------


def test_add_page_renders_the_fieldsets_and_inlines(admin_client, db):
    page = admin_client.get(ADD).content.decode()

    for heading in ("Identity", "Appearance", "Consistency", "Advanced"):
        assert f">{heading}<" in page
    assert 'name="references-0-image"' in page
    assert 'accept="image/png,image/jpeg,image/webp"' in page
    assert "control_units-empty" in page


def test_add_a_locked_persona_with_gallery_and_control_units(admin_client, media_root):
    data = persona_data(
        appearance_locked="on",
        lora_upload=upload("ada.safetensors", images.safetensors_lora()),
        **management("references", 2),
        **new_reference(0, "face.jpg", images.jpeg_with_orientation(6), primary=True),
        **new_reference(1, "body.webp", images.webp((32, 64)), role="full_body"),
        **management("control_units", 2),
        **new_unit(
            0, control_type="openpose", control_image=upload("pose.png", images.png())
        ),
        **new_unit(1, control_type="canny", options='{"low_threshold": 50}'),
    )

    response = admin_client.post(ADD, data)

    assert response.status_code == 302, errors_in(response)
    bare_persona = Persona.objects.get(slug="ada-lovelace")
    assert bare_persona.appearance_locked
    primary = bare_persona.primary_reference
    assert (primary.width, primary.height) == (48, 64)
    assert primary.uploaded_by.username == "admin"
    assert bare_persona.references.count() == 2
    units = list(bare_persona.control_units.all())
    assert [unit.control_type for unit in units] == ["openpose", "canny"]
    assert units[0].control_image.name.startswith(f"control/{bare_persona.pk}/")
    assert units[1].preprocessor_options == {"low_threshold": 50}
    assert bare_persona.lora_weights.name.startswith("loras/")
    assert len(bare_persona.lora_sha256) == 64
    # The upload is kept as the persona's first LoRA version, the active one.
    (version,) = bare_persona.lora_versions.all()
    assert (version.number, version.source, version.is_active) == (1, "uploaded", True)
    assert version.sha256 == bare_persona.lora_sha256
    assert version.label == "uploaded, ada.safetensors"
    assert version.created_by.username == "admin"
    # References and thumbnails, a control image, the LoRA and its version.
    assert len(stored_files(media_root)) == 2 * 2 + 1 + 1 + 1


def test_locking_on_the_add_page_needs_a_primary_in_the_gallery(admin_client, db):
    data = persona_data(
        appearance_locked="on",
        **management("references", 1),
        **new_reference(0, "face.png", images.png()),
    )

    response = admin_client.post(ADD, data)

    assert response.status_code == 200
    assert "Locking the appearance needs a primary reference image" in errors_in(
        response
    )
    assert not Persona.objects.exists()


@pytest.mark.parametrize(
    "sample", images.hostile_images(), ids=lambda sample: sample.name
)
def test_a_hostile_upload_is_refused_and_nothing_is_stored(
    admin_client, media_root, db, sample
):
    data = persona_data(
        **management("references", 1),
        **new_reference(0, sample.name, sample.content),
    )

    response = admin_client.post(ADD, data)

    assert response.status_code == 200
    assert f'"{sample.name}"' in errors_in(response)
    assert not Persona.objects.exists()
    assert stored_files(media_root) == set()


def test_hostile_control_image_and_lora_are_refused(admin_client, media_root, db):
    data = persona_data(
        lora_upload=upload("ada.safetensors", images.pickled_checkpoint()),
        **management("control_units", 1),
        **new_unit(0, control_image=upload("pose.svg", images.svg_with_script())),
    )

    response = admin_client.post(ADD, data)

    errors = errors_in(response)
    assert "loading pickled weights runs code; convert to .safetensors" in errors
    assert "is an SVG drawing" in errors
    assert not Persona.objects.exists()
    assert stored_files(media_root) == set()


def test_change_page_swaps_primary_adds_and_deletes_in_one_submit(
    admin_client, bare_persona, media_root, django_capture_on_commit_callbacks
):
    old_primary = add_reference(
        bare_persona, "a.png", images.png((64, 48)), is_primary=True
    )
    kept = add_reference(bare_persona, "b.png", images.png((48, 64)))
    bare_persona.appearance_locked = True
    bare_persona.save()
    page = admin_client.get(change_url(bare_persona)).content.decode()
    assert reverse("studio-media", kwargs={"path": kept.thumbnail.name}) in page

    data = persona_data(
        slug=bare_persona.slug,
        appearance_locked="on",
        **management("references", 3, initial=2),
        **existing_reference(0, old_primary, delete=True),
        **existing_reference(1, kept, primary=False, caption="at the desk"),
        **new_reference(2, "new.png", images.png((32, 32)), primary=True),
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(change_url(bare_persona), data)

    assert response.status_code == 302, errors_in(response)
    new_primary = bare_persona.references.get(is_primary=True)
    assert (new_primary.width, new_primary.height) == (32, 32)
    kept.refresh_from_db()
    assert kept.caption == "at the desk"
    assert not ReferenceImage.objects.filter(pk=old_primary.pk).exists()
    assert old_primary.image.name not in stored_files(media_root)


def test_change_page_moves_primary_between_existing_images(admin_client, bare_persona):
    first = add_reference(bare_persona, "a.png", images.png((64, 48)), is_primary=True)
    second = add_reference(bare_persona, "b.png", images.png((48, 64)))

    data = persona_data(
        slug=bare_persona.slug,
        **management("references", 2, initial=2),
        **existing_reference(0, first, primary=False),
        **existing_reference(1, second, primary=True),
    )
    response = admin_client.post(change_url(bare_persona), data)

    assert response.status_code == 302, errors_in(response)
    assert bare_persona.primary_reference == second


@pytest.mark.parametrize(
    ("gallery", "error"),
    [
        ("delete-primary", "Locking the appearance needs a primary reference image"),
        ("two-primaries", "Only one image can be primary"),
        ("duplicate", "is already in the gallery"),
        ("same-twice", "is the same image as"),
    ],
)
def test_change_page_refuses_an_inconsistent_gallery(
    admin_client, bare_persona, media_root, gallery, error
):
    primary = add_reference(
        bare_persona, "a.png", images.png((64, 48)), is_primary=True
    )
    bare_persona.appearance_locked = True
    bare_persona.save()
    before = stored_files(media_root)
    rows = {
        "delete-primary": [existing_reference(0, primary, delete=True)],
        "two-primaries": [
            existing_reference(0, primary),
            new_reference(1, "b.png", images.png((8, 8)), primary=True),
        ],
        "duplicate": [
            existing_reference(0, primary),
            new_reference(1, "copy.png", images.png((64, 48))),
        ],
        "same-twice": [
            existing_reference(0, primary),
            new_reference(1, "b.png", images.png((8, 8))),
            new_reference(2, "c.png", images.png((8, 8))),
        ],
    }[gallery]
    data = persona_data(
        slug=bare_persona.slug,
        appearance_locked="on",
        **management("references", len(rows), initial=1),
    )
    for row in rows:
        data.update(row)

    response = admin_client.post(change_url(bare_persona), data)

    assert response.status_code == 200
    assert error in errors_in(response)
    assert list(bare_persona.references.all()) == [primary]
    # Nothing is stored in the gallery; the uploads that passed their own
    # checks are kept aside for the next save (tests/personas/
    # test_admin_uploads_kept.py), the refused ones are not.
    stored = stored_files(media_root) - before
    assert all(name.startswith("staging/") for name in stored), stored
    kept = {"delete-primary": 0, "two-primaries": 1, "duplicate": 0, "same-twice": 1}
    assert len(stored) == kept[gallery]


def test_change_page_replaces_and_removes_lora_weights(
    admin_client, bare_persona, media_root, django_capture_on_commit_callbacks
):
    persona_set_lora(
        persona=bare_persona, file=upload("a.safetensors", images.safetensors_lora(4))
    )
    old_name = bare_persona.lora_weights.name

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            change_url(bare_persona),
            persona_data(
                slug=bare_persona.slug,
                lora_upload=upload("b.safetensors", images.safetensors_lora(8)),
            ),
        )
    assert response.status_code == 302, errors_in(response)
    bare_persona.refresh_from_db()
    (version,) = bare_persona.lora_versions.all()
    assert version.is_active and version.sha256 == bare_persona.lora_sha256
    kept = version.weights.name
    assert stored_files(media_root) == {bare_persona.lora_weights.name, kept}
    assert old_name not in stored_files(media_root)

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            change_url(bare_persona),
            persona_data(slug=bare_persona.slug, lora_remove="on"),
        )
    bare_persona.refresh_from_db()
    assert not bare_persona.lora_weights
    # The version is kept, no longer active: staff may make it active again.
    version.refresh_from_db()
    assert not version.is_active
    assert stored_files(media_root) == {kept}


def test_control_unit_inline_refuses_a_reversed_guidance_window(
    admin_client, bare_persona
):
    data = persona_data(
        slug=bare_persona.slug,
        **management("control_units", 1),
        **new_unit(0, guidance_start="0.8", guidance_end="0.2"),
    )

    response = admin_client.post(change_url(bare_persona), data)

    assert "must be below guidance end" in errors_in(response)
    assert not ControlNetUnit.objects.exists()


def test_control_unit_reference_must_belong_to_the_persona(admin_client, bare_persona):
    stranger = persona_create(name="Grace Hopper")
    foreign = add_reference(stranger, "g.png", images.png())
    data = persona_data(
        slug=bare_persona.slug,
        **management("control_units", 1),
        **new_unit(0, reference=str(foreign.pk)),
    )

    response = admin_client.post(change_url(bare_persona), data)

    assert "Select a valid choice" in errors_in(response)


def test_delete_removes_the_persona_and_its_files(
    admin_client, bare_persona, media_root, django_capture_on_commit_callbacks
):
    add_reference(bare_persona, "a.png", images.png())
    delete_url = reverse("admin:personas_persona_delete", args=[bare_persona.pk])
    assert admin_client.get(delete_url).status_code == 200

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(delete_url, {"post": "yes"})

    assert response.status_code == 302
    assert not Persona.objects.exists()
    assert stored_files(media_root) == set()


def test_without_the_gallery_inline_a_lock_is_judged_on_the_stored_gallery(
    client, staff_user, bare_persona
):
    """Staff who may lock but not see the gallery still cannot lock without primary."""
    staff_user.user_permissions.remove(
        *Permission.objects.filter(codename__endswith="referenceimage")
    )
    staff_user.user_permissions.add(Permission.objects.get(codename="lock_persona"))
    client.force_login(staff_user)

    response = client.post(
        change_url(bare_persona),
        persona_data(slug=bare_persona.slug, appearance_locked="on"),
    )

    assert response.status_code == 200
    assert "needs a primary reference image" in errors_in(response)
    bare_persona.refresh_from_db()
    assert not bare_persona.appearance_locked


def test_without_the_lock_permission_the_lock_field_is_read_only(
    client, staff_user, bare_persona
):
    add_reference(bare_persona, "a.png", images.png(), is_primary=True)
    client.force_login(staff_user)
    assert (
        'name="appearance_locked"'
        not in client.get(change_url(bare_persona)).content.decode()
    )

    data = persona_data(slug=bare_persona.slug, appearance_locked="on")
    data.update(existing_reference(0, bare_persona.primary_reference))
    data.update(management("references", 1, initial=1))
    response = client.post(change_url(bare_persona), data)

    assert response.status_code == 302, errors_in(response)
    bare_persona.refresh_from_db()
    assert not bare_persona.appearance_locked


# --- Actions -------------------------------------------------------------------


def run_action(client, action: str, *personas: Persona):
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [str(p.pk) for p in personas]},
        follow=True,
    )


def test_lock_action_locks_personas_with_a_primary_and_explains_the_others(
    admin_client, bare_persona
):
    add_reference(bare_persona, "a.png", images.png(), is_primary=True)
    bare = persona_create(name="Grace Hopper")

    response = run_action(admin_client, "lock_appearance", bare_persona, bare)

    page = [str(message) for message in response.context["messages"]]
    assert "Locked the appearance of 1 persona." in page
    assert any(
        line.startswith("Grace Hopper was not locked: Locking the appearance needs")
        for line in page
    )
    bare_persona.refresh_from_db()
    bare.refresh_from_db()
    assert (bare_persona.appearance_locked, bare.appearance_locked) == (True, False)


def test_unlock_action(admin_client, bare_persona):
    add_reference(bare_persona, "a.png", images.png(), is_primary=True)
    Persona.objects.update(appearance_locked=True)

    response = run_action(admin_client, "unlock_appearance", bare_persona)

    assert "Unlocked the appearance of 1 persona." in [
        str(message) for message in response.context["messages"]
    ]
    bare_persona.refresh_from_db()
    assert not bare_persona.appearance_locked


def test_lock_actions_need_the_lock_permission(client, staff_user, bare_persona):
    client.force_login(staff_user)
    page = client.get(CHANGELIST).content.decode()
    assert 'value="lock_appearance"' not in page

    response = run_action(client, "lock_appearance", bare_persona)
    bare_persona.refresh_from_db()
    assert not bare_persona.appearance_locked
    assert response.status_code == 200

    staff_user.user_permissions.add(Permission.objects.get(codename="lock_persona"))
    client.force_login(get_user_model().objects.get(pk=staff_user.pk))
    page = client.get(CHANGELIST).content.decode()
    assert 'value="lock_appearance"' in page
    assert 'value="unlock_appearance"' in page


# --- The reference image admin --------------------------------------------------


def test_reference_admin_pages(admin_client, bare_persona, media_root):
    changelist = reverse("admin:personas_referenceimage_changelist")
    add_url = reverse("admin:personas_referenceimage_add")
    assert admin_client.get(add_url).status_code == 200

    response = admin_client.post(
        add_url,
        {
            "persona": str(bare_persona.pk),
            "image": upload("side.jpg", images.jpeg()),
            "role": "half_body",
            "caption": "side view",
            "order": "3",
            "primary": "on",
        },
    )
    assert response.status_code == 302, errors_in(response)
    reference = ReferenceImage.objects.get()
    assert reference.is_primary and reference.uploaded_by.username == "admin"

    listing = admin_client.get(changelist, {"q": "side"}).content.decode()
    assert reverse("studio-media", kwargs={"path": reference.thumbnail.name}) in listing

    change = reverse("admin:personas_referenceimage_change", args=[reference.pk])
    assert admin_client.get(change).status_code == 200
    response = admin_client.post(
        change,
        {"role": "face", "caption": "profile", "order": "1", "primary": "on"},
    )
    assert response.status_code == 302, errors_in(response)
    reference.refresh_from_db()
    assert (reference.role, reference.caption, reference.persona) == (
        "face",
        "profile",
        bare_persona,
    )


def test_reference_admin_refuses_hostile_and_duplicate_uploads(
    admin_client, bare_persona, media_root
):
    add_reference(bare_persona, "a.png", images.png())
    before = stored_files(media_root)
    add_url = reverse("admin:personas_referenceimage_add")

    for name, content, error in [
        ("copy.png", images.png(), "is already in the gallery"),
        ("bomb.png", images.decompression_bomb_png(), "more than the 40,000,000"),
    ]:
        response = admin_client.post(
            add_url,
            {
                "persona": str(bare_persona.pk),
                "image": upload(name, content),
                "role": "face",
                "caption": "",
                "order": "0",
            },
        )
        assert response.status_code == 200
        assert error in errors_in(response)

    assert bare_persona.references.count() == 1
    assert stored_files(media_root) == before


def test_reference_admin_keeps_the_primary_of_a_locked_persona(
    admin_client, bare_persona
):
    primary = add_reference(bare_persona, "a.png", images.png(), is_primary=True)
    Persona.objects.update(appearance_locked=True)
    change = reverse("admin:personas_referenceimage_change", args=[primary.pk])

    response = admin_client.post(change, {"role": "face", "caption": "", "order": "1"})

    assert "is locked to this image" in errors_in(response)
    primary.refresh_from_db()
    assert primary.is_primary


def test_reference_admin_delete_removes_files(
    admin_client, bare_persona, media_root, django_capture_on_commit_callbacks
):
    reference = add_reference(bare_persona, "a.png", images.png())
    delete_url = reverse("admin:personas_referenceimage_delete", args=[reference.pk])

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(delete_url, {"post": "yes"})

    assert response.status_code == 302
    assert stored_files(media_root) == set()

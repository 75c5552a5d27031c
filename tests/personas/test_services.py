"""Gallery, lock and LoRA services: what they store, and that a refusal or a
failure leaves nothing behind."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile

from personas.models import ControlNetUnit, ControlType, Persona, ReferenceImage
from personas.selectors import persona_list
from personas.services import (
    control_unit_save,
    persona_create,
    persona_delete,
    persona_lock_appearance,
    persona_set_lora,
    persona_unlock_appearance,
    persona_update,
    reference_image_add,
    reference_image_delete,
    reference_set_primary,
)
from personas.uploads import UploadRejected
from tests import images
from tests.personas.conftest import stored_files, upload


def add(
    bare_persona: Persona, name: str = "ada.png", content: bytes | None = None, **kw
):
    return reference_image_add(
        persona=bare_persona,
        file=upload(name, images.png() if content is None else content),
        **kw,
    )


def test_an_image_is_stored_under_a_random_name_with_its_thumbnail(
    bare_persona, media_root
):
    user = get_user_model().objects.create_user("curator")

    reference = add(bare_persona, "Ada at the desk.png", uploaded_by=user)

    assert reference.image.name.startswith(f"references/{bare_persona.pk}/")
    assert reference.image.name.endswith(".png")
    assert "Ada" not in reference.image.name
    assert reference.thumbnail.name.endswith(".webp")
    assert stored_files(media_root) == {reference.image.name, reference.thumbnail.name}
    assert (reference.width, reference.height) == (64, 48)
    assert reference.original_filename == "Ada at the desk.png"
    assert reference.uploaded_by == user
    assert len(reference.sha256) == 64


def test_images_are_ordered_as_they_are_added(bare_persona):
    first = add(bare_persona, "a.png", images.png((64, 48)))
    second = add(bare_persona, "b.png", images.png((48, 64)))

    assert (first.order, second.order) == (1, 2)


@pytest.mark.parametrize(
    "sample", images.hostile_images(), ids=lambda sample: sample.name
)
def test_a_refused_image_leaves_nothing_behind(bare_persona, media_root, sample):
    with pytest.raises(UploadRejected) as refused:
        add(bare_persona, sample.name, sample.content)

    assert refused.value.code == sample.code
    assert stored_files(media_root) == set()
    assert not ReferenceImage.objects.exists()


def test_a_duplicate_is_refused_by_name_and_stores_nothing(bare_persona, media_root):
    add(bare_persona, "first.png")
    before = stored_files(media_root)

    with pytest.raises(ValidationError) as refused:
        add(bare_persona, "again.png")

    assert refused.value.code == "duplicate"
    assert (
        '"again.png" is already in the gallery of "Ada Lovelace"'
        in (refused.value.messages[0])
    )
    assert stored_files(media_root) == before
    assert bare_persona.references.count() == 1


def test_the_same_image_may_be_in_two_personas(bare_persona):
    other = persona_create(name="Grace Hopper")

    add(bare_persona)
    add(other)

    assert ReferenceImage.objects.count() == 2


def test_a_failure_after_the_files_are_written_removes_them(bare_persona, media_root):
    with pytest.raises(ValidationError) as refused:
        add(bare_persona, caption="x" * 300)

    assert "caption" in refused.value.message_dict
    assert stored_files(media_root) == set()
    assert not ReferenceImage.objects.exists()


def test_a_new_primary_replaces_the_previous_one(bare_persona):
    first = add(bare_persona, "a.png", images.png((64, 48)), is_primary=True)
    second = add(bare_persona, "b.png", images.png((48, 64)), is_primary=True)
    first.refresh_from_db()

    assert (first.is_primary, second.is_primary) == (False, True)

    reference_set_primary(reference=first)
    second.refresh_from_db()

    assert bare_persona.primary_reference == first
    assert second.is_primary is False


def test_locking_needs_a_primary_reference(bare_persona):
    with pytest.raises(ValidationError) as refused:
        persona_lock_appearance(persona=bare_persona)
    assert refused.value.code == "lock_without_primary"

    add(bare_persona, is_primary=True)
    persona_lock_appearance(persona=bare_persona)
    bare_persona.refresh_from_db()
    assert bare_persona.appearance_locked

    persona_unlock_appearance(persona=bare_persona)
    bare_persona.refresh_from_db()
    assert not bare_persona.appearance_locked


def test_create_and_update_refuse_a_lock_without_primary(bare_persona, db):
    with pytest.raises(ValidationError) as refused:
        persona_create(name="Grace", appearance_locked=True)
    assert "appearance_locked" in refused.value.message_dict
    assert not Persona.objects.filter(name="Grace").exists()

    with pytest.raises(ValidationError):
        persona_update(persona=bare_persona, data={"appearance_locked": True})


def test_update_validates_settings(bare_persona):
    with pytest.raises(ValidationError) as refused:
        persona_update(persona=bare_persona, data={"steps": 0, "name": "Ada L."})

    assert "steps" in refused.value.message_dict
    bare_persona.refresh_from_db()
    assert bare_persona.name == "Ada Lovelace"


def test_lora_weights_are_stored_replaced_and_removed(
    bare_persona, media_root, django_capture_on_commit_callbacks
):
    first = images.safetensors_lora(rank=4)
    with django_capture_on_commit_callbacks(execute=True):
        persona_set_lora(
            persona=bare_persona, file=upload("my-portrait.safetensors", first)
        )
    first_name = bare_persona.lora_weights.name
    assert stored_files(media_root) == {first_name}
    # The stored name is the studio's own (hex), never the uploader's.
    assert first_name.startswith("loras/") and "portrait" not in first_name

    with django_capture_on_commit_callbacks(execute=True):
        persona_set_lora(
            persona=bare_persona,
            file=upload("ada2.safetensors", images.safetensors_lora(8)),
        )
    assert stored_files(media_root) == {bare_persona.lora_weights.name} != {first_name}

    with django_capture_on_commit_callbacks(execute=True):
        persona_set_lora(persona=bare_persona, file=None)
    bare_persona.refresh_from_db()
    assert (bare_persona.lora_weights.name, bare_persona.lora_sha256) == ("", "")
    assert stored_files(media_root) == set()


def test_refused_lora_weights_keep_the_previous_ones(bare_persona, media_root):
    persona_set_lora(
        persona=bare_persona, file=upload("ada.safetensors", images.safetensors_lora())
    )
    before = (bare_persona.lora_weights.name, bare_persona.lora_sha256)

    with pytest.raises(UploadRejected):
        persona_set_lora(
            persona=bare_persona,
            file=upload("ada.safetensors", images.pickled_checkpoint()),
        )

    bare_persona.refresh_from_db()
    assert (bare_persona.lora_weights.name, bare_persona.lora_sha256) == before
    assert stored_files(media_root) == {before[0]}


def test_deleting_removes_the_files_once_committed(
    bare_persona, media_root, django_capture_on_commit_callbacks
):
    kept = add(bare_persona, "a.png", images.png((64, 48)))
    gone = add(bare_persona, "b.png", images.png((48, 64)))

    with django_capture_on_commit_callbacks(execute=True):
        reference_image_delete(reference=gone)
    assert stored_files(media_root) == {kept.image.name, kept.thumbnail.name}

    unit = ControlNetUnit(persona=bare_persona, control_type=ControlType.OPENPOSE)
    unit.control_image = ContentFile(images.png(), name="pose.png")
    control_unit_save(unit=unit)
    with django_capture_on_commit_callbacks(execute=True):
        persona_delete(persona=bare_persona)
    assert stored_files(media_root) == set()
    assert not ReferenceImage.objects.exists()


def test_a_control_image_is_validated_and_a_replaced_one_removed(
    bare_persona, media_root, django_capture_on_commit_callbacks
):
    unit = ControlNetUnit(persona=bare_persona, control_type=ControlType.OPENPOSE)
    unit.control_image = ContentFile(images.jpeg_with_orientation(6), name="pose.jpg")
    control_unit_save(unit=unit)
    first_name = unit.control_image.name
    assert (unit.control_image.width, unit.control_image.height) == (48, 64)

    unit.control_image = ContentFile(images.png(), name="pose.png")
    with django_capture_on_commit_callbacks(execute=True):
        control_unit_save(unit=unit)
    assert stored_files(media_root) == {unit.control_image.name} != {first_name}

    unit.control_image = ContentFile(images.svg_with_script(), name="pose.svg")
    with pytest.raises(UploadRejected):
        control_unit_save(unit=unit)
    assert stored_files(media_root) == {ControlNetUnit.objects.get().control_image.name}


def test_persona_list_counts_the_gallery_in_constant_queries(
    bare_persona, django_assert_num_queries
):
    add(bare_persona, "a.png", images.png((64, 48)), is_primary=True)
    add(bare_persona, "b.png", images.png((48, 64)))
    for index in range(3):
        add(persona_create(name=f"Extra {index}"), is_primary=True)

    with django_assert_num_queries(2):
        rows = {
            bare_persona.name: (
                bare_persona.gallery_count,
                len(bare_persona.primary_references),
            )
            for bare_persona in persona_list()
        }

    assert rows["Ada Lovelace"] == (2, 1)
    assert rows["Extra 0"] == (1, 1)

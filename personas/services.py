"""Writes for personas and their galleries (reads live in ``selectors``).

Every upload goes through the one validation path (``uploads``, ``lora``). Files
are written through the storage API inside the database transaction; if anything
fails before it commits, the files written so far are deleted again, so a
refused or failed upload leaves nothing behind (``personas.files``). Files of
deleted rows are removed once the deletion commits, by the receiver that
``personas.apps`` connects: it also sees the rows a deletion cascades to.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Max, QuerySet
from django.utils.text import slugify

from generation.engine.config import engine_config_from_settings
from personas.face_analysis import reference_queue_analysis
from personas.files import files_delete_on_commit, written_files_removed_on_failure
from personas.lora import (
    ValidatedLora,
    base_model_traits,
    check_lora_fits_base_model,
    validate_lora_upload,
)
from personas.models import (
    ControlNetUnit,
    LoraSource,
    Persona,
    PersonaLoraVersion,
    ReferenceImage,
    ReferenceRole,
)
from personas.uploads import ValidatedImage, validate_image_upload

REFERENCE_FIELDS = frozenset({"role", "caption", "order", "is_primary"})


# --- Personas -----------------------------------------------------------------
#
# The persona rules, each checked here and only here; forms call these checks to
# show the message on the field it concerns, and every write calls them again:
# - a locked appearance needs a primary reference image (``lock_without_primary``);
# - the primary image of a locked persona stays primary until another image is
#   (``primary_of_locked_persona``): it cannot be unmarked or deleted;
# - an image is in a gallery once (``duplicate``); one image is primary at most
#   (marking one primary unmarks the previous one);
# - the method is one the base model's family and configuration can run
#   (``family_method``; checked by every save that sets the method or the base
#   model: the admin, ``persona_create``/``persona_update`` and so the gallery's
#   "use this value"), and an enabled ControlNet unit's type has a ControlNet
#   of the model's family (``no_controlnet``); a unit's preprocessor options are
#   ones its preprocessor takes (``preprocessor_options``): the engine's plan
#   check, which reads configs and headers only;
# - a true CFG scale only where the base model's family has true CFG (FLUX.1,
#   Qwen-Image; ``family_true_cfg``).


def persona_check_lockable(
    *, persona: Persona, has_primary: bool | None = None
) -> None:
    """Refuse to lock an appearance without a primary reference image.

    ``has_primary`` is what a form saving the gallery at the same time knows;
    None asks the database.
    """
    if has_primary is None:
        has_primary = bool(
            persona.pk and persona.references.filter(is_primary=True).exists()
        )
    if not has_primary:
        raise ValidationError(
            "Locking the appearance needs a primary reference image: add one to "
            "the gallery and mark it primary, or leave the appearance unlocked.",
            code="lock_without_primary",
        )


def persona_check_method(*, base_model: str, method: str) -> None:
    """Refuse a method the base model cannot run here (its family has no
    pipeline for it, no ControlNet or IP-Adapter of its family is configured),
    with the engine's reason."""
    from generation.engine.errors import EngineError
    from generation.engine.plan import method_problem

    config = engine_config_from_settings(settings)
    if base_model not in config.models:
        return  # the base-model field says so
    try:
        model = base_model_traits(base_model)
    except EngineError:
        model = None  # files of no served family: the system check says so
    problem = method_problem(method, base_model, config, model)
    if problem is not None:
        raise ValidationError(problem, code="family_method")


def persona_check_true_cfg(*, base_model: str, true_cfg_scale: float | None) -> None:
    """Refuse a true CFG scale for a base model whose family has no true CFG
    (Stable Diffusion guides with ``guidance_scale``), with the engine's reason
    (``families.true_cfg_problem``). Not judged when the family cannot be told
    here."""
    from generation.engine.errors import EngineError
    from generation.engine.families import true_cfg_problem
    from personas.lora import base_model_traits

    if true_cfg_scale is None:
        return
    try:
        model = base_model_traits(base_model)
    except EngineError:
        return  # files of no served family: the system check says so
    problem = None if model is None else true_cfg_problem(model.family)
    if problem is not None:
        raise ValidationError(problem, code="family_true_cfg")


@transaction.atomic
def persona_create(*, name: str, slug: str = "", **fields: Any) -> Persona:
    """Create a persona; ``fields`` are any other Persona fields."""
    return persona_save(
        persona=Persona(name=name, slug=slug or slugify(name), **fields)
    )


@transaction.atomic
def persona_update(*, persona: Persona, data: dict[str, Any]) -> Persona:
    """Change persona fields (not the LoRA file: see :func:`persona_set_lora`)."""
    if {"lora_weights", "lora_sha256"} & set(data):
        raise ValueError("LoRA weights are changed with persona_set_lora.")
    for field_name, value in data.items():
        setattr(persona, field_name, value)
    return persona_save(persona=persona)


@transaction.atomic
def persona_save(
    *, persona: Persona, gallery_has_primary: bool | None = None
) -> Persona:
    """Check and save a new or changed persona whose fields are already set (by
    the admin's form, say).

    ``gallery_has_primary`` is whether the gallery saved together with it (the
    admin's inline) has a primary image; None judges the stored gallery.
    """
    if persona.appearance_locked:
        try:
            persona_check_lockable(persona=persona, has_primary=gallery_has_primary)
        except ValidationError as error:
            raise ValidationError({"appearance_locked": error}) from None
    try:
        persona_check_true_cfg(
            base_model=persona.base_model, true_cfg_scale=persona.true_cfg_scale
        )
    except ValidationError as error:
        raise ValidationError({"true_cfg_scale": error}) from None
    persona.full_clean()
    if _method_or_model_changed(persona):
        try:
            persona_check_method(base_model=persona.base_model, method=persona.method)
        except ValidationError as error:
            raise ValidationError({"method": error}) from None
    persona.save()
    return persona


def _method_or_model_changed(persona: Persona) -> bool:
    """Whether a save sets the method or the base model (a new persona sets
    both): only then is the method checked against the model, so that a
    persona whose model lost an adapter since can still be saved otherwise
    (its runs are refused at generate, with the reason)."""
    if persona.pk is None:
        return True
    stored = (
        Persona.objects.filter(pk=persona.pk)
        .values_list("method", "base_model")
        .first()
    )
    return stored != (persona.method, persona.base_model)


@transaction.atomic
def persona_lock_appearance(*, persona: Persona) -> Persona:
    persona_check_lockable(persona=persona)
    persona.appearance_locked = True
    persona.save(update_fields=["appearance_locked", "updated_at"])
    return persona


@transaction.atomic
def persona_unlock_appearance(*, persona: Persona) -> Persona:
    persona.appearance_locked = False
    persona.save(update_fields=["appearance_locked", "updated_at"])
    return persona


def persona_set_lora(*, persona: Persona, file: File | None) -> Persona:
    """Store new LoRA weights (validated: the upload checks and the fit to the
    persona's base model) for a persona, or remove them (None): the weights its
    generations use.

    The replaced file is deleted once the change commits. Removing them leaves
    no LoRA version active. A staff upload goes through :func:`lora_version_add`,
    which keeps the file as a version too.
    """
    lora = None if file is None else _lora_for(persona, file)
    with written_files_removed_on_failure() as written, transaction.atomic():
        files_delete_on_commit([persona.lora_weights])
        if lora is None:
            persona.lora_weights = ""
            persona.lora_sha256 = ""
            persona.lora_versions.filter(is_active=True).update(is_active=False)
        else:
            written.save(persona.lora_weights, lora.name, lora)
            persona.lora_sha256 = lora.sha256
        persona.save(update_fields=["lora_weights", "lora_sha256", "updated_at"])
    return persona


def _lora_for(persona: Persona, file: File) -> ValidatedLora:
    """``file`` through the upload checks and, for the persona's base model,
    the family and layer checks (``personas.lora``): every way a LoRA reaches a
    persona (the admin, a training run, a script) refuses what would first
    fail at generation, with the same message."""
    lora = validate_lora_upload(file)
    if persona.base_model:
        check_lora_fits_base_model(lora, persona.base_model)
    return lora


# --- LoRA versions ----------------------------------------------------------------


def lora_version_add(
    *,
    persona: Persona,
    file: File,
    source: str = LoraSource.UPLOADED,
    label: str = "",
    user: AbstractBaseUser | None = None,
) -> PersonaLoraVersion:
    """Keep a LoRA file (validated: the upload checks and the fit to the
    persona's base model) as the persona's next
    version, uploaded or trained, and make it the active one. Earlier versions
    are kept."""
    lora = _lora_for(persona, file)
    with written_files_removed_on_failure() as written, transaction.atomic():
        _lock_persona_row(persona.pk)
        last = persona.lora_versions.aggregate(Max("number"))["number__max"]
        version = PersonaLoraVersion(
            persona=persona,
            number=(last or 0) + 1,
            sha256=lora.sha256,
            source=source,
            label=label[:120],
            created_by=user,
        )
        written.save(version.weights, lora.name, lora)
        version.full_clean(exclude=["weights"])
        version.save()
        lora_version_activate(version=version)
    return version


@transaction.atomic
def lora_version_activate(*, version: PersonaLoraVersion) -> PersonaLoraVersion:
    """Make ``version`` the persona's active LoRA: the one generations use.

    The persona gets its own copy of the weights through ``persona_set_lora``
    (validated, the replaced file deleted on commit), so that replacing or
    removing the persona's LoRA later never deletes a kept version's file.
    """
    PersonaLoraVersion.objects.filter(persona_id=version.persona_id).exclude(
        pk=version.pk
    ).update(is_active=False)
    with version.weights.open("rb") as stored:
        weights = stored.read()
    name = f"{version.persona.slug}-lora-v{version.number}.safetensors"
    persona_set_lora(persona=version.persona, file=ContentFile(weights, name=name))
    PersonaLoraVersion.objects.filter(pk=version.pk).update(is_active=True)
    version.is_active = True
    return version


@transaction.atomic
def lora_version_delete(*, version: PersonaLoraVersion) -> None:
    """Delete a LoRA version that is not the active one; its file goes once the
    deletion commits (``personas.apps``' receiver)."""
    if version.is_active:
        raise ValidationError(
            "%(version)s is the active LoRA: make another version active first.",
            code="active",
            params={"version": version},
        )
    version.delete()


@transaction.atomic
def persona_delete(*, persona: Persona) -> None:
    """Delete a persona with everything it owns (its gallery, units and
    generations), then, once that commits, all their files."""
    persona.delete()


# --- The reference gallery ----------------------------------------------------


def reference_check_not_duplicate(*, persona: Persona, image: ValidatedImage) -> None:
    """Refuse an image whose content is already in the persona's gallery."""
    existing = (
        persona.references.filter(sha256=image.sha256).first() if persona.pk else None
    )
    if existing is not None:
        raise ValidationError(
            '"%(name)s" is already in the gallery of "%(persona)s" (reference '
            "#%(reference)s): nothing was added; choose a different image.",
            code="duplicate",
            params={
                "name": image.original_name,
                "persona": persona.name,
                "reference": existing.pk,
            },
        )


def reference_image_add(
    *,
    persona: Persona,
    file: File,
    role: str = ReferenceRole.OTHER,
    caption: str = "",
    is_primary: bool = False,
    order: int | None = None,
    uploaded_by: AbstractBaseUser | None = None,
) -> ReferenceImage:
    """Validate an image and add it to the gallery, with its thumbnail.

    A primary image replaces the previous primary. Refused or failed uploads
    leave neither a row nor a file.
    """
    image = validate_image_upload(file)
    with written_files_removed_on_failure() as written, transaction.atomic():
        _lock_persona_row(persona.pk)
        reference_check_not_duplicate(persona=persona, image=image)
        if order is None:
            order = (persona.references.aggregate(last=Max("order"))["last"] or 0) + 1
        reference = ReferenceImage(
            persona=persona,
            role=role,
            caption=caption,
            order=order,
            sha256=image.sha256,
            original_filename=image.original_name,
            uploaded_by=uploaded_by,
        )
        written.save(reference.image, image.name, image)
        written.save(
            reference.thumbnail, "thumbnail.webp", ContentFile(image.thumbnail)
        )
        if is_primary:
            _demote_primary(persona=persona)
            reference.is_primary = True
        reference.full_clean()
        reference.save()
        reference_queue_analysis(reference=reference)
    return reference


def reference_check_keeps_primary(*, reference: ReferenceImage) -> None:
    """Refuse to unmark or delete the primary image of a locked persona, as
    stored now: its appearance is locked to that image until another is primary.
    """
    if not reference.pk:
        return
    locked_to_it = ReferenceImage.objects.filter(
        pk=reference.pk, is_primary=True, persona__appearance_locked=True
    ).exists()
    if locked_to_it:
        raise ValidationError(
            "The appearance of %(persona)s is locked to this image: mark "
            "another image primary first, or unlock the appearance.",
            code="primary_of_locked_persona",
            params={"persona": reference.persona},
        )


def reference_check_update(*, reference: ReferenceImage, data: dict[str, Any]) -> None:
    """The checks of :func:`reference_update`, for a form to show before saving."""
    if data.get("is_primary", True) is False:
        reference_check_keeps_primary(reference=reference)


@transaction.atomic
def reference_update(*, reference: ReferenceImage, data: dict[str, Any]) -> None:
    """Change a reference's role, caption, order or primary flag.

    Marking it primary unmarks the previous primary; the primary of a locked
    persona cannot be unmarked (:func:`reference_check_keeps_primary`).
    """
    unknown = set(data) - REFERENCE_FIELDS
    if unknown:
        raise ValueError(f"reference_update cannot change {sorted(unknown)}")
    _lock_persona_row(reference.persona_id)
    reference_check_update(reference=reference, data=data)
    for field_name, value in data.items():
        setattr(reference, field_name, value)
    if reference.is_primary:
        _demote_primary(persona=reference.persona, keep=reference)
    reference.full_clean()
    reference.save()


@transaction.atomic
def reference_set_primary(*, reference: ReferenceImage) -> None:
    reference_update(reference=reference, data={"is_primary": True})


@transaction.atomic
def reference_image_delete(*, reference: ReferenceImage) -> None:
    """Delete a reference, then its image and thumbnail once that commits.

    The primary of a locked persona is refused
    (:func:`reference_check_keeps_primary`).
    """
    _lock_persona_row(reference.persona_id)
    reference_check_keeps_primary(reference=reference)
    reference.delete()


@transaction.atomic
def references_set_role(*, references: QuerySet[ReferenceImage], role: str) -> int:
    """Give every reference of ``references`` the role ``role`` (one update,
    for a gallery of any size); return how many were changed."""
    if role not in ReferenceRole.values:
        raise ValidationError(
            "Unknown role %(role)s: choose one of %(roles)s.",
            code="bad_role",
            params={"role": role, "roles": ", ".join(ReferenceRole.values)},
        )
    return references.exclude(role=role).update(role=role)


def _lock_persona_row(persona_id: int) -> None:
    """Serialise changes to one persona's gallery (the primary, duplicates)."""
    Persona.objects.select_for_update().only("pk").get(pk=persona_id)


def _demote_primary(*, persona: Persona, keep: ReferenceImage | None = None) -> None:
    others = persona.references.filter(is_primary=True)
    if keep is not None:
        others = others.exclude(pk=keep.pk)
    others.update(is_primary=False)


# --- ControlNet units -----------------------------------------------------------


def control_unit_check(*, unit: ControlNetUnit, base_model: str) -> None:
    """Refuse a unit's preprocessor options that its preprocessor does not take
    (``preprocessor_options``) and, when it is enabled, a control type that has
    no ControlNet of ``base_model``'s family configured (``no_controlnet``)."""
    from generation.engine.errors import EngineError
    from generation.engine.plan import control_type_problem
    from generation.engine.preprocessors import validate_control_unit
    from generation.engine.requests import ControlType, ControlUnitInput

    errors = {}
    if isinstance(unit.preprocessor_options, dict) and unit.control_type:
        try:
            validate_control_unit(
                ControlUnitInput(
                    ControlType(unit.control_type),
                    preprocessor_options=unit.preprocessor_options,
                )
            )
        except EngineError as error:
            errors["preprocessor_options"] = ValidationError(
                str(error), code="preprocessor_options"
            )
    config = engine_config_from_settings(settings)
    if unit.enabled and unit.control_type and base_model in config.models:
        try:
            model = base_model_traits(base_model)
        except EngineError:
            model = None
        problem = control_type_problem(unit.control_type, base_model, config, model)
        if problem is not None:
            errors["control_type"] = ValidationError(problem, code="no_controlnet")
    if errors:
        raise ValidationError(errors)


def control_unit_save(*, unit: ControlNetUnit) -> ControlNetUnit:
    """Save a unit; a new control image is validated, a replaced one deleted.

    The replaced or cleared control image is deleted once the change commits; a
    new one is removed again if the save fails.
    """
    stored = ControlNetUnit.objects.filter(pk=unit.pk).first() if unit.pk else None
    with written_files_removed_on_failure() as written, transaction.atomic():
        if unit.control_image and not unit.control_image._committed:
            image = validate_image_upload(unit.control_image.file)
            written.save(unit.control_image, image.name, image)
        if stored is not None and stored.control_image.name != unit.control_image.name:
            files_delete_on_commit([stored.control_image])
        unit.full_clean()
        control_unit_check(unit=unit, base_model=unit.persona.base_model)
        unit.save()
    return unit


@transaction.atomic
def control_unit_delete(*, unit: ControlNetUnit) -> None:
    """Delete a ControlNet unit, then its ready-made control image."""
    unit.delete()


def reference_size_warning(*, reference: ReferenceImage, base_model: str) -> str | None:
    """A warning (not a refusal) for a reference smaller than the base model's
    family works at (its smallest native size): it is upscaled to the working
    size, and comes out soft. None when it is large enough or the family is
    not known here."""
    from generation.engine.families import UnknownFamily

    try:
        traits = base_model_traits(base_model)
    except UnknownFamily:
        return None
    if traits is None:
        return None
    family_row = traits.family
    native_width, native_height = min(
        family_row.native_sizes, key=lambda size: size[0] * size[1]
    )
    if reference.width * reference.height >= native_width * native_height:
        return None
    name = reference.original_filename or f"#{reference.pk}"
    return (
        f'"{name}" is {reference.width} × {reference.height}, smaller than '
        f"{family_row.label}'s native {native_width} × {native_height}: it is "
        "upscaled to the working size and may come out soft. It was added; a "
        "larger image keeps more detail."
    )

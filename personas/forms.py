"""Admin forms: upload fields on the one validation path, and gallery formsets.

Forms validate by calling the checks of ``personas.services``, where every rule
lives, to show its message on the field it concerns; saving goes through the
same services, which check again, so the admin, the import command and any
other caller store files, keep the rules and clean up the same way.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db.models.fields.files import FieldFile
from django.utils.html import format_html

from personas.lora import (
    ValidatedLora,
    base_model_traits,
    check_lora_fits_base_model,
    validate_lora_upload,
)
from personas.models import (
    ConsistencyMethod,
    ControlNetUnit,
    Persona,
    ReferenceImage,
    ReferenceRole,
    base_model_choices,
)
from personas.services import (
    control_unit_check,
    control_unit_delete,
    control_unit_save,
    persona_check_lockable,
    persona_check_method,
    persona_check_true_cfg,
    reference_check_not_duplicate,
    reference_check_update,
    reference_image_add,
    reference_image_delete,
    reference_update,
)
from personas.staging import (
    staged_discard_on_commit,
    staged_upload,
    upload_stage,
)
from personas.uploads import (
    ACCEPTED_CONTENT_TYPES,
    ValidatedImage,
    validate_image_upload,
)
from personas.validators import validate_prompt_text


class ImageFileInput(forms.ClearableFileInput):
    """The image file input; under it, the upload kept from a save that failed
    (``kept_name``, set by ``ReferenceImageFormSet.stage_accepted_uploads``)."""

    kept_name: str | None = None

    def render(self, name: str, value: Any, attrs: Any = None, renderer: Any = None):
        rendered = super().render(name, value, attrs, renderer)
        if not self.kept_name:
            return rendered
        return format_html(
            '{}<p class="help staged-upload">Kept from the last save: '
            "<strong>{}</strong> (no need to pick it again)</p>",
            rendered,
            self.kept_name,
        )


class ImageUploadField(forms.FileField):
    """A file field whose uploads go through ``validate_image_upload``.

    It cleans to a :class:`ValidatedImage`; a file already stored (a disabled
    field on an existing row) is returned as it is: it passed when uploaded.
    """

    widget = ImageFileInput(attrs={"accept": ACCEPTED_CONTENT_TYPES})

    def __init__(self, **kwargs: Any) -> None:
        # Emptiness is one of our checks, with a message that names the file.
        super().__init__(allow_empty_file=True, **kwargs)

    def to_python(self, data: Any) -> ValidatedImage | FieldFile | None:
        if isinstance(data, FieldFile):
            return data
        file = super().to_python(data)
        return None if file is None else validate_image_upload(file)


def base_model_choices_with_family() -> list[tuple[str, str]]:
    """The base-model choices, each label followed by the model's family
    ("Tiny SDXL (sdxl)"), or by why the family is not known."""
    from generation.engine.families import UnknownFamily

    choices = []
    for key, label in base_model_choices():
        try:
            traits = base_model_traits(key)
        except UnknownFamily:
            family = "family unknown: see the system check"
        else:
            family = (
                "family unknown: its files are not on this host"
                if traits is None
                else traits.family.key
            )
        choices.append((key, f"{label} ({family})"))
    return choices


def base_model_family(base_model: str | None) -> Any:
    """The ``families.Family`` of a configured base model, or None where it
    cannot be told here (no files and no declared family, files of no family)."""
    from generation.engine.families import UnknownFamily

    try:
        traits = base_model_traits(base_model) if base_model else None
    except UnknownFamily:
        return None
    return None if traits is None else traits.family


def method_choices(base_model: str | None) -> list[tuple[str, str]]:
    """The method choices for a persona on ``base_model``: those its family runs
    (``families.methods_offered``; reference_edit only on flux and qwen-image);
    every method where the family cannot be told here."""
    from generation.engine.families import methods_offered

    family = base_model_family(base_model)
    if family is None:
        return list(ConsistencyMethod.choices)
    offered = {method.value for method in methods_offered(family)}
    return [choice for choice in ConsistencyMethod.choices if choice[0] in offered]


def offer_methods(field: forms.ChoiceField, base_model: str | None) -> None:
    """Show only the methods of the base model's family; the field still takes
    any method, so that one the family lacks gets the plan check's message
    (which names the family and its methods), not a bare "invalid choice"."""
    field.widget.choices = [
        choice for choice in method_choices(base_model) if choice in field.choices
    ] or field.widget.choices


class LoraUploadField(forms.FileField):
    """A file field whose uploads go through ``validate_lora_upload``."""

    widget = forms.ClearableFileInput(attrs={"accept": ".safetensors"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_empty_file=True, **kwargs)

    def to_python(self, data: Any) -> ValidatedLora | None:
        file = super().to_python(data)
        return None if file is None else validate_lora_upload(file)


class PersonaForm(forms.ModelForm):
    """The persona form; the LoRA file is replaced through ``persona_set_lora``."""

    lora_upload = LoraUploadField(
        label="upload LoRA weights",
        required=False,
        help_text="A .safetensors file; it replaces the current weights. Pickled "
        ".bin/.ckpt/.pt weights are refused: loading them runs code.",
    )
    lora_remove = forms.BooleanField(label="remove the LoRA weights", required=False)

    # True when the admin page also submits the gallery: then the gallery
    # formset, which sees the primary image being saved, judges the lock.
    gallery_in_formset = False

    class Meta:
        model = Persona
        fields = [
            "name",
            "slug",
            "description",
            "appearance",
            "appearance_locked",
            "method",
            "img2img_strength",
            "resize_mode",
            "ip_adapter_scale",
            "ip_adapter_face_crop",
            "guidance_scale",
            "true_cfg_scale",
            "steps",
            "scheduler",
            "negative_prompt",
            "width",
            "height",
            "base_model",
            "seed_policy",
            "seed",
            "lora_scale",
            "identity_threshold",
            "detailer_enabled",
            "detailer_strength",
            "detailer_prompt",
            "detailer_padding",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # These texts become part of every prompt.
        for name in ("appearance", "negative_prompt", "detailer_prompt"):
            if name in self.fields:
                self.fields[name].validators.append(validate_prompt_text)
        if "base_model" in self.fields:
            self.fields["base_model"].choices = base_model_choices_with_family()
        if "method" in self.fields:
            chosen = (
                self.data.get(self.add_prefix("base_model"))
                if self.is_bound
                else self.initial.get("base_model") or self.instance.base_model
            )
            offer_methods(self.fields["method"], chosen or None)

    def clean(self) -> dict[str, Any]:
        cleaned_data = super().clean()
        lora = cleaned_data.get("lora_upload")
        base_model = cleaned_data.get("base_model") or self.instance.base_model
        if lora and base_model:
            try:
                check_lora_fits_base_model(lora, base_model)
            except ValidationError as error:
                self.add_error("lora_upload", error)
        method = cleaned_data.get("method") or self.instance.method
        if method and base_model and "method" in self.fields:
            try:
                persona_check_method(base_model=base_model, method=method)
            except ValidationError as error:
                self.add_error("method", error)
        if base_model and cleaned_data.get("true_cfg_scale") is not None:
            try:
                persona_check_true_cfg(
                    base_model=base_model,
                    true_cfg_scale=cleaned_data["true_cfg_scale"],
                )
            except ValidationError as error:
                self.add_error("true_cfg_scale", error)
        if cleaned_data.get("lora_upload") and cleaned_data.get("lora_remove"):
            self.add_error(
                "lora_remove",
                ValidationError(
                    "Either upload new LoRA weights or remove them, not both.",
                    code="lora_upload_and_remove",
                ),
            )
        if cleaned_data.get("appearance_locked") and not self.gallery_in_formset:
            try:
                persona_check_lockable(persona=self.instance)
            except ValidationError as error:
                self.add_error("appearance_locked", error)
        return cleaned_data


class ReferenceImageForm(forms.ModelForm):
    """One gallery image. The file is set once, on upload; primary is a choice
    the service applies (marking one primary unmarks the previous one). A new
    row may carry an upload kept from a save that failed (``staged``) instead
    of a file."""

    image = ImageUploadField(label="image")
    primary = forms.BooleanField(label="primary", required=False)
    staged = forms.CharField(required=False, widget=forms.HiddenInput)

    class Meta:
        model = ReferenceImage
        fields = ["image", "role", "caption", "order"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # In ``initial`` (not the field's), so that view-only inline rows, which
        # the admin cleans to their initial data, still report their primary.
        self.initial.setdefault("primary", self.instance.is_primary)
        if self.instance.pk:
            self.fields["image"].disabled = True
        elif self.is_bound and self.data.get(self.add_prefix("staged")):
            self.fields["image"].required = False

    def clean(self) -> dict[str, Any]:
        cleaned_data = super().clean()
        token = cleaned_data.get("staged")
        if self.instance.pk or not token:
            return cleaned_data
        if "image" in cleaned_data and cleaned_data["image"] is None:
            image = staged_upload(token)
            if image is None:
                self.add_error(
                    "image",
                    ValidationError(
                        "The file kept from the last save is gone (kept for a "
                        "day at most): pick it again.",
                        code="staged_gone",
                    ),
                )
            else:
                cleaned_data["image"] = image
        return cleaned_data

    @property
    def accepted_upload(self) -> ValidatedImage | None:
        """A new row's upload that passed the checks, if any (after cleaning)."""
        if self.instance.pk or not hasattr(self, "cleaned_data"):
            return None
        image = self.cleaned_data.get("image")
        return image if isinstance(image, ValidatedImage) else None

    def reference_data(self) -> dict[str, Any]:
        """What ``reference_update`` changes on an existing reference."""
        return {
            "role": self.cleaned_data["role"],
            "caption": self.cleaned_data["caption"],
            "order": self.cleaned_data["order"],
            "is_primary": self.cleaned_data["primary"],
        }


class ReferenceImageAdminForm(ReferenceImageForm):
    """A gallery image on its own admin page, where the persona is chosen."""

    class Meta(ReferenceImageForm.Meta):
        fields = ["persona", "image", "role", "caption", "order"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A view-only page builds the form without its model fields.
        if self.instance.pk and "persona" in self.fields:
            self.fields["persona"].disabled = True

    def clean(self) -> dict[str, Any]:
        cleaned_data = super().clean()
        persona = cleaned_data.get("persona")
        image = cleaned_data.get("image")
        if persona is not None and isinstance(image, ValidatedImage):
            try:
                reference_check_not_duplicate(persona=persona, image=image)
            except ValidationError as error:
                self.add_error("image", error)
        if self.instance.pk and "primary" in cleaned_data:
            try:
                reference_check_update(
                    reference=self.instance,
                    data={"is_primary": cleaned_data["primary"]},
                )
            except ValidationError as error:
                self.add_error("primary", error)
        return cleaned_data


class _ServiceSavedFormSet(forms.BaseInlineFormSet):
    """An inline formset whose rows are saved by services, which always commit."""

    def save(self, commit: bool = True) -> list[Any]:
        if not commit:
            raise ValueError(f"{type(self).__name__} saves through services only.")
        return super().save(commit=True)


class ReferenceImageFormSet(_ServiceSavedFormSet):
    """The persona's gallery as submitted: one primary at most, the lock honoured
    against the images being saved, no image twice."""

    def __init__(
        self, *args: Any, uploaded_by: AbstractBaseUser | None = None, **kwargs: Any
    ) -> None:
        self.uploaded_by = uploaded_by
        super().__init__(*args, **kwargs)

    def kept_forms(self) -> list[ReferenceImageForm]:
        """Existing rows not being deleted, and new rows being added."""
        return [
            form
            for form in self.forms
            if not self._should_delete_form(form)
            and (form.instance.pk or form.has_changed())
        ]

    def has_primary(self) -> bool:
        """Whether the gallery as submitted has a primary image."""
        return any(form.cleaned_data.get("primary") for form in self.kept_forms())

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        kept = self.kept_forms()
        self._check_images_are_new(kept)
        primaries = [form for form in kept if form.cleaned_data.get("primary")]
        if len(primaries) > 1:
            raise ValidationError(
                "Only one image can be primary: untick 'primary' on all but one.",
                code="several_primaries",
            )
        if self.instance.appearance_locked:
            persona_check_lockable(persona=self.instance, has_primary=bool(primaries))

    def save(self, commit: bool = True) -> list[ReferenceImage]:
        """Save the gallery in the order that keeps a primary image throughout
        (the services refuse to leave a locked persona without one): the new
        primary first, then the other changes and additions, deletions last."""
        if not commit:
            raise ValueError(f"{type(self).__name__} saves through services only.")
        self.new_objects, self.changed_objects, self.deleted_objects = [], [], []
        kept = sorted(
            self.kept_forms(), key=lambda form: not form.cleaned_data.get("primary")
        )
        for form in kept:
            if form.instance.pk is None:
                self.new_objects.append(self.save_new(form))
            elif form.has_changed():
                self.save_existing(form, form.instance)
                self.changed_objects.append((form.instance, form.changed_data))
        for form in self.deleted_forms:
            if form.instance.pk is not None:
                self.delete_existing(form.instance)
                self.deleted_objects.append(form.instance)
        return [*self.new_objects, *(obj for obj, _ in self.changed_objects)]

    def _check_images_are_new(self, kept: list[ReferenceImageForm]) -> None:
        seen: dict[str, str] = {}
        for form in kept:
            image = form.cleaned_data.get("image")
            if not isinstance(image, ValidatedImage):
                continue
            if image.sha256 in seen:
                form.add_error(
                    "image",
                    ValidationError(
                        '"%(name)s" is the same image as "%(other)s" in this '
                        "upload: keep only one of them.",
                        code="duplicate",
                        params={
                            "name": image.original_name,
                            "other": seen[image.sha256],
                        },
                    ),
                )
                continue
            seen[image.sha256] = image.original_name
            try:
                reference_check_not_duplicate(persona=self.instance, image=image)
            except ValidationError as error:
                form.add_error("image", error)

    def stage_accepted_uploads(self) -> list[str]:
        """After a save that failed: keep every new row's accepted upload
        (``staging``) in its row, so that the page shows it kept and the next
        save adds it; the names kept."""
        data = self.data.copy()
        kept = []
        for form in self.forms:
            image = form.accepted_upload
            if image is None or self._should_delete_form(form):
                continue
            key = form.add_prefix("staged")
            staged_before = form.cleaned_data.get("staged")
            if not (staged_before and form.files.get(form.add_prefix("image")) is None):
                data[key] = upload_stage(image=image)
            form.fields["image"].widget.kept_name = image.original_name
            kept.append(image.original_name)
        for form in self.forms:
            form.data = data
        self.data = data
        return kept

    def save_new(self, form: ReferenceImageForm, commit: bool = True) -> ReferenceImage:
        data = form.reference_data()
        token = form.cleaned_data.get("staged")
        if token:
            # Whether this save used the kept file or a newly picked one, the
            # kept one has served.
            staged_discard_on_commit(token)
        return reference_image_add(
            persona=self.instance,
            file=form.cleaned_data["image"],
            role=data["role"],
            caption=data["caption"],
            order=data["order"],
            is_primary=data["is_primary"],
            uploaded_by=self.uploaded_by,
        )

    def save_existing(
        self, form: ReferenceImageForm, obj: ReferenceImage, commit: bool = True
    ) -> ReferenceImage:
        reference_update(reference=obj, data=form.reference_data())
        return obj

    def delete_existing(self, obj: ReferenceImage, commit: bool = True) -> None:
        reference_image_delete(reference=obj)


class ControlNetUnitForm(forms.ModelForm):
    """One ControlNet unit; its control image goes through the upload checks and
    its reference is one of the persona's own images."""

    control_image = ImageUploadField(
        label="ready-made control image",
        required=False,
        help_text=ControlNetUnit._meta.get_field("control_image").help_text,
    )

    class Meta:
        model = ControlNetUnit
        fields = [
            "control_type",
            "enabled",
            "conditioning_scale",
            "guidance_start",
            "guidance_end",
            "preprocessor_options",
            "reference",
            "control_image",
            "order",
        ]

    def __init__(self, *args: Any, persona: Persona | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.persona = persona
        self.fields["reference"].queryset = (
            persona.references.all()
            if persona is not None and persona.pk
            else ReferenceImage.objects.none()
        )

    def clean(self) -> dict[str, Any]:
        """The unit's options and type against the persona's base model (the
        engine's plan check), shown on their fields."""
        cleaned_data = super().clean()
        if self.persona is None or self.errors:
            return cleaned_data
        unit = ControlNetUnit(
            control_type=cleaned_data.get("control_type", ""),
            enabled=cleaned_data.get("enabled", False),
            preprocessor_options=cleaned_data.get("preprocessor_options") or {},
        )
        try:
            control_unit_check(unit=unit, base_model=self.persona.base_model)
        except ValidationError as error:
            for field_name, messages in error.error_dict.items():
                for message in messages:
                    self.add_error(field_name, message)
        return cleaned_data


class ControlNetUnitFormSet(_ServiceSavedFormSet):
    """The persona's ControlNet units; control images are cleaned up on change."""

    def get_form_kwargs(self, index: int | None) -> dict[str, Any]:
        return {**super().get_form_kwargs(index), "persona": self.instance}

    def save_new(self, form: ControlNetUnitForm, commit: bool = True) -> ControlNetUnit:
        unit = form.save(commit=False)
        unit.persona = self.instance
        return control_unit_save(unit=unit)

    def save_existing(
        self, form: ControlNetUnitForm, obj: ControlNetUnit, commit: bool = True
    ) -> ControlNetUnit:
        return control_unit_save(unit=form.save(commit=False))

    def delete_existing(self, obj: ControlNetUnit, commit: bool = True) -> None:
        control_unit_delete(unit=obj)


class ReferenceRoleForm(forms.Form):
    """The role to give the selected gallery images (a bulk action)."""

    role = forms.ChoiceField(choices=ReferenceRole.choices)

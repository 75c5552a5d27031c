"""The persona admin: fieldsets, the gallery and ControlNet units as inlines,
thumbnails served by the staff-only media view, and lock/unlock actions.

Everything that writes goes through ``personas.services``; images are shown
from the ``studio-media`` view, never from a public URL.
"""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.actions import delete_selected
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import unquote
from django.contrib.admin.widgets import ForeignKeyRawIdWidget
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.db.models.fields.files import FieldFile
from django.forms import ModelForm
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import ngettext

from generation.engine.config import engine_config_from_settings
from personas.forms import (
    ControlNetUnitForm,
    ControlNetUnitFormSet,
    PersonaForm,
    ReferenceImageAdminForm,
    ReferenceImageForm,
    ReferenceImageFormSet,
    ReferenceRoleForm,
)
from personas.models import ControlNetUnit, Persona, ReferenceImage
from personas.selectors import persona_list
from personas.services import (
    lora_version_add,
    persona_delete,
    persona_lock_appearance,
    persona_save,
    persona_set_lora,
    persona_unlock_appearance,
    reference_check_keeps_primary,
    reference_image_add,
    reference_image_delete,
    reference_size_warning,
    reference_update,
    references_set_role,
)
from personas.uploads import ACCEPTED_CONTENT_TYPES

LIST_THUMBNAIL_HEIGHT = 48
INLINE_THUMBNAIL_HEIGHT = 96
GALLERY_PAGE_SIZE = 24
"""Gallery images on the persona's page; the reference list pages the rest."""
SET_ROLE_SAMPLE = 20


def media_url(field_file: FieldFile) -> str:
    """The staff-only URL of a stored file."""
    return reverse("studio-media", kwargs={"path": field_file.name})


def image_tag(field_file: FieldFile | None, *, height: int) -> str:
    """An <img> of a stored image, or the admin's empty-value dash."""
    if not field_file:
        return admin.site.empty_value_display
    return format_html(
        '<img src="{}" height="{}" alt="" loading="lazy">',
        media_url(field_file),
        height,
    )


class GalleryPageFormSet(ReferenceImageFormSet):
    """One page of the gallery on the persona's page: the primary image and the
    newest others, ``page_size`` in all; the whole gallery, page by page, is the
    reference image changelist (``gallery_url``).

    A gallery of any size is saved this way: the page posts its own rows back
    (a few fields each, far below ``DATA_UPLOAD_MAX_NUMBER_FIELDS``), and a
    posted page is read back by the ids it posts, so that images added
    meanwhile do not shift it.
    """

    page_size = GALLERY_PAGE_SIZE
    accepted_content_types = ACCEPTED_CONTENT_TYPES

    def get_queryset(self) -> QuerySet[ReferenceImage]:
        if not hasattr(self, "_page"):
            gallery = super().get_queryset()
            if self.is_bound:
                page = gallery.filter(pk__in=self._posted_ids())
            else:
                page = gallery.order_by("-is_primary", "-uploaded_at", "-pk")[
                    : self.page_size
                ]
            self._page = self._queryset = page
        return self._page

    @property
    def gallery_size(self) -> int:
        """How many images the persona has (the changelist's annotation, when
        the persona came from it)."""
        if not self.instance.pk:
            return 0
        annotated = getattr(self.instance, "gallery_count", None)
        return annotated if annotated is not None else self.instance.references.count()

    @property
    def gallery_url(self) -> str:
        changelist = reverse("admin:personas_referenceimage_changelist")
        return f"{changelist}?persona__id__exact={self.instance.pk}"

    def _posted_ids(self) -> list[int]:
        ids = []
        for index in range(min(self.initial_form_count(), self.page_size)):
            value = self.data.get(f"{self.add_prefix(index)}-id", "")
            if str(value).isdigit():
                ids.append(int(value))
        return ids


class ReferenceImageInline(admin.TabularInline):
    model = ReferenceImage
    form = ReferenceImageForm
    formset = GalleryPageFormSet
    template = "admin/personas/persona/gallery_inline.html"
    fields = (
        "thumbnail_preview",
        "image",
        "staged",
        "primary",
        "role",
        "caption",
        "order",
        "dimensions",
    )
    readonly_fields = ("thumbnail_preview", "dimensions")
    extra = 1
    verbose_name = "reference image"
    verbose_name_plural = "gallery"

    @admin.display(description="thumbnail")
    def thumbnail_preview(self, reference: ReferenceImage) -> str:
        return image_tag(reference.thumbnail, height=INLINE_THUMBNAIL_HEIGHT)

    @admin.display(description="size")
    def dimensions(self, reference: ReferenceImage) -> str:
        return f"{reference.width} × {reference.height}" if reference.pk else ""


def _gallery_lookup_parameters(
    widget: ForeignKeyRawIdWidget, *, persona_id: int
) -> dict[str, str]:
    return {
        **ForeignKeyRawIdWidget.url_parameters(widget),
        GalleryOfPersonaFilter.parameter_name: str(persona_id),
    }


def controlnet_readiness(unit: ControlNetUnit) -> str:
    """Whether a unit can run here: its ControlNet (configured for its type and
    the persona's base model, of its family, its files found) and its
    annotator weights (present, not needed, or which are missing)."""
    return "; ".join(
        (
            _controlnet_state(unit.control_type, unit.persona.base_model),
            _annotator_state(unit),
        )
    )


def _controlnet_state(control_type: str, base_model: str) -> str:
    from generation.engine.errors import EngineError
    from generation.engine.plan import control_type_problem
    from generation.engine.sources import resolve_controlnet
    from personas.lora import base_model_traits

    config = engine_config_from_settings(settings)
    spec = config.controlnet_spec(control_type, base_model)
    if spec is None:
        controlnets = config.controlnets_for(base_model)
        return (
            f"Not configured: no ControlNet for {control_type!r} on model "
            f"{base_model!r} (configured: {', '.join(sorted(controlnets)) or 'none'});"
            " add one to STUDIO_CONTROLNETS or the model's controlnets "
            "(docs/models.md)"
        )
    try:
        resolve_controlnet(spec, config)
        model = base_model_traits(base_model)
    except EngineError as error:
        return f"Configured as {spec.source}, but not usable here: {error}"
    problem = control_type_problem(control_type, base_model, config, model)
    if problem is not None:
        return f"Configured as {spec.source}, but {problem}"
    return f"Ready: {spec.source}"


def _annotator_state(unit: ControlNetUnit) -> str:
    from generation.engine.errors import EngineError
    from generation.engine.plan import annotator_problem
    from generation.engine.preprocessors import PREPROCESSORS, preprocessor_name
    from generation.engine.requests import ControlType, ControlUnitInput

    if unit.control_image:
        return "annotator: none runs (a ready-made control image)"
    options = (
        unit.preprocessor_options if isinstance(unit.preprocessor_options, dict) else {}
    )
    unit_input = ControlUnitInput(
        ControlType(unit.control_type), preprocessor_options=options
    )
    name = preprocessor_name(unit_input)
    config = engine_config_from_settings(settings)
    try:
        problem = annotator_problem(unit_input, config)
    except EngineError as error:
        return f"annotator {name}: {error}"
    if problem is not None:
        return f"annotator {name}: not ready: {problem}"
    if name not in PREPROCESSORS:  # seg, with its model set
        return f"annotator {name}: ready (segmentation model {config.seg_model})"
    files = [filename for _, filename in PREPROCESSORS[name].weights]
    found = f"{', '.join(files)} present" if files else "needs no weights"
    return f"annotator {name}: ready ({found})"


class ControlNetUnitInline(admin.StackedInline):
    model = ControlNetUnit
    form = ControlNetUnitForm
    formset = ControlNetUnitFormSet
    fields = (
        ("control_type", "enabled", "order"),
        "controlnet_ready",
        ("conditioning_scale", "guidance_start", "guidance_end"),
        "reference",
        ("control_image", "control_preview"),
        "preprocessor_options",
    )
    readonly_fields = ("control_preview", "controlnet_ready")
    # An id with a lookup, not a list of every image of a gallery of thousands.
    raw_id_fields = ("reference",)
    extra = 0

    def get_formset(
        self, request: HttpRequest, obj: Persona | None = None, **kwargs: Any
    ) -> type:
        """The reference lookup opens this persona's gallery only."""
        formset = super().get_formset(request, obj, **kwargs)
        widget = formset.form.base_fields["reference"].widget
        if obj is not None and isinstance(widget, ForeignKeyRawIdWidget):
            widget.url_parameters = functools.partial(
                _gallery_lookup_parameters, widget, persona_id=obj.pk
            )
        return formset

    @admin.display(description="ControlNet")
    def controlnet_ready(self, unit: ControlNetUnit) -> str:
        if not unit.control_type:
            return admin.site.empty_value_display
        return controlnet_readiness(unit)

    @admin.display(description="preview")
    def control_preview(self, unit: ControlNetUnit) -> str:
        if unit.control_image:
            return image_tag(unit.control_image, height=INLINE_THUMBNAIL_HEIGHT)
        if unit.reference_id:
            return image_tag(unit.reference.thumbnail, height=INLINE_THUMBNAIL_HEIGHT)
        return admin.site.empty_value_display


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    form = PersonaForm
    inlines = (ReferenceImageInline, ControlNetUnitInline)
    list_display = (
        "primary_thumbnail",
        "name",
        "slug",
        "method",
        "base_model",
        "appearance_locked",
        "gallery_count",
        "updated_at",
    )
    list_display_links = ("primary_thumbnail", "name")
    list_filter = ("appearance_locked", "method", "base_model", "seed_policy")
    search_fields = ("name", "slug", "description", "appearance")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("lora_current",)
    actions = ("lock_appearance", "unlock_appearance")
    fieldsets = (
        ("Identity", {"fields": ("name", "slug", "description")}),
        ("Appearance", {"fields": ("appearance", "appearance_locked")}),
        (
            "Consistency",
            {
                "fields": (
                    "method",
                    ("img2img_strength", "resize_mode"),
                    ("ip_adapter_scale", "ip_adapter_face_crop"),
                    ("guidance_scale", "steps"),
                    "true_cfg_scale",
                    "scheduler",
                    "negative_prompt",
                    ("width", "height"),
                    "base_model",
                    "identity_threshold",
                )
            },
        ),
        (
            "Face detailer",
            {
                "fields": (
                    "detailer_enabled",
                    ("detailer_strength", "detailer_padding"),
                    "detailer_prompt",
                )
            },
        ),
        (
            "Advanced",
            {
                "classes": ("collapse",),
                "fields": (
                    ("seed_policy", "seed"),
                    "lora_current",
                    "lora_upload",
                    "lora_remove",
                    "lora_scale",
                ),
            },
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Persona]:
        return persona_list(queryset=super().get_queryset(request))

    def get_readonly_fields(
        self, request: HttpRequest, obj: Persona | None = None
    ) -> tuple[str, ...]:
        """Only staff with the lock permission lock, on the form as by action."""
        readonly = tuple(super().get_readonly_fields(request, obj))
        if not self.has_lock_permission(request):
            readonly += ("appearance_locked",)
        return readonly

    def get_form(
        self, request: HttpRequest, obj: Persona | None = None, **kwargs: Any
    ) -> type[PersonaForm]:
        form = super().get_form(request, obj, **kwargs)
        form.gallery_in_formset = any(
            isinstance(inline, ReferenceImageInline)
            for inline in self.get_inline_instances(request, obj)
        )
        return form

    def get_formset_kwargs(
        self, request: HttpRequest, obj: Persona, inline: Any, prefix: str
    ) -> dict[str, Any]:
        kwargs = super().get_formset_kwargs(request, obj, inline, prefix)
        if isinstance(inline, ReferenceImageInline):
            kwargs["uploaded_by"] = request.user
        return kwargs

    def save_model(
        self, request: HttpRequest, obj: Persona, form: PersonaForm, change: bool
    ) -> None:
        """Nothing yet: the persona is saved by ``save_related``, which knows the
        gallery being saved with it (a lock needs a primary image in it)."""

    def save_related(
        self, request: HttpRequest, form: PersonaForm, formsets: list, change: bool
    ) -> None:
        gallery = next(
            (fs for fs in formsets if isinstance(fs, ReferenceImageFormSet)), None
        )
        persona = form.instance
        persona_save(
            persona=persona,
            gallery_has_primary=None if gallery is None else gallery.has_primary(),
        )
        if form.cleaned_data.get("lora_upload"):
            upload = form.cleaned_data["lora_upload"]
            lora_version_add(
                persona=persona,
                file=upload,
                label=f"uploaded, {upload.name}",
                user=request.user,
            )
        elif form.cleaned_data.get("lora_remove"):
            persona_set_lora(persona=persona, file=None)
        super().save_related(request, form, formsets, change)
        for reference in getattr(gallery, "new_objects", []):
            warning = reference_size_warning(
                reference=reference, base_model=persona.base_model
            )
            if warning:
                messages.warning(request, warning)

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Persona | None = None,
    ) -> TemplateResponse:
        """A posted page shown again had something refused: the uploads of that
        save that passed are kept (staged in their rows) and the page says so."""
        if request.method == "POST":
            for inline in context.get("inline_admin_formsets", []):
                formset = inline.formset
                if isinstance(formset, ReferenceImageFormSet) and formset.is_bound:
                    kept = formset.stage_accepted_uploads()
                    if kept:
                        messages.info(
                            request,
                            ngettext(
                                "Kept the accepted upload %(names)s: fix what "
                                "is marked below and save; it is added then, "
                                "with no need to pick it again.",
                                "Kept the %(count)d accepted uploads "
                                "(%(names)s): fix what is marked below and "
                                "save; they are added then, with no need to "
                                "pick them again.",
                                len(kept),
                            )
                            % {"names": ", ".join(kept), "count": len(kept)},
                        )
        return super().render_change_form(
            request, context, add=add, change=change, form_url=form_url, obj=obj
        )

    def delete_model(self, request: HttpRequest, obj: Persona) -> None:
        persona_delete(persona=obj)

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[Persona]
    ) -> None:
        for persona in queryset:
            persona_delete(persona=persona)

    def has_lock_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.lock_persona")

    @admin.display(description="primary image")
    def primary_thumbnail(self, persona: Persona) -> str:
        primary = next(iter(persona.primary_references), None)
        return image_tag(primary and primary.thumbnail, height=LIST_THUMBNAIL_HEIGHT)

    @admin.display(description="gallery", ordering="gallery_count")
    def gallery_count(self, persona: Persona) -> int:
        return persona.gallery_count

    @admin.display(description="current LoRA weights")
    def lora_current(self, persona: Persona) -> str:
        if not persona.lora_weights:
            return admin.site.empty_value_display
        return format_html(
            '<a href="{}">{}</a> (SHA-256 {}…)',
            media_url(persona.lora_weights),
            persona.lora_weights.name,
            persona.lora_sha256[:12],
        )

    @admin.action(permissions=["lock"], description="Lock appearance")
    def lock_appearance(
        self, request: HttpRequest, queryset: QuerySet[Persona]
    ) -> None:
        locked = 0
        for persona in queryset:
            try:
                persona_lock_appearance(persona=persona)
            except ValidationError as error:
                self.message_user(
                    request,
                    f"{persona} was not locked: {' '.join(error.messages)}",
                    messages.ERROR,
                )
            else:
                locked += 1
        if locked:
            self.message_user(
                request,
                ngettext(
                    "Locked the appearance of %d persona.",
                    "Locked the appearance of %d personas.",
                    locked,
                )
                % locked,
                messages.SUCCESS,
            )

    @admin.action(permissions=["lock"], description="Unlock appearance")
    def unlock_appearance(
        self, request: HttpRequest, queryset: QuerySet[Persona]
    ) -> None:
        for persona in queryset:
            persona_unlock_appearance(persona=persona)
        count = len(queryset)
        self.message_user(
            request,
            ngettext(
                "Unlocked the appearance of %d persona.",
                "Unlocked the appearance of %d personas.",
                count,
            )
            % count,
            messages.SUCCESS,
        )


class GalleryOfPersonaFilter(admin.SimpleListFilter):
    """One persona's gallery (the link from the persona's page). It offers only
    the persona chosen, with "All" to leave it, not a list of every persona."""

    title = "persona"
    parameter_name = "persona__id__exact"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin
    ) -> list[tuple[str, str]]:
        value = self.value() or ""
        persona = Persona.objects.filter(pk=value).first() if value.isdigit() else None
        return [] if persona is None else [(str(persona.pk), str(persona))]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[ReferenceImage]
    ) -> QuerySet[ReferenceImage]:
        value = self.value()
        if not value:
            return queryset
        if not value.isdigit():
            return queryset.none()
        return queryset.filter(persona_id=int(value))


@admin.register(ReferenceImage)
class ReferenceImageAdmin(admin.ModelAdmin):
    form = ReferenceImageAdminForm
    list_display = (
        "thumbnail_preview",
        "__str__",
        "persona",
        "role",
        "is_primary",
        "dimensions",
        "uploaded_by",
        "uploaded_at",
    )
    list_display_links = ("thumbnail_preview", "__str__")
    list_filter = (GalleryOfPersonaFilter, "role", "is_primary")
    list_select_related = ("persona", "uploaded_by")
    list_per_page = 100
    actions = ("set_role",)
    search_fields = ("caption", "original_filename", "sha256", "persona__name")
    readonly_fields = (
        "thumbnail_preview",
        "dimensions",
        "original_filename",
        "sha256",
        "uploaded_by",
        "uploaded_at",
    )
    add_fields = ("persona", "image", "primary", "role", "caption", "order")
    change_fields = (
        "persona",
        "thumbnail_preview",
        "image",
        "primary",
        "role",
        "caption",
        "order",
        "dimensions",
        "original_filename",
        "sha256",
        "uploaded_by",
        "uploaded_at",
    )

    def get_fields(
        self, request: HttpRequest, obj: ReferenceImage | None = None
    ) -> tuple[str, ...]:
        return self.change_fields if obj else self.add_fields

    def save_form(
        self, request: HttpRequest, form: ReferenceImageAdminForm, change: bool
    ) -> ReferenceImage:
        if change:
            return super().save_form(request, form, change)
        data = form.reference_data()
        return reference_image_add(
            persona=form.cleaned_data["persona"],
            file=form.cleaned_data["image"],
            role=data["role"],
            caption=data["caption"],
            order=data["order"],
            is_primary=data["is_primary"],
            uploaded_by=request.user,
        )

    def save_model(
        self,
        request: HttpRequest,
        obj: ReferenceImage,
        form: ReferenceImageAdminForm,
        change: bool,
    ) -> None:
        if change:
            reference_update(reference=obj, data=form.reference_data())

    def save_related(
        self, request: HttpRequest, form: ModelForm, formsets: list, change: bool
    ) -> None:
        """Nothing to do: no many-to-many fields, no inlines, saved by services."""

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: Any = None
    ) -> HttpResponse:
        """Refuse, with the service's message, a deletion the service refuses
        (the primary of a locked persona), before the confirmation page."""
        reference = self.get_object(request, unquote(object_id))
        if reference is not None:
            try:
                reference_check_keeps_primary(reference=reference)
            except ValidationError as error:
                self.message_user(request, " ".join(error.messages), messages.ERROR)
                return HttpResponseRedirect(
                    reverse(
                        f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
                        args=[reference.pk],
                    )
                )
        return super().delete_view(request, object_id, extra_context)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        if "delete_selected" in actions:
            _, name, description = actions["delete_selected"]
            actions[name] = (type(self).delete_checked, name, description)
        return actions

    def delete_checked(
        self, request: HttpRequest, queryset: QuerySet[ReferenceImage]
    ) -> Any:
        """Django's "delete selected", unless the service refuses one of them:
        then nothing is deleted and the refusals are shown."""
        refusals = []
        for reference in queryset.select_related("persona"):
            try:
                reference_check_keeps_primary(reference=reference)
            except ValidationError as error:
                refusals.append(f"{reference}: {' '.join(error.messages)}")
        if refusals:
            self.message_user(
                request, "Nothing was deleted. " + " ".join(refusals), messages.ERROR
            )
            return None
        return delete_selected(self, request, queryset)

    @admin.action(permissions=["change"], description="Set the role…")
    def set_role(
        self, request: HttpRequest, queryset: QuerySet[ReferenceImage]
    ) -> TemplateResponse | None:
        """Give the selected images one role, after a page that asks which."""
        form = ReferenceRoleForm(request.POST if "post" in request.POST else None)
        if form.is_bound and form.is_valid():
            role = form.cleaned_data["role"]
            changing = list(queryset.exclude(role=role).select_related("persona"))
            changed = references_set_role(references=queryset, role=role)
            LogEntry.objects.log_actions(
                request.user.pk,
                changing,
                CHANGE,
                change_message=[{"changed": {"fields": ["role"]}}],
            )
            self.message_user(
                request,
                ngettext(
                    "Changed the role of %d image.",
                    "Changed the role of %d images.",
                    changed,
                )
                % changed,
                messages.SUCCESS,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Set the role of the selected images",
            "opts": self.opts,
            "form": form,
            "count": queryset.count(),
            "sample": queryset[:SET_ROLE_SAMPLE],
            "select_across": request.POST.get("select_across") == "1",
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "action_name": request.POST["action"],
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, "admin/personas/referenceimage/set_role.html", context
        )

    def delete_model(self, request: HttpRequest, obj: ReferenceImage) -> None:
        reference_image_delete(reference=obj)

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[ReferenceImage]
    ) -> None:
        for reference in queryset:
            reference_image_delete(reference=reference)

    @admin.display(description="thumbnail")
    def thumbnail_preview(self, reference: ReferenceImage) -> str:
        return image_tag(reference.thumbnail, height=LIST_THUMBNAIL_HEIGHT)

    @admin.display(description="size")
    def dimensions(self, reference: ReferenceImage) -> str:
        return f"{reference.width} × {reference.height}"

"""Generation in the admin: persona actions, the content admin, sweeps' contact sheets.

The generation app adds its actions to the persona admin itself (``personas``
never imports ``generation``): it re-registers ``Persona`` with a subclass of the
persona app's admin that adds "Generate…", "Strength sweep…" and "Regenerate".
The costly actions ask first on an intermediate page, the way Django's
``delete_selected`` does. Every action is declared with its permission
(``generation.generate_content`` or ``generation.review_content``), so staff
without it never see it, and calls a service; the admin holds no business rule.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.db.models.fields.files import FieldFile
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from generation import selectors, services
from generation.engine_settings import uses_tiny_model
from generation.models import Batch, Content, ContentStatus, ReviewState
from generation.parameters import MAX_SEED, GenerationOverrides
from generation.services import MAX_BATCH_COUNT
from personas.admin import media_url
from personas.models import ConsistencyMethod, Persona
from personas.validators import validate_prompt_text

GENERATE = "generation.generate_content"
REVIEW = "generation.review_content"
TINY_MODEL_NOTE = (
    "This studio runs the built-in tiny model (random weights): its images are "
    "noise. Configure STUDIO_MODELS for real images."
)


def _image(file: FieldFile | None, label: str, *, size: int) -> str:
    if not file:
        return format_html(
            '<span class="studio-no-image" style="display:inline-block;width:{0}px;'
            'height:{0}px;background:#eee" title="{1}: none"></span>',
            size,
            label,
        )
    return format_html(
        '<a href="{0}"><img src="{0}" alt="{1}" title="{1}" loading="lazy" '
        'style="width:{2}px;height:{2}px;object-fit:cover"></a>',
        media_url(file),
        label,
        size,
    )


def _report(
    request: HttpRequest,
    modeladmin: admin.ModelAdmin,
    items: QuerySet,
    action: Callable[[Any], Any],
    done: str,
) -> None:
    """Run a service on each selected object; one message for the successes and
    one per refusal (its message written for a person)."""
    succeeded = 0
    for item in items:
        try:
            action(item)
        except ValidationError as error:
            modeladmin.message_user(
                request, f"{item}: {' '.join(error.messages)}", messages.ERROR
            )
        else:
            succeeded += 1
    if succeeded:
        modeladmin.message_user(request, done.format(count=succeeded), messages.SUCCESS)


# --- Persona actions ----------------------------------------------------------------


class GenerateForm(forms.Form):
    """What "Generate…" asks for; empty overrides keep each persona's settings."""

    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), validators=[validate_prompt_text]
    )
    negative_prompt = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        validators=[validate_prompt_text],
    )
    count = forms.IntegerField(min_value=1, max_value=MAX_BATCH_COUNT, initial=1)
    method = forms.ChoiceField(
        required=False,
        choices=[("", "The persona's method"), *ConsistencyMethod.choices],
    )
    strength = forms.FloatField(
        required=False,
        min_value=0.0,
        max_value=1.0,
        help_text="img2img strength; empty keeps the persona's.",
    )
    seed = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_SEED,
        help_text="Empty follows the seed policy.",
    )

    def overrides(self) -> GenerationOverrides:
        data = self.cleaned_data
        return GenerationOverrides(
            method=data["method"] or None, strength=data["strength"], seed=data["seed"]
        )


class SweepForm(forms.Form):
    """What "Strength sweep…" asks for."""

    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), validators=[validate_prompt_text]
    )
    strengths = forms.CharField(
        initial="0.3, 0.5, 0.7, 0.9",
        help_text="img2img strengths, separated by commas.",
    )
    seed = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_SEED,
        help_text="One seed for the whole sweep; empty picks one.",
    )

    def clean_strengths(self) -> list[float]:
        try:
            strengths = [
                float(part) for part in self.cleaned_data["strengths"].split(",")
            ]
        except ValueError:
            raise ValidationError(
                "Write numbers between 0 and 1 separated by commas, e.g. 0.3, 0.5.",
                code="bad_strengths",
            ) from None
        services.validate_sweep_strengths(strengths)
        return strengths


def _persona_form_action(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Persona],
    *,
    form_class: type[forms.Form],
    title: str,
    run: Callable[[Persona, forms.Form], Any],
    done: str,
) -> TemplateResponse | None:
    """An action with an intermediate page (like ``delete_selected``): the first
    call shows ``form_class``; the confirmed post runs ``run`` per persona."""
    form = form_class(request.POST if "post" in request.POST else None)
    if form.is_valid():
        _report(request, modeladmin, queryset, lambda persona: run(persona, form), done)
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "form": form,
        "queryset": queryset,
        "opts": modeladmin.model._meta,
        "action_name": request.POST["action"],
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "media": modeladmin.media + form.media,
        "tiny_model_note": TINY_MODEL_NOTE if uses_tiny_model() else "",
    }
    return TemplateResponse(
        request, "admin/generation/persona_action_form.html", context
    )


@admin.action(permissions=["generate"], description="Generate…")
def generate(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Persona]
) -> TemplateResponse | None:
    def run(persona: Persona, form: GenerateForm) -> None:
        data = form.cleaned_data
        services.content_enqueue_batch(
            persona=persona,
            prompt=data["prompt"],
            negative_prompt=data["negative_prompt"],
            count=data["count"],
            overrides=form.overrides(),
            user=request.user,
        )

    return _persona_form_action(
        modeladmin,
        request,
        queryset,
        form_class=GenerateForm,
        title="Generate for the selected personas",
        run=run,
        done="Queued generations for {count} persona(s); follow them under Contents.",
    )


@admin.action(permissions=["generate"], description="Strength sweep…")
def strength_sweep(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Persona]
) -> TemplateResponse | None:
    def run(persona: Persona, form: SweepForm) -> None:
        data = form.cleaned_data
        services.content_strength_sweep(
            persona=persona,
            prompt=data["prompt"],
            strengths=data["strengths"],
            overrides=GenerationOverrides(seed=data["seed"]),
            user=request.user,
        )

    return _persona_form_action(
        modeladmin,
        request,
        queryset,
        form_class=SweepForm,
        title="Strength sweep for the selected personas",
        run=run,
        done="Queued strength sweeps for {count} persona(s); compare them under "
        "Batches.",
    )


@admin.action(permissions=["generate"], description="Regenerate latest (new seed)")
def regenerate_latest(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Persona]
) -> None:
    def run(persona: Persona) -> None:
        latest = selectors.content_latest_for_persona(persona=persona)
        if latest is None:
            raise ValidationError("it has no generation yet; use Generate… first.")
        services.content_regenerate(content=latest, user=request.user)

    _report(
        request,
        modeladmin,
        queryset,
        run,
        "Queued a new seed of the latest generation of {count} persona(s).",
    )


PersonaAdminBase = type(admin.site.get_model_admin(Persona))


class PersonaAdmin(PersonaAdminBase):
    """The persona app's admin, plus the generation actions."""

    actions = [
        *(PersonaAdminBase.actions or ()),
        generate,
        strength_sweep,
        regenerate_latest,
    ]

    def has_generate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(GENERATE)


admin.site.unregister(Persona)
admin.site.register(Persona, PersonaAdmin)


# --- Content --------------------------------------------------------------------------


@admin.register(Content)
class ContentAdmin(admin.ModelAdmin):
    """Generations: read-only records, changed only through their actions."""

    list_display = (
        "id",
        "before_after",
        "persona",
        "status_display",
        "method_display",
        "score_display",
        "review_state",
        "created_at",
    )
    list_display_links = ("id",)
    list_filter = (
        "status",
        "review_state",
        "method_used",
        "method_requested",
        "persona",
        "batch__kind",
        "created_at",
    )
    search_fields = ("prompt", "persona__name", "persona__slug", "rq_job_id")
    list_select_related = ("persona", "before_reference")
    date_hierarchy = "created_at"
    actions = (
        "regenerate",
        "regenerate_exactly",
        "cancel",
        "retry",
        "approve",
        "reject",
    )
    fieldsets = (
        (None, {"fields": ("preview", "persona", "batch", "regenerated_from")}),
        (
            "Request",
            {"fields": ("prompt", "negative_prompt", "method_requested", "seed")},
        ),
        (
            "Run",
            {
                "fields": (
                    "status_display",
                    "method_display",
                    "method_reason",
                    "attempts",
                    "error_message",
                    "error_detail_display",
                    "timings_display",
                    "rq_job_id",
                    "queue_name",
                    "worker_name",
                    "created_at",
                    "enqueued_at",
                    "started_at",
                    "finished_at",
                )
            },
        ),
        (
            "Consistency and review",
            {
                "fields": (
                    "score_display",
                    "score_detail_display",
                    "review_state",
                    "reviewed_by",
                    "reviewed_at",
                    "review_note",
                )
            },
        ),
        ("Reproducibility", {"fields": ("snapshot_display",)}),
    )
    readonly_fields = tuple(
        name for _, options in fieldsets for name in options["fields"]
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Generations start from the persona actions or the services, never a
        # hand-filled form.
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: Content | None = None
    ) -> bool:
        return False

    def has_generate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(GENERATE)

    def delete_model(self, request: HttpRequest, obj: Content) -> None:
        services.content_delete(content=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for content in queryset:
            services.content_delete(content=content)

    def has_review_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REVIEW)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "tiny_model_note": TINY_MODEL_NOTE if uses_tiny_model() else "",
        }
        return super().changelist_view(request, extra_context)

    # Columns and fields ------------------------------------------------------------

    @admin.display(description="before / after")
    def before_after(self, content: Content) -> str:
        before = content.before_thumbnail or (
            content.before_reference.thumbnail if content.before_reference else None
        )
        return format_html(
            '<span style="display:inline-flex;gap:4px">{}{}</span>',
            _image(before, "before", size=64),
            _image(content.output_thumbnail, "after", size=64),
        )

    @admin.display(description="status", ordering="status")
    def status_display(self, content: Content) -> str:
        if content.status == ContentStatus.RUNNING:
            return format_html(
                '<progress value="{}" max="{}" title="{}%"></progress> step {} of {}',
                content.progress_step,
                content.progress_total or 1,
                content.progress_percent,
                content.progress_step,
                content.progress_total or "?",
            )
        return format_html(
            '<span title="{}">{}</span>',
            content.error_message,
            content.get_status_display(),
        )

    @admin.display(description="method", ordering="method_used")
    def method_display(self, content: Content) -> str:
        if content.method_used:
            return content.get_method_used_display()
        return f"{content.get_method_requested_display()} (asked)"

    @admin.display(description="score", ordering="consistency_score")
    def score_display(self, content: Content) -> str:
        if content.consistency_score is None:
            return "–"
        return f"{content.consistency_score:.2f}"

    @admin.display(description="before, control, after")
    def preview(self, content: Content) -> str:
        panels = [
            (
                "reference (before)",
                content.before_reference.image if content.before_reference else None,
            ),
            *(
                (f"{control.get_control_type_display()} control", control.image)
                for control in content.control_images.all()
            ),
            ("output (after)", content.output_image),
        ]
        figures = format_html_join(
            "",
            '<figure style="margin:0">{}<figcaption>{}</figcaption></figure>',
            ((_image(file, label, size=256), label) for label, file in panels),
        )
        note = format_html("<p>{}</p>", TINY_MODEL_NOTE) if uses_tiny_model() else ""
        return format_html(
            '{}<div style="display:flex;gap:12px;flex-wrap:wrap">{}</div>',
            note,
            figures,
        )

    @admin.display(description="technical detail")
    def error_detail_display(self, content: Content) -> str:
        return _pre(content.error_detail) if content.error_detail else "–"

    @admin.display(description="timings (seconds)")
    def timings_display(self, content: Content) -> str:
        return _pre(content.timings) if content.timings else "–"

    @admin.display(description="score detail")
    def score_detail_display(self, content: Content) -> str:
        return _pre(content.score_detail) if content.score_detail else "–"

    @admin.display(description="snapshot")
    def snapshot_display(self, content: Content) -> str:
        return _pre(content.snapshot) if content.snapshot else "–"

    # Actions -----------------------------------------------------------------------

    @admin.action(permissions=["generate"], description="Regenerate (new seed)")
    def regenerate(self, request: HttpRequest, queryset: QuerySet[Content]) -> None:
        _report(
            request,
            self,
            queryset,
            lambda content: services.content_regenerate(
                content=content, user=request.user
            ),
            "Queued {count} regeneration(s) with new seeds.",
        )

    @admin.action(permissions=["generate"], description="Regenerate exactly")
    def regenerate_exactly(
        self, request: HttpRequest, queryset: QuerySet[Content]
    ) -> None:
        _report(
            request,
            self,
            queryset,
            lambda content: services.content_regenerate_exactly(
                content=content, user=request.user
            ),
            "Queued {count} exact regeneration(s).",
        )

    @admin.action(permissions=["generate"], description="Cancel")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Content]) -> None:
        _report(
            request,
            self,
            queryset,
            lambda content: services.content_cancel(content=content, user=request.user),
            "Cancelled {count} generation(s) (running ones stop at their next step).",
        )

    @admin.action(permissions=["generate"], description="Retry")
    def retry(self, request: HttpRequest, queryset: QuerySet[Content]) -> None:
        _report(
            request,
            self,
            queryset,
            lambda content: services.content_retry(content=content, user=request.user),
            "Queued {count} generation(s) again.",
        )

    @admin.action(permissions=["review"], description="Approve")
    def approve(self, request: HttpRequest, queryset: QuerySet[Content]) -> None:
        self._review(request, queryset, ReviewState.APPROVED)

    @admin.action(permissions=["review"], description="Reject")
    def reject(self, request: HttpRequest, queryset: QuerySet[Content]) -> None:
        self._review(request, queryset, ReviewState.REJECTED)

    def _review(
        self, request: HttpRequest, queryset: QuerySet[Content], state: str
    ) -> None:
        _report(
            request,
            self,
            queryset,
            lambda content: services.content_review(
                content=content, state=state, user=request.user
            ),
            f"Marked {{count}} generation(s) {ReviewState(state).label.lower()}.",
        )


def _pre(value: Any) -> str:
    text = (
        value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True)
    )
    return format_html(
        '<pre style="white-space:pre-wrap;max-height:32em;overflow:auto">{}</pre>', text
    )


# --- Batches and sweeps --------------------------------------------------------------


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    """Batches and strength sweeps, with a contact sheet to compare their outputs."""

    list_display = ("__str__", "kind", "persona", "prompt", "created_at")
    list_filter = ("kind", "persona")
    list_select_related = ("persona",)
    search_fields = ("prompt", "persona__name")
    fields = (
        "persona",
        "kind",
        "prompt",
        "strengths",
        "created_by",
        "created_at",
        "contact_sheet",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: Batch | None = None
    ) -> bool:
        return False

    def get_urls(self) -> list:
        use_strength = self.admin_site.admin_view(require_POST(self.use_strength_view))
        return [
            path(
                "<int:batch_id>/use-strength/<int:content_id>/",
                use_strength,
                name="generation_batch_use_strength",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="contact sheet")
    def contact_sheet(self, batch: Batch) -> str:
        can_save = batch.kind == "sweep"
        cells = []
        for content in selectors.batch_contents(batch=batch):
            label = (
                f"strength {content.request.get('strength', 0):g}"
                if can_save
                else f"seed {content.seed}"
            )
            caption = format_html(
                '{} · <a href="{}">#{}</a> · {} · score {}',
                label,
                content.get_absolute_url(),
                content.pk,
                content.get_status_display(),
                "–"
                if content.consistency_score is None
                else f"{content.consistency_score:.2f}",
            )
            button = ""
            if can_save and content.status == ContentStatus.SUCCEEDED:
                button = format_html(
                    '<button type="submit" form="use-strength-{}">Use this strength'
                    "</button>",
                    content.pk,
                )
            cells.append(
                (_image(content.output_thumbnail, label, size=192), caption, button)
            )
        return format_html(
            '<div style="display:flex;gap:12px;flex-wrap:wrap">{}</div>',
            format_html_join(
                "",
                '<figure style="margin:0">{}<figcaption>{}<br>{}</figcaption></figure>',
                cells,
            ),
        )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        batch = self.get_object(request, object_id)
        forms_for_buttons = (
            []
            if batch is None
            else [
                (
                    content.pk,
                    reverse(
                        "admin:generation_batch_use_strength",
                        args=[batch.pk, content.pk],
                    ),
                )
                for content in selectors.batch_contents(batch=batch)
            ]
        )
        extra_context = {
            **(extra_context or {}),
            "use_strength_forms": forms_for_buttons,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def use_strength_view(
        self, request: HttpRequest, batch_id: int, content_id: int
    ) -> HttpResponse:
        """Make a sweep row's strength the persona's img2img strength."""
        if not (
            self.has_view_permission(request)
            and request.user.has_perm("personas.change_persona")
        ):
            raise PermissionDenied("You may not see sweeps or change personas.")
        batch = get_object_or_404(Batch, pk=batch_id)
        content = get_object_or_404(Content, pk=content_id, batch=batch)
        strength = content.request["strength"]
        services.persona_save_strength(
            persona=batch.persona, strength=strength, user=request.user
        )
        self.message_user(
            request,
            f"{batch.persona} now uses img2img strength {strength:g}.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(
            reverse("admin:generation_batch_change", args=[batch.pk])
        )

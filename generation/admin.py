"""Generation in the admin: the persona actions, the content and batch admins.

Every action comes from the action table (``generation.actions``): declared with
``@admin.action(permissions=[...])`` so staff without the permission never see
it, run through ``actions.perform`` (the service call, its messages and its
history entry), and asked first on an intermediate page when it needs input or
starts costly work, the way Django's ``delete_selected`` does.

``personas`` never imports ``generation``, so this app adds its actions to the
persona admin through the admin site's documented registry: it takes the
registered persona admin (``AdminSite.get_model_admin``), extends it and
registers it again, as projects extend ``contrib.auth``'s ``UserAdmin``.

HTML lives in templates (``admin/generation/...``, each name an attribute a
subclass may override) styled by ``generation/admin.css``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import F, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse

from generation import actions, selectors, services
from generation.actions import StaffAction
from generation.engine.vocabulary import TINY_MODEL_NOTICE
from generation.engine_settings import uses_tiny_model
from generation.models import Batch, Content, ContentStatus, ReviewState
from personas.face_analysis import persona_gallery_health
from personas.models import Persona

ADMIN_CSS = {"all": ("generation/admin.css",)}
# Reference-health warnings shown as messages on a persona's page (the panel
# lists them all).
HEALTH_MESSAGES = 10


def admin_action(action: StaffAction) -> Callable[..., HttpResponse | None]:
    """The admin action of a table entry, for a ``ModelAdmin.actions`` list."""

    def run(
        modeladmin: StaffActionsAdmin, request: HttpRequest, queryset: QuerySet
    ) -> HttpResponse | None:
        return modeladmin.run_staff_action(request, queryset, action)

    run.__name__ = action.name
    return admin.action(
        permissions=[action.admin_permission], description=action.description
    )(run)


class StaffActionsAdmin:
    """A ``ModelAdmin`` mixin that runs the action table's entries: their
    permissions and their intermediate page."""

    action_form_template: str | list[str] = "admin/generation/action_form.html"

    def has_generate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(actions.GENERATE)

    def has_review_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(actions.REVIEW)

    def run_staff_action(
        self, request: HttpRequest, queryset: QuerySet, action: StaffAction
    ) -> HttpResponse | None:
        """Run ``action`` on the selected objects, after its intermediate page
        (its form, or a confirmation) when it has one: the confirmed page posts
        back with ``post=yes``, like ``delete_selected``'s."""
        confirmed = "post" in request.POST
        form = None
        if action.form is not None:
            form = action.form(request.POST if confirmed else None)
        if action.asks_first and not (confirmed and (form is None or form.is_valid())):
            return self.action_form_view(request, queryset, action, form)
        actions.perform(
            action,
            queryset,
            request=request,
            data=form.cleaned_data if form is not None else {},
        )
        return None

    def action_form_view(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        action: StaffAction,
        form: forms.Form | None,
    ) -> TemplateResponse:
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "title": f"{action.description.rstrip('…')} for the selected "
            f"{opts.verbose_name_plural}",
            "action": action,
            "form": form,
            "queryset": queryset,
            "opts": opts,
            "action_name": request.POST["action"],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + (form.media if form is not None else forms.Media()),
            "tiny_model_note": TINY_MODEL_NOTICE if uses_tiny_model() else "",
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.action_form_template, context)


# --- Persona actions ----------------------------------------------------------------

RegisteredPersonaAdmin = type(admin.site.get_model_admin(Persona))


class PersonaAdmin(StaffActionsAdmin, RegisteredPersonaAdmin):
    """The persona app's admin, plus the generation actions of the table."""

    actions = [
        *(RegisteredPersonaAdmin.actions or ()),
        *(admin_action(action) for action in actions.PERSONA_ACTIONS),
    ]

    def save_related(
        self, request: HttpRequest, form: Any, formsets: list, change: bool
    ) -> None:
        """Save, then warn of what would make the persona's next generation
        fail (the plan check; its gallery and units are saved by now)."""
        super().save_related(request, form, formsets, change)
        for warning in services.persona_plan_warnings(persona=form.instance):
            messages.warning(
                request,
                f"Generations of {form.instance} are sure to fail with these "
                f"settings: {warning}",
            )


    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The persona's page with its reference health (a panel, and a warning
        message for each problem found: no face, several faces, another
        person)."""
        persona = self.get_object(request, object_id)
        health = None if persona is None else persona_gallery_health(persona=persona)
        if request.method == "GET" and health is not None:
            for entry in health.warned[:HEALTH_MESSAGES]:
                for message in entry.messages:
                    messages.warning(
                        request, f"Reference #{entry.reference.pk}: {message}"
                    )
        return super().change_view(
            request,
            object_id,
            form_url,
            {**(extra_context or {}), "reference_health": health},
        )


admin.site.unregister(Persona)
admin.site.register(Persona, PersonaAdmin)


class IdentityFilter(admin.SimpleListFilter):
    """The identity filters of docs/identity.md: below 0.5 (dlib's same-person
    threshold), not the same person, no face, and the scoring states."""

    title = "identity"
    parameter_name = "identity"
    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (value, label) for value, (label, _) in selectors.IDENTITY_FILTERS.items()
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return selectors.content_identity_filter(queryset, self.value() or "")


# --- Content --------------------------------------------------------------------------


class ReviewStateFilter(admin.SimpleListFilter):
    """Review states of succeeded generations only (a failed or cancelled one
    is in none), as the gallery's filter and counts."""

    title = "review state"
    parameter_name = "review_state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> Any:
        return ReviewState.choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ReviewState.values:
            return queryset.filter(
                review_state=self.value(), status=ContentStatus.SUCCEEDED
            )
        return queryset


@admin.register(Content)
class ContentAdmin(StaffActionsAdmin, admin.ModelAdmin):
    """Generations: read-only records, changed only through their actions."""

    list_display = (
        "id",
        "before_after",
        "persona",
        "status_display",
        "method_display",
        "identity_display",
        "score_display",
        "review_display",
        "created_at",
    )
    list_display_links = ("id",)
    list_filter = (
        IdentityFilter,
        "status",
        ReviewStateFilter,
        "flagged",
        "method_used",
        "method_requested",
        "persona",
        "batch__kind",
        "created_at",
    )
    search_fields = ("prompt", "persona__name", "persona__slug", "rq_job_id")
    list_select_related = ("persona", "before_reference")
    date_hierarchy = "created_at"
    actions = [admin_action(action) for action in actions.CONTENT_ACTIONS]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "preview",
                    "persona",
                    "batch",
                    "regenerated_from",
                    "inpainted_from",
                )
            },
        ),
        (
            "Request",
            {"fields": ("prompt", "negative_prompt", "method_requested", "seed")},
        ),
        (
            "Run",
            {
                "fields": (
                    "status_display",
                    "flagged",
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
            "Identity",
            {
                "fields": (
                    "identity_display",
                    "identity_before_detailer_status",
                    "identity_before_detailer",
                    "identity_distance",
                    "identity_nearest_reference",
                    "identity_nearest_distance",
                    "identity_detail_display",
                    "score_job_id",
                    "score_attempts",
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
    before_after_template = "admin/generation/content/before_after.html"
    status_template = "admin/generation/content/status.html"
    identity_template = "admin/generation/content/identity.html"
    preview_template = "admin/generation/content/preview.html"
    detail_template = "admin/generation/detail.html"

    class Media:
        css = ADMIN_CSS

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Generations start from the persona actions or the services, never a
        # hand-filled form.
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: Content | None = None
    ) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: Content) -> None:
        services.content_delete(content=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for content in queryset:
            services.content_delete(content=content)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "tiny_model_note": TINY_MODEL_NOTICE if uses_tiny_model() else "",
        }
        return super().changelist_view(request, extra_context)

    # Columns and fields ------------------------------------------------------------

    @admin.display(description="before / after")
    def before_after(self, content: Content) -> str:
        before = content.before_thumbnail or (
            content.before_reference.thumbnail if content.before_reference else None
        )
        return render_to_string(
            self.before_after_template,
            {"before": before, "after": content.output_thumbnail},
        )

    @admin.display(description="status", ordering="status")
    def status_display(self, content: Content) -> str:
        return render_to_string(self.status_template, {"content": content})

    @admin.display(description="method", ordering="method_used")
    def method_display(self, content: Content) -> str:
        if content.method_used:
            return content.get_method_used_display()
        return f"{content.get_method_requested_display()} (asked)"

    @admin.display(description="review", ordering="review_state")
    def review_display(self, content: Content) -> str:
        if content.status != ContentStatus.SUCCEEDED:
            return "–"
        return content.get_review_state_display()

    @admin.display(
        description="identity", ordering=F("identity_similarity").desc(nulls_last=True)
    )
    def identity_display(self, content: Content) -> str:
        return render_to_string(self.identity_template, {"content": content})

    @admin.display(description="identity detail")
    def identity_detail_display(self, content: Content) -> str:
        return self._detail(content.identity_detail)

    @admin.display(description="score", ordering="consistency_score")
    def score_display(self, content: Content) -> str:
        if content.consistency_score is None:
            return "–"
        return f"{content.consistency_score:.2f}"

    @admin.display(description="before, control, after")
    def preview(self, content: Content) -> str:
        return render_to_string(
            self.preview_template,
            {
                "content": content,
                "control_images": content.control_images.all(),
                "tiny_model_note": TINY_MODEL_NOTICE if uses_tiny_model() else "",
            },
        )

    @admin.display(description="technical detail")
    def error_detail_display(self, content: Content) -> str:
        return self._detail(content.error_detail)

    @admin.display(description="timings (seconds)")
    def timings_display(self, content: Content) -> str:
        return self._detail(content.timings)

    @admin.display(description="score detail")
    def score_detail_display(self, content: Content) -> str:
        return self._detail(content.score_detail)

    @admin.display(description="snapshot")
    def snapshot_display(self, content: Content) -> str:
        return self._detail(content.snapshot)

    def _detail(self, value: Any) -> str:
        if not value:
            return "–"
        text = (
            value
            if isinstance(value, str)
            else json.dumps(value, indent=2, sort_keys=True)
        )
        return render_to_string(self.detail_template, {"text": text})


# --- Batches and grids ---------------------------------------------------------------


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    """Batches and grids; a grid's page links to its contact sheet in the
    gallery (``templates/admin/generation/batch/change_form.html``)."""

    list_display = ("__str__", "kind", "persona", "prompt", "created_at")
    list_filter = ("kind", "persona")
    list_select_related = ("persona",)
    search_fields = ("prompt", "persona__name")
    fields = (
        "persona",
        "kind",
        "prompt",
        "axes",
        "keep_best",
        "best_of_applied_at",
        "created_by",
        "created_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: Batch | None = None
    ) -> bool:
        return False


# --- LoRA training ----------------------------------------------------------------

from django.core.exceptions import PermissionDenied, ValidationError  # noqa: E402
from django.http import HttpResponseRedirect  # noqa: E402
from django.shortcuts import get_object_or_404  # noqa: E402
from django.urls import path, reverse  # noqa: E402

from generation.actions import (  # noqa: E402
    CANCEL_TRAINING,
    LORA_VERSION_ACTIONS,
    TRAIN_LORA,
    TRAINING_ACTIONS,
    perform,
)
from generation.models import TrainingRun, TrainingSample  # noqa: E402

# The training forms, services and chart import the trainer (torch): they are
# imported where a training page needs them, not when the admin loads.
from personas.models import PersonaLoraVersion  # noqa: E402
from personas.services import lora_version_delete  # noqa: E402


class TrainingPersonaAdmin(PersonaAdmin):
    """The persona admin plus "Train LoRA…": the action (one persona) and the
    button on the persona page open the training page of ``TrainingRunAdmin``."""

    actions = [*PersonaAdmin.actions, "train_lora"]
    change_form_template = "admin/generation/training/persona_change_form.html"

    def has_train_permission(self, request: HttpRequest) -> bool:
        return TRAIN_LORA.allows(request.user)

    @admin.action(permissions=["train"], description=TRAIN_LORA.description)
    def train_lora(
        self, request: HttpRequest, queryset: QuerySet
    ) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(
                request,
                "Train a LoRA for one persona at a time: select only one.",
                level="error",
            )
            return None
        return HttpResponseRedirect(
            reverse("admin:generation_trainingrun_start", args=[queryset.get().pk])
        )

    def render_change_form(self, request, context, *args, **kwargs):
        context["can_train_lora"] = TRAIN_LORA.allows(request.user)
        return super().render_change_form(request, context, *args, **kwargs)


admin.site.unregister(Persona)
admin.site.register(Persona, TrainingPersonaAdmin)


@admin.register(TrainingRun)
class TrainingRunAdmin(StaffActionsAdmin, admin.ModelAdmin):
    """Training runs: read-only records with a page that shows status, progress,
    the loss and identity chart and the samples; started from a persona."""

    list_display = ("__str__", "persona", "status", "progress", "created_at")
    list_filter = ("status", "persona")
    list_select_related = ("persona",)
    change_form_template = "admin/generation/training/run_change_form.html"
    start_template = "admin/generation/training/start.html"
    compare_template = "admin/generation/training/compare.html"
    actions = [admin_action(action) for action in TRAINING_ACTIONS]
    fields = (
        "persona",
        "status",
        "model",
        "trigger_word",
        "preset",
        "hyperparameters",
        "inputs",
        "checkpoints",
        "snapshot",
        "lora_version",
        "error_message",
        "error_detail",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields

    def has_train_permission(self, request: HttpRequest) -> bool:
        return TRAIN_LORA.allows(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def delete_model(self, request: HttpRequest, obj: TrainingRun) -> None:
        from generation.training_services import training_run_delete

        _refusals_as_messages(self, request, training_run_delete, run=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        from generation.training_services import training_run_delete

        for run in queryset:
            _refusals_as_messages(self, request, training_run_delete, run=run)

    @admin.display(description="progress")
    def progress(self, run: TrainingRun) -> str:
        return f"{run.progress_step} / {run.progress_total}"

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path(
                "start/<int:persona_id>/",
                wrap(self.start_view),
                name="generation_trainingrun_start",
            ),
            path(
                "<int:run_id>/chart.svg",
                wrap(self.chart_view),
                name="generation_trainingrun_chart",
            ),
            path(
                "compare/<int:persona_id>/",
                wrap(self.compare_view),
                name="generation_trainingrun_compare",
            ),
            *super().get_urls(),
        ]

    def start_view(self, request: HttpRequest, persona_id: int) -> HttpResponse:
        """The "Train LoRA…" page: references, captions, trigger word, preset and
        hyperparameters; its post runs the table's TRAIN_LORA entry."""
        TRAIN_LORA.check_allowed(request.user)
        persona = get_object_or_404(Persona, pk=persona_id)
        from generation.training_forms import TrainLoraForm

        posted = request.method == "POST"
        form = TrainLoraForm(request.POST if posted else None, persona=persona)
        if posted and "apply_preset" in request.POST:
            form.set_preset(request.POST.get("preset", ""))
            form = TrainLoraForm(form.data, persona=persona)
            form.errors.clear()
        elif posted and form.is_valid():
            started = perform(
                TRAIN_LORA, [persona], request=request, data=form.cleaned_data
            )
            if started:
                return HttpResponseRedirect(started[0].get_absolute_url())
        context = {
            **self.admin_site.each_context(request),
            "title": f"Train a LoRA for {persona}",
            "persona": persona,
            "form": form,
            "opts": self.model._meta,
            "tiny_model_note": TINY_MODEL_NOTICE if uses_tiny_model() else "",
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.start_template, context)

    def chart_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        run = get_object_or_404(TrainingRun, pk=run_id)
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        from generation.training_charts import training_chart_svg

        return HttpResponse(training_chart_svg(run), content_type="image/svg+xml")

    def compare_view(self, request: HttpRequest, persona_id: int) -> HttpResponse:
        """Two LoRA versions' samples side by side (``?a=&b=`` version ids)."""
        persona = get_object_or_404(Persona, pk=persona_id)
        if not self.has_view_permission(request):
            raise PermissionDenied
        versions = list(persona.lora_versions.select_related("training_run"))
        chosen = [
            next((v for v in versions if str(v.pk) == request.GET.get(key)), None)
            for key in ("a", "b")
        ]
        columns = [_version_samples(version) for version in chosen if version]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Compare LoRA versions of {persona}",
            "persona": persona,
            "versions": versions,
            "chosen": [v.pk if v else None for v in chosen],
            "columns": columns,
            "opts": self.model._meta,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.compare_template, context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, object_id)
        extra = {**(extra_context or {})}
        if run is not None:
            extra["run"] = run
            extra["samples_by_step"] = _samples_by_step(run)
            extra["can_cancel"] = run.is_active and CANCEL_TRAINING.allows(request.user)
        return super().change_view(request, object_id, form_url, extra)


def _refusals_as_messages(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    service: Callable[..., None],
    **target: Any,
) -> None:
    """Run a delete service; its refusal becomes an error message, not a 500."""
    try:
        service(**target)
    except ValidationError as refused:
        model_admin.message_user(request, " ".join(refused.messages), level="error")


def _samples_by_step(run: TrainingRun) -> list[tuple[int, list[TrainingSample]]]:
    grouped: dict[int, list[TrainingSample]] = {}
    for sample in run.samples.all():
        grouped.setdefault(sample.step, []).append(sample)
    return sorted(grouped.items())


COMPARE_OUTPUTS = 4
"""How many of a version's latest generations the compare page shows."""


def _version_samples(version: PersonaLoraVersion) -> dict[str, Any]:
    """A version, the samples of its training run's last sample step (an
    uploaded version has none), and the persona's latest generations made with
    its weights (the snapshot's LoRA hash): what an uploaded version is
    compared by."""
    run = getattr(version, "training_run", None)
    samples = _samples_by_step(run) if run is not None else []
    outputs = Content.objects.filter(
        persona_id=version.persona_id,
        status=ContentStatus.SUCCEEDED,
        snapshot__lora__sha256=version.sha256,
    ).order_by("-created_at", "-id")[:COMPARE_OUTPUTS]
    return {
        "version": version,
        "run": run,
        "samples": samples[-1][1] if samples else [],
        "outputs": list(outputs),
    }


@admin.register(PersonaLoraVersion)
class PersonaLoraVersionAdmin(StaffActionsAdmin, admin.ModelAdmin):
    """LoRA versions of each persona; staff choose the active one."""

    list_display = ("__str__", "persona", "source", "is_active", "created_at")
    list_filter = ("source", "is_active", "persona")
    list_select_related = ("persona",)
    actions = [admin_action(action) for action in LORA_VERSION_ACTIONS]
    fields = ("persona", "number", "source", "label", "sha256", "is_active")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    # Change permission runs "Make the active LoRA"; every field stays read-only.

    def delete_model(self, request: HttpRequest, obj: PersonaLoraVersion) -> None:
        _refusals_as_messages(self, request, lora_version_delete, version=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for version in queryset:
            _refusals_as_messages(self, request, lora_version_delete, version=version)

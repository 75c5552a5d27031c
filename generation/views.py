"""The review gallery: staff pages to look at outputs, compare them with their
reference, follow their progress and act on them.

Views stay thin: they read through ``gallery_selectors`` (and ``selectors``) and
change state only through ``services``, each change a POST with CSRF and a
permission check. Every page needs a staff login (others go to the admin login)
and ``generation.view_content``; media is served by ``studio.media``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from generation import gallery_selectors, selectors, services
from generation.engine.vocabulary import TINY_MODEL_NOTICE
from generation.gallery_forms import GalleryFilterForm
from generation.models import Batch, Content, ReviewState
from personas.models import Persona

VIEW = "generation.view_content"
GENERATE = "generation.generate_content"
REVIEW = "generation.review_content"
CHANGE_PERSONA = "personas.change_persona"
TINY_MODEL_NOTE = TINY_MODEL_NOTICE

View = Callable[..., HttpResponse]


def gallery_view(view: View) -> View:
    """Staff login (else the admin login page) and the view permission (else 403)."""

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.has_perm(VIEW):
            raise PermissionDenied("You may not view generated content.")
        return view(request, *args, **kwargs)

    return staff_member_required(checked)


def _render(
    request: HttpRequest, template: str, context: dict[str, Any]
) -> TemplateResponse:
    """A page in the admin's frame (header, sidebar, theme) with the user's rights."""
    user = request.user
    return TemplateResponse(
        request,
        template,
        {
            **admin.site.each_context(request),
            "can_review": user.has_perm(REVIEW),
            "can_generate": user.has_perm(GENERATE),
            "can_change_persona": user.has_perm(CHANGE_PERSONA),
            "tiny_model_note": TINY_MODEL_NOTE,
            **context,
        },
    )


# --- Pages --------------------------------------------------------------------------


@require_GET
@gallery_view
def gallery_index(request: HttpRequest) -> HttpResponse:
    """Every persona with its primary reference, review counts and latest outputs."""
    page = gallery_selectors.persona_overview(page_number=request.GET.get("page", 1))
    tiny = gallery_selectors.tiny_model_keys()
    return _render(
        request,
        "gallery/index.html",
        {
            "title": "Gallery",
            "page": page,
            "uses_tiny_model": any(
                persona.base_model in tiny for persona in page.object_list
            ),
        },
    )


@require_GET
@gallery_view
def persona_gallery(request: HttpRequest, slug: str) -> HttpResponse:
    """A persona's outputs: filters, sort and seek pagination."""
    try:
        persona = gallery_selectors.persona_with_counts(slug=slug)
    except Persona.DoesNotExist as missing:
        raise Http404("No such persona.") from missing
    form = GalleryFilterForm(request.GET)
    filters = form.gallery_filters()
    try:
        page = gallery_selectors.content_page(
            persona=persona,
            filters=filters,
            after=request.GET.get("after", ""),
            before=request.GET.get("before", ""),
        )
    except gallery_selectors.BadCursor:
        messages.warning(request, "That page link was not valid; showing page 1.")
        page = gallery_selectors.content_page(persona=persona, filters=filters)
    tiny = gallery_selectors.tiny_model_keys()
    return _render(
        request,
        "gallery/persona.html",
        {
            "title": f"{persona} – gallery",
            "persona": persona,
            "form": form,
            "page": page,
            "filter_query": _query(request, drop=("after", "before")),
            "batches": gallery_selectors.persona_recent_batches(persona=persona),
            "uses_tiny_model": persona.base_model in tiny
            or any(content.model_key in tiny for content in page.contents),
        },
    )


@require_GET
@gallery_view
def content_detail(request: HttpRequest, content_id: int) -> HttpResponse:
    """One output beside its reference, with its parameters, lineage and review."""
    content = _get_content(content_id)
    form = GalleryFilterForm(request.GET)
    previous, following = gallery_selectors.content_neighbours(
        content=content, filters=form.gallery_filters()
    )
    return _render(
        request,
        "gallery/content.html",
        {
            "title": f"Content #{content.pk}",
            "content": content,
            "previous": previous,
            "next": following,
            "filter_query": _query(request, drop=("after", "before")),
            "regenerations": gallery_selectors.content_regenerations(content=content),
            "control_images": list(content.control_images.all()),
            "parameters": _parameters(content),
            "snapshot_text": json.dumps(content.snapshot, indent=2, sort_keys=True),
            "uses_tiny_model": content.request.get("model")
            in gallery_selectors.tiny_model_keys(),
        },
    )


@require_GET
@gallery_view
def content_card(request: HttpRequest, content_id: int) -> HttpResponse:
    """One grid card, fetched by the page when the content it shows finishes."""
    try:
        content = gallery_selectors.content_card(content_id=content_id)
    except Content.DoesNotExist as missing:
        raise Http404("No such content.") from missing
    return TemplateResponse(
        request,
        "gallery/_content_card.html",
        {"content": content, "filter_query": _query(request, drop=("after", "before"))},
    )


@require_GET
@gallery_view
def sweep_sheet(request: HttpRequest, batch_id: int) -> HttpResponse:
    """A strength sweep's contact sheet: the reference beside one output per
    strength, to choose the strength that keeps the persona best."""
    try:
        batch = gallery_selectors.sweep_get(batch_id=batch_id)
    except Batch.DoesNotExist as missing:
        raise Http404("No such strength sweep.") from missing
    contents = gallery_selectors.sweep_contents(batch=batch)
    return _render(
        request,
        "gallery/sweep.html",
        {
            "title": f"Strength sweep #{batch.pk} of {batch.persona}",
            "batch": batch,
            "persona": batch.persona,
            "contents": contents,
            "uses_tiny_model": batch.persona.base_model
            in gallery_selectors.tiny_model_keys(),
        },
    )


@require_GET
@gallery_view
def content_progress(request: HttpRequest) -> JsonResponse:
    """``?ids=1,2,3`` -> ``{"contents": {"1": {"status", "step", "total",
    "percent", "finished"}}}``; unknown ids are left out."""
    try:
        ids = [int(part) for part in request.GET.get("ids", "").split(",") if part]
    except ValueError:
        return JsonResponse(
            {"error": "ids must be content ids separated by commas."}, status=400
        )
    progress = gallery_selectors.content_progress(content_ids=ids)
    return JsonResponse({"contents": {str(pk): row for pk, row in progress.items()}})


# --- Actions ------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentAction:
    """A button on a content: the permission it needs, the service it calls, and
    the message it leaves; ``opens_result`` goes to the content it returns."""

    permission: str
    run: Callable[[Content, HttpRequest], Content]
    message: str
    opens_result: bool = False


def _review(state: str) -> Callable[[Content, HttpRequest], Content]:
    def run(content: Content, request: HttpRequest) -> Content:
        return services.content_review(
            content=content,
            state=state,
            user=request.user,
            note=request.POST.get("note", "").strip(),
        )

    return run


CONTENT_ACTIONS: dict[str, ContentAction] = {
    "approve": ContentAction(REVIEW, _review(ReviewState.APPROVED), "Approved."),
    "reject": ContentAction(REVIEW, _review(ReviewState.REJECTED), "Rejected."),
    "regenerate": ContentAction(
        GENERATE,
        lambda content, request: services.content_regenerate(
            content=content, user=request.user
        ),
        "Queued a regeneration with a new seed.",
        opens_result=True,
    ),
    "regenerate-exactly": ContentAction(
        GENERATE,
        lambda content, request: services.content_regenerate_exactly(
            content=content, user=request.user
        ),
        "Queued an exact regeneration (same snapshot).",
        opens_result=True,
    ),
    "cancel": ContentAction(
        GENERATE,
        lambda content, request: services.content_cancel(
            content=content, user=request.user
        ),
        "Cancel requested.",
    ),
    "retry": ContentAction(
        GENERATE,
        lambda content, request: services.content_retry(
            content=content, user=request.user
        ),
        "Queued again.",
    ),
}


@require_POST
@gallery_view
def content_act(request: HttpRequest, content_id: int, action: str) -> HttpResponse:
    """Run one of ``CONTENT_ACTIONS`` on a content, then go back where the person
    was (``next``), or to the new content for a regeneration."""
    try:
        act = CONTENT_ACTIONS[action]
    except KeyError as unknown:
        raise Http404(f"No action {action!r}.") from unknown
    if not request.user.has_perm(act.permission):
        raise PermissionDenied(f"You may not {action.replace('-', ' ')} content.")
    content = get_object_or_404(Content, pk=content_id)
    try:
        result = act.run(content, request)
    except ValidationError as refused:
        messages.error(request, " ".join(refused.messages))
        return HttpResponseRedirect(_next_url(request, content))
    messages.success(request, act.message)
    if act.opens_result:
        return HttpResponseRedirect(reverse("gallery:content", args=[result.pk]))
    return HttpResponseRedirect(_next_url(request, content))


@require_POST
@gallery_view
def sweep_use_strength(request: HttpRequest, batch_id: int) -> HttpResponse:
    """Save the strength of one of the sweep's outputs (``content``) on the persona."""
    if not request.user.has_perm(CHANGE_PERSONA):
        raise PermissionDenied("You may not change personas.")
    try:
        batch = gallery_selectors.sweep_get(batch_id=batch_id)
    except Batch.DoesNotExist as missing:
        raise Http404("No such strength sweep.") from missing
    content = next(
        (
            row
            for row in gallery_selectors.sweep_contents(batch=batch)
            if str(row.pk) == request.POST.get("content")
        ),
        None,
    )
    if content is None or content.strength is None:
        messages.error(request, "Choose one of this sweep's outputs.")
    else:
        try:
            services.persona_save_strength(
                persona=batch.persona, strength=content.strength, user=request.user
            )
        except ValidationError as refused:
            messages.error(request, " ".join(refused.messages))
        else:
            messages.success(
                request,
                f"{batch.persona} now uses img2img strength {content.strength:g}.",
            )
    return HttpResponseRedirect(reverse("gallery:sweep", args=[batch.pk]))


# --- Helpers ------------------------------------------------------------------------


def _get_content(content_id: int) -> Content:
    try:
        return selectors.content_get(content_id=content_id)
    except Content.DoesNotExist as missing:
        raise Http404("No such content.") from missing


def _query(request: HttpRequest, *, drop: tuple[str, ...]) -> str:
    """The page's query string without ``drop``, to carry filters along links."""
    query = request.GET.copy()
    for name in drop:
        query.pop(name, None)
    return query.urlencode()


def _next_url(request: HttpRequest, content: Content) -> str:
    """Where to go back after an action: the posted ``next`` when it is a local
    URL, else the content's page."""
    candidate = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(
        candidate,
        allowed_hosts={request.get_host()},
        require_https=request.is_secure(),
    ):
        return candidate
    return reverse("gallery:content", args=[content.pk])


def _parameters(content: Content) -> list[tuple[str, Any]]:
    """The request's parameters worth reading, as (label, value) rows."""
    request = content.request
    rows: list[tuple[str, Any]] = [
        ("Model", request.get("model")),
        ("Seed", content.seed),
        ("Steps", request.get("steps")),
        ("Guidance scale", request.get("guidance_scale")),
        ("Size", f"{request.get('width')} × {request.get('height')}"),
        ("img2img strength", request.get("strength")),
    ]
    rows.extend(
        (
            f"ControlNet {unit['control_type']}",
            f"scale {unit['conditioning_scale']}, steps "
            f"{unit['guidance_start']}–{unit['guidance_end']}",
        )
        for unit in request.get("control_units") or []
    )
    if request.get("ip_adapter"):
        rows.append(("IP-Adapter scale", request["ip_adapter"].get("scale")))
    if request.get("lora"):
        rows.append(("LoRA scale", request["lora"].get("scale")))
    snapshot = content.snapshot or {}
    if snapshot:
        rows.append(("Pipeline", snapshot.get("pipeline_class")))
        rows.append(("Scheduler", (snapshot.get("scheduler") or {}).get("class")))
    rows.append(("Attempts", content.attempts))
    seconds = [
        f"{name.replace('_', ' ')} {value:.2f}"
        for name, value in (content.timings or {}).items()
        if isinstance(value, float)
    ]
    if seconds:
        rows.append(("Timings (seconds)", ", ".join(seconds)))
    if "registry_hit" in (content.timings or {}):
        warm = "yes" if content.timings["registry_hit"] else "no (loaded for it)"
        rows.append(("Pipeline already loaded", warm))
    return rows

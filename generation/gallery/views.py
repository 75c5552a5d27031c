"""The review gallery: staff pages to look at outputs, compare them with their
reference, follow their progress and act on them.

Views stay thin: they read through ``generation.gallery.selectors`` (and
``generation.selectors``) and change state only through the action table
(``generation.actions``: the same entries the admin's actions run, with their
permission, service call, messages and history), each change a POST with CSRF.
Every page needs a staff login (others go to the admin login) and
``generation.view_content``; media is served by ``studio.media``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import (
    ObjectDoesNotExist,
    PermissionDenied,
    ValidationError,
)
from django.forms import Form
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponsePermanentRedirect,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import capfirst
from django.views.decorators.http import require_GET, require_POST

from generation import actions, previews, selectors
from generation.engine.vocabulary import (
    METHODS_WITH_CONTROL,
    METHODS_WITH_STRENGTH,
    TINY_MODEL_NOTICE,
    GridParameter,
)
from generation.engine_settings import tiny_model_keys
from generation.forms import GridForm, InpaintForm, PersonaGenerateForm
from generation.gallery import selectors as gallery_selectors
from generation.gallery.charts import MAX_POINTS, identity_chart_svg
from generation.gallery.forms import GalleryFilterForm, content_ids
from generation.gallery.page_cache import cached_page
from generation.grids import grid_examples
from generation.models import Batch, Content

VIEW = "generation.view_content"
# The buttons of a content's page, by their name in the URL.
CONTENT_ACTIONS = {action.slug: action for action in actions.CONTENT_ACTIONS}
QUEUE_ACTIONS = {action.slug: action for action in actions.QUEUE_ACTIONS}

View = Callable[..., HttpResponse]
Found = TypeVar("Found")


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
    return TemplateResponse(
        request,
        template,
        {
            **admin.site.each_context(request),
            "allowed_actions": _allowed_actions(request),
            "tiny_model_note": TINY_MODEL_NOTICE,
            **context,
        },
    )


def _allowed_actions(request: HttpRequest) -> dict[str, actions.StaffAction]:
    """The action table's entries the user may run, by name."""
    return {
        action.name: action
        for action in (
            *actions.CONTENT_ACTIONS,
            *actions.CONTENT_PAGE_ACTIONS,
            *actions.SHEET_ACTIONS,
        )
        if action.allows(request.user)
    }


# --- Pages --------------------------------------------------------------------------


@require_GET
@gallery_view
@cached_page
def gallery_index(request: HttpRequest) -> HttpResponse:
    """Every persona with its primary reference, review counts and latest outputs."""
    page = gallery_selectors.persona_overview(page_number=request.GET.get("page", 1))
    tiny = tiny_model_keys()
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
@cached_page
def persona_gallery(request: HttpRequest, slug: str) -> HttpResponse:
    """A persona's outputs: filters, sort and seek pagination."""
    persona = _found(
        lambda: gallery_selectors.persona_with_counts(slug=slug), "No such persona."
    )
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
    tiny = tiny_model_keys()
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
            "can_generate": actions.GENERATE_ACTION.allows(request.user),
            "uses_tiny_model": persona.base_model in tiny
            or any(content.model_key in tiny for content in page.contents),
        },
    )


@require_GET
@gallery_view
@cached_page
def content_detail(request: HttpRequest, content_id: int) -> HttpResponse:
    """One output beside its reference, with its parameters, lineage and review."""
    content = _get_content(content_id)
    form = GalleryFilterForm(request.GET)
    previous, following = gallery_selectors.content_neighbours(
        content=content, filters=form.gallery_filters()
    )
    pending = gallery_selectors.content_next_pending(content=content)
    query = _query(request, drop=("after", "before", "compare"))
    review_next = (
        reverse("gallery:content", args=[pending.pk]) + (f"?{query}" if query else "")
        if pending is not None
        else request.get_full_path()
    )
    compare_with = gallery_selectors.content_compare_sources(
        content=content, extra=request.GET.get("compare", "")
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
            "inpaintings": gallery_selectors.content_inpaintings(content=content),
            "inpaint_form": InpaintForm(),
            "inpaint_brush_size": _brush_size(content),
            "inpaint_padding": settings.STUDIO_ONLY_MASKED_PADDING,
            "inpaint_blur": settings.STUDIO_MASK_BLUR,
            "review_next": review_next,
            "compare_with": compare_with,
            "compare_chosen": next(
                (
                    other
                    for other in compare_with
                    if str(other.pk) == request.GET.get("compare")
                ),
                None,
            ),
            "control_images": list(content.control_images.all()),
            "parameters": _parameters(content),
            "snapshot_text": json.dumps(content.snapshot, indent=2, sort_keys=True),
            "uses_tiny_model": content.request.get("model") in tiny_model_keys(),
        },
    )


@require_GET
@gallery_view
def content_card(request: HttpRequest, content_id: int) -> HttpResponse:
    """One grid card, fetched by the page when the content it shows finishes."""
    content = _found(
        lambda: gallery_selectors.content_card(content_id=content_id),
        "No such content.",
    )
    return TemplateResponse(
        request,
        "gallery/_content_card.html",
        {
            "content": content,
            "filter_query": _query(request, drop=("after", "before")),
            "allowed_actions": _allowed_actions(request),
        },
    )


@require_GET
@gallery_view
def persona_counts(request: HttpRequest, slug: str) -> HttpResponse:
    """A persona's output counts, fetched again by a page when a card finishes."""
    persona = _found(
        lambda: gallery_selectors.persona_with_counts(slug=slug), "No such persona."
    )
    return TemplateResponse(request, "gallery/_counts.html", {"persona": persona})


@require_GET
@gallery_view
def grid_sheet(request: HttpRequest, batch_id: int) -> HttpResponse:
    """An X/Y/Z grid's contact sheet: the reference, then the tiles laid out
    by their axis values with their scores and the method each ran, and "Use
    this value" on each axis value."""
    batch = _get_grid(batch_id)
    sheet = gallery_selectors.grid_sheet(batch=batch)
    return _render(
        request,
        "gallery/grid.html",
        {
            "title": f"Grid #{batch.pk} of {batch.persona}",
            "batch": batch,
            "persona": batch.persona,
            "sheet": sheet,
            "can_grid": actions.GRID_ACTION.allows(request.user),
            "uses_tiny_model": batch.persona.base_model in tiny_model_keys(),
        },
    )


@require_GET
@gallery_view
def sweep_sheet(request: HttpRequest, batch_id: int) -> HttpResponse:
    """A strength sweep's old address: sweeps are grids now (with one strength
    axis), so it leads to the grid's sheet."""
    batch = _get_grid(batch_id)
    return HttpResponsePermanentRedirect(reverse("gallery:grid", args=[batch.pk]))


@gallery_view
def persona_grid(request: HttpRequest, slug: str) -> HttpResponse:
    """A persona's grid page: the prompt, the grid's method and seed and its
    X, Y and Z axes; a valid POST queues the grid through the action table's
    "X/Y/Z grid…" (every tile checked first) and opens its sheet."""
    return _persona_action_page(
        request,
        slug,
        action=actions.GRID_ACTION,
        form_class=GridForm,
        template="gallery/grid_form.html",
        opens="gallery:grid",
        title="X/Y/Z grid",
        context={
            "examples": grid_examples(),
            "max_tiles": settings.STUDIO_GRID_MAX_TILES,
        },
    )


@gallery_view
def persona_generate(request: HttpRequest, slug: str) -> HttpResponse:
    """A persona's generate page: every per-run override, the persona's values
    as defaults; a valid POST queues a batch through the action table's
    "Generate…" and opens the batch's page, where its contents progress."""
    return _persona_action_page(
        request,
        slug,
        action=actions.GENERATE_ACTION,
        form_class=PersonaGenerateForm,
        template="gallery/generate.html",
        opens="gallery:batch",
        title="Generate",
    )


def _persona_action_page(
    request: HttpRequest,
    slug: str,
    *,
    action: actions.StaffAction,
    form_class: type[Form],
    template: str,
    opens: str,
    title: str,
    context: dict[str, Any] | None = None,
) -> HttpResponse:
    """A persona's page for an action that asks first (its form with the
    persona's values): a valid POST runs ``action`` through the action table
    and opens the page ``opens`` of its result; a refusal shows the form again
    with the service's message."""
    action.check_allowed(request.user)
    persona = _found(
        lambda: gallery_selectors.persona_for_generate(slug=slug), "No such persona."
    )
    form = form_class(request.POST or None, persona=persona)
    if request.method == "POST" and form.is_valid():
        results = actions.perform(
            action, [persona], request=request, data=form.cleaned_data
        )
        if results:
            return HttpResponseRedirect(reverse(opens, args=[results[0].pk]))
    return _render(
        request,
        template,
        {
            "title": f"{title} – {persona}",
            "persona": persona,
            "form": form,
            "uses_tiny_model": persona.base_model in tiny_model_keys(),
            **(context or {}),
        },
    )


@require_GET
@gallery_view
def batch_page(request: HttpRequest, batch_id: int) -> HttpResponse:
    """A batch's contents as cards with live progress (where the generate page
    and the "Generate…" message lead)."""
    batch = _found(
        lambda: gallery_selectors.batch_get(batch_id=batch_id), "No such batch."
    )
    contents = gallery_selectors.batch_contents(batch=batch)
    return _render(
        request,
        "gallery/batch.html",
        {
            "title": f"Batch #{batch.pk} of {batch.persona}",
            "batch": batch,
            "persona": batch.persona,
            "contents": contents,
            "uses_tiny_model": any(
                content.model_key in tiny_model_keys() for content in contents
            ),
        },
    )


@gallery_view
def queue_page(request: HttpRequest) -> HttpResponse:
    """Each generation queue in RQ's order (position, move to the front, bulk
    cancel through the action table) and what each of its workers runs and
    has warm. A POST names an action of ``QUEUE_ACTIONS`` and the contents."""
    if request.method == "POST":
        act = QUEUE_ACTIONS.get(request.POST.get("action", ""))
        if act is None:
            raise Http404("No such queue action.")
        act.check_allowed(request.user)
        try:
            ids = content_ids(",".join(request.POST.getlist("content")))
        except ValidationError as refused:
            messages.error(request, " ".join(refused.messages))
            ids = []
        chosen = list(Content.objects.filter(pk__in=ids).order_by("pk"))
        if chosen:
            actions.perform(act, chosen, request=request)
        elif not ids:
            messages.error(request, "Tick the generations to act on first.")
        return HttpResponseRedirect(reverse("gallery:queue"))
    from redis.exceptions import ConnectionError as RedisDown

    try:
        queues = gallery_selectors.queue_overview()
    except RedisDown:
        queues = None
    return _render(
        request,
        "gallery/queue.html",
        {
            "title": "Queue",
            "queues": queues,
            "queue_actions": {
                action.name: action
                for action in QUEUE_ACTIONS.values()
                if action.allows(request.user)
            },
        },
    )


@require_GET
@gallery_view
def persona_identity(request: HttpRequest, slug: str) -> HttpResponse:
    """How a persona's identity holds over time and by method: a chart, the
    counts, approvals and the share of "same person" per method."""
    persona = _found(
        lambda: gallery_selectors.persona_with_counts(slug=slug), "No such persona."
    )
    rows = gallery_selectors.persona_identity_rows(persona=persona)
    return _render(
        request,
        "gallery/identity.html",
        {
            "title": f"{persona} – identity",
            "persona": persona,
            "chart": identity_chart_svg(
                rows, threshold=persona.identity_threshold, title=persona.name
            ),
            "chart_points": MAX_POINTS,
            "methods": gallery_selectors.identity_by_method(rows),
            "outputs": len(rows),
            "uses_tiny_model": persona.base_model in tiny_model_keys(),
        },
    )


@require_GET
@gallery_view
def persona_identity_csv(request: HttpRequest, slug: str) -> HttpResponse:
    """The identity page's numbers, one row per succeeded output."""
    persona = _found(
        lambda: gallery_selectors.persona_with_counts(slug=slug), "No such persona."
    )
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="{persona.slug}-identity.csv"'
    )
    writer = csv.writer(response)
    writer.writerow(gallery_selectors.IDENTITY_COLUMNS)
    for row in gallery_selectors.persona_identity_rows(persona=persona):
        writer.writerow(
            [_csv_value(row[name]) for name in gallery_selectors.IDENTITY_COLUMNS]
        )
    return response


@require_GET
@gallery_view
def content_progress(request: HttpRequest) -> JsonResponse:
    """``?ids=1,2,3`` -> ``{"contents": {"1": {"status", "step", "total",
    "percent", "ended", "finished"}}}``; unknown ids are left out."""
    try:
        ids = content_ids(request.GET.get("ids", ""))
    except ValidationError as refused:
        return JsonResponse({"error": " ".join(refused.messages)}, status=400)
    progress = gallery_selectors.content_progress(content_ids=ids)
    return JsonResponse({"contents": {str(pk): row for pk, row in progress.items()}})


@require_GET
@gallery_view
def content_preview(request: HttpRequest, content_id: int) -> HttpResponse:
    """A running content's live preview (a small JPEG), 404 when it has none."""
    image = gallery_selectors.content_preview(content_id=content_id)
    if image is None:
        raise Http404("This content has no live preview now.")
    response = HttpResponse(image, content_type=previews.PREVIEW_CONTENT_TYPE)
    response["Cache-Control"] = "private, no-store"
    return response


# --- Actions ------------------------------------------------------------------------


@require_POST
@gallery_view
def content_act(request: HttpRequest, content_id: int, action: str) -> HttpResponse:
    """Run one of ``CONTENT_ACTIONS`` on a content, then go back where the person
    was (``next``), or to the new content for a regeneration."""
    try:
        act = CONTENT_ACTIONS[action]
    except KeyError as unknown:
        raise Http404(f"No action {action!r}.") from unknown
    act.check_allowed(request.user)
    content = get_object_or_404(Content, pk=content_id)
    results = actions.perform(act, [content], request=request, data=request.POST)
    if act.opens_result and results:
        return HttpResponseRedirect(reverse("gallery:content", args=[results[0].pk]))
    return HttpResponseRedirect(_next_url(request, content))


@require_POST
@gallery_view
def content_inpaint(request: HttpRequest, content_id: int) -> HttpResponse:
    """The brush's form of a content's page: its mask (a PNG), prompt and
    strength queue an inpaint through the action table's "Inpaint", then the
    new content opens; a refusal goes back to the page with its message."""
    act = actions.INPAINT
    act.check_allowed(request.user)
    content = get_object_or_404(Content, pk=content_id)
    form = InpaintForm(request.POST, request.FILES)
    if not form.is_valid():
        for field, errors in form.errors.items():
            label = form.fields[field].label or field if field in form.fields else ""
            prefix = f"{capfirst(label)}: " if label else ""
            messages.error(request, f"{content}: {prefix}{' '.join(errors)}")
        return HttpResponseRedirect(reverse("gallery:content", args=[content.pk]))
    results = actions.perform(act, [content], request=request, data=form.cleaned_data)
    target = results[0] if results else content
    return HttpResponseRedirect(reverse("gallery:content", args=[target.pk]))


@require_POST
@gallery_view
def grid_use_value(request: HttpRequest, batch_id: int) -> HttpResponse:
    """Write one axis value of a grid (``axis``, ``value``: their indexes) on
    its persona through the action table's "Use this value"."""
    actions.USE_VALUE.check_allowed(request.user)
    batch = _get_grid(batch_id)
    actions.perform(actions.USE_VALUE, [batch], request=request, data=request.POST)
    return HttpResponseRedirect(reverse("gallery:grid", args=[batch.pk]))


@require_POST
@gallery_view
def sweep_use_strength(request: HttpRequest, batch_id: int) -> HttpResponse:
    """The old "use this strength" (a tile's ``content``): the value of the
    grid's strength axis at that tile, through "Use this value"."""
    actions.USE_VALUE.check_allowed(request.user)
    batch = _get_grid(batch_id)
    try:
        axis, value = gallery_selectors.grid_value_of(
            batch=batch,
            content_id=int(request.POST.get("content", "")),
            parameter=GridParameter.STRENGTH,
        )
    except (LookupError, ValueError):
        messages.error(request, "Choose one of this grid's outputs.")
    else:
        actions.perform(
            actions.USE_VALUE,
            [batch],
            request=request,
            data={"axis": axis, "value": value},
        )
    return HttpResponseRedirect(reverse("gallery:grid", args=[batch.pk]))


# --- Helpers ------------------------------------------------------------------------


def _found(read: Callable[[], Found], message: str) -> Found:
    """What ``read`` finds; a 404 saying ``message`` when the selector finds
    nothing (``ObjectDoesNotExist``)."""
    try:
        return read()
    except ObjectDoesNotExist as missing:
        raise Http404(message) from missing


def _get_grid(batch_id: int) -> Batch:
    return _found(
        lambda: gallery_selectors.grid_get(batch_id=batch_id), "No such grid."
    )


def _get_content(content_id: int) -> Content:
    return _found(
        lambda: selectors.content_get(content_id=content_id), "No such content."
    )


def _query(request: HttpRequest, *, drop: tuple[str, ...]) -> str:
    """The page's query string without ``drop``, to carry filters along links."""
    query = request.GET.copy()
    for name in drop:
        query.pop(name, None)
    return query.urlencode()


def _brush_size(content: Content) -> int:
    """The brush's first size: a twelfth of the output's short side."""
    sides = [content.request.get(name) or 0 for name in ("width", "height")]
    return max(1, min(256, round(min(sides) / 12)))


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return value.isoformat() if hasattr(value, "isoformat") else value


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
    """The parameters worth reading, as (label, value) rows: those the run used
    (its snapshot: what ``auto`` chose, without a strength or an IP-Adapter it
    did not use), else, before it ran, those requested (marked so)."""
    snapshot = content.snapshot or {}
    used = snapshot.get("request")
    request = used or content.request
    asked = "" if used else " (asked)"
    base = snapshot.get("base_method") or request.get("method")
    rows: list[tuple[str, Any]] = [
        ("Model", request.get("model")),
        ("Seed", content.seed),
        ("Steps" + asked, request.get("steps")),
        ("Guidance scale" + asked, request.get("guidance_scale")),
        ("Size" + asked, f"{request.get('width')} × {request.get('height')}"),
    ]
    if not used or base in METHODS_WITH_STRENGTH:
        rows.append(("img2img strength" + asked, request.get("strength")))
    if not used or base in METHODS_WITH_CONTROL:
        rows.extend(
            (
                f"ControlNet {unit['control_type']}{asked}",
                f"scale {unit['conditioning_scale']}, steps "
                f"{unit['guidance_start']}–{unit['guidance_end']}",
            )
            for unit in request.get("control_units") or []
        )
    ip_adapter = snapshot.get("ip_adapter") if used else request.get("ip_adapter")
    if ip_adapter:
        rows.append(("IP-Adapter scale" + asked, ip_adapter.get("scale")))
    if request.get("true_cfg_scale") is not None:
        rows.append(("True CFG scale" + asked, request["true_cfg_scale"]))
    lora = snapshot.get("lora") if used else request.get("lora")
    if lora:
        rows.append(("LoRA scale" + asked, lora.get("scale")))
    if snapshot:
        rows.append(("Pipeline", snapshot.get("pipeline_class")))
        rows.append(("Scheduler", (snapshot.get("scheduler") or {}).get("class")))
    elif request.get("scheduler"):
        rows.append(("Scheduler (asked)", request["scheduler"]))
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

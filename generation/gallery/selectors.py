"""Reads for the review gallery: persona overview, a persona's outputs page by
page, a content's neighbours, a grid's contact sheet and live progress.

A persona can have tens of thousands of outputs, so its grid is paged by seek
(keyset) pagination on the sort key and the id, never by ``OFFSET``: every page
costs the same whatever its depth, and the number of queries of a page does not
grow with its rows (lists join or annotate what they show, and leave the large
JSON columns unread). Measured on SQLite with 50,000 outputs of one persona: the
page query takes about 12 ms at any depth and the count 10 ms, where a
``Paginator`` page 500 (``OFFSET``) took 170 ms.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import (
    Case,
    Count,
    F,
    FloatField,
    Prefetch,
    Q,
    QuerySet,
    TextChoices,
    Value,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, NullIf
from django.urls import reverse

from generation import previews
from generation.engine.vocabulary import METHODS_WITH_STRENGTH
from generation.grids import GridAxis, persona_current, unused_axes
from generation.models import (
    ACTIVE_STATUSES,
    Batch,
    BatchKind,
    Content,
    ContentStatus,
    ProgressPhase,
    ReviewState,
)
from generation.selectors import content_identity_filter
from personas.models import Persona, ReferenceImage

GALLERY_PAGE_SIZE = 48
LATEST_PER_PERSONA = 6
PERSONAS_PER_PAGE = 24
RECENT_BATCHES = 10
LINEAGE_SHOWN = 50
MAX_PROGRESS_IDS = 200

# Columns a grid card never reads: deferring them keeps each row small.
_HEAVY_FIELDS = (
    "request",
    "replay_snapshot",
    "snapshot",
    "inputs",
    "timings",
    "score_detail",
    "identity_detail",
    "notes",
    "error_detail",
)


class GallerySort(TextChoices):
    """The orders a persona's grid can be sorted in."""

    NEWEST = "newest", "Newest first"
    SCORE = "score", "Best consistency score first"
    IDENTITY = "identity", "Best identity first"


# Sorts on a value that can be empty (sorted last).
_NULLABLE_SORTS = {
    GallerySort.SCORE: "consistency_score",
    GallerySort.IDENTITY: "identity_similarity",
}


@dataclass(frozen=True, kw_only=True)
class GalleryFilters:
    """What a persona's grid shows; empty values filter nothing."""

    status: str = ""
    method: str = ""
    review_state: str = ""
    date_from: date | None = None
    date_to: date | None = None
    identity: str = ""
    # "yes": only outputs the safety checker flagged; "no": only the others.
    flagged: str = ""
    sort: str = GallerySort.NEWEST


@dataclass(frozen=True)
class GalleryPage:
    """One page of a grid and the cursors of its neighbouring pages."""

    contents: list[Content]
    total: int
    next_cursor: str | None
    previous_cursor: str | None


class BadCursor(ValueError):
    """A page cursor that this module did not write (edited or truncated)."""


# --- The overview -------------------------------------------------------------


def persona_overview(*, page_number: int | str = 1) -> Page:
    """A page of personas (``persona_with_counts`` rows), each also with its
    latest outputs (``latest_contents``): four queries whatever the number of
    outputs."""
    personas = _personas_with_counts().order_by("name", "id")
    page = Paginator(personas, PERSONAS_PER_PAGE).get_page(page_number)
    page.object_list = list(page.object_list)
    latest = _latest_contents(page.object_list)
    for persona in page.object_list:
        persona.latest_contents = latest.get(persona.pk, [])
    return page


def persona_with_counts(*, slug: str) -> Persona:
    """A persona with its primary reference and its output counts:
    ``output_count``, ``<review state>_count`` (of succeeded outputs),
    ``active_count`` (queued or running) and ``failed_count``. Raises
    ``Persona.DoesNotExist``."""
    return _personas_with_counts().get(slug=slug)


def _personas_with_counts() -> QuerySet[Persona]:
    succeeded = Q(contents__status=ContentStatus.SUCCEEDED)
    by_review_state = {
        f"{state}_count": Count(
            "contents", filter=succeeded & Q(contents__review_state=state)
        )
        for state in ReviewState.values
    }
    return Persona.objects.annotate(
        **by_review_state,
        output_count=Count("contents"),
        active_count=Count("contents", filter=Q(contents__status__in=ACTIVE_STATUSES)),
        failed_count=Count("contents", filter=Q(contents__status=ContentStatus.FAILED)),
    ).prefetch_related(
        Prefetch("references", queryset=ReferenceImage.objects.filter(is_primary=True))
    )


def _latest_contents(personas: list[Persona]) -> dict[int, list[Content]]:
    """The latest outputs of each persona, in one query: one small indexed
    ``IN (... LIMIT n)`` subquery per persona. (A window function would rank
    every output of every persona: 1 s for 50,000 rows on SQLite.)"""
    if not personas:
        return {}
    newest_first = ("-created_at", "-id")
    latest_ids = Q()
    for persona in personas:
        latest_ids |= Q(
            pk__in=Content.objects.filter(persona=persona)
            .order_by(*newest_first)
            .values("pk")[:LATEST_PER_PERSONA]
        )
    by_persona: dict[int, list[Content]] = {}
    for content in _light(Content.objects.filter(latest_ids)).order_by(*newest_first):
        by_persona.setdefault(content.persona_id, []).append(content)
    return by_persona


def persona_recent_batches(*, persona: Persona) -> list[Batch]:
    """The persona's latest batches and grids, each with its number of outputs."""
    return list(
        Batch.objects.filter(persona=persona)
        .annotate(content_count=Count("contents"))
        .order_by("-created_at", "-id")[:RECENT_BATCHES]
    )


# --- A persona's grid -----------------------------------------------------------


def persona_contents(*, persona: Persona, filters: GalleryFilters) -> QuerySet[Content]:
    """A persona's outputs matching ``filters``, in the order of ``filters.sort``
    (the id breaks ties), with only the columns a grid card shows."""
    contents = _light(Content.objects.filter(persona=persona))
    if filters.status:
        contents = contents.filter(status=filters.status)
    if filters.review_state:
        # Only a succeeded generation is reviewed: a failed or cancelled one is
        # in no review state (the counts say the same, ``_personas_with_counts``).
        contents = contents.filter(
            review_state=filters.review_state, status=ContentStatus.SUCCEEDED
        )
    if filters.method:
        contents = contents.filter(effective_method=filters.method)
    if filters.date_from:
        contents = contents.filter(created_at__date__gte=filters.date_from)
    if filters.date_to:
        contents = contents.filter(created_at__date__lte=filters.date_to)
    if filters.identity:
        contents = content_identity_filter(contents, filters.identity)
    if filters.flagged:
        contents = contents.filter(flagged=filters.flagged == "yes")
    return contents.order_by(*_ordering(filters.sort, forward=True))


def content_page(
    *,
    persona: Persona,
    filters: GalleryFilters,
    after: str = "",
    before: str = "",
    size: int = GALLERY_PAGE_SIZE,
) -> GalleryPage:
    """The page of the grid just after the cursor ``after`` (or just before
    ``before``; the first page when neither is given). Raises ``BadCursor``."""
    sort = filters.sort
    contents = persona_contents(persona=persona, filters=filters)
    total = contents.count()
    if before:
        key = _decode(sort, before)
        rows = list(
            contents.filter(_beyond(sort, key, forward=False)).order_by(
                *_ordering(sort, forward=False)
            )[: size + 1]
        )
        has_more_before = len(rows) > size
        rows = rows[:size][::-1]
        return GalleryPage(
            contents=rows,
            total=total,
            next_cursor=_cursor(sort, rows[-1]) if rows else None,
            previous_cursor=_cursor(sort, rows[0]) if has_more_before else None,
        )
    if after:
        contents = contents.filter(_beyond(sort, _decode(sort, after), forward=True))
    rows = list(contents[: size + 1])
    has_more_after = len(rows) > size
    rows = rows[:size]
    return GalleryPage(
        contents=rows,
        total=total,
        next_cursor=_cursor(sort, rows[-1]) if has_more_after else None,
        previous_cursor=_cursor(sort, rows[0]) if after and rows else None,
    )


def content_neighbours(
    *, content: Content, filters: GalleryFilters
) -> tuple[Content | None, Content | None]:
    """The outputs just before and just after ``content`` in its persona's grid
    under ``filters`` (what j and k move to): (previous, next)."""
    contents = persona_contents(persona=content.persona, filters=filters)
    key = _sort_value(filters.sort, content), content.pk
    following = contents.filter(_beyond(filters.sort, key, forward=True)).first()
    preceding = (
        contents.filter(_beyond(filters.sort, key, forward=False))
        .order_by(*_ordering(filters.sort, forward=False))
        .first()
    )
    return preceding, following


# --- Other pages -----------------------------------------------------------------


@dataclass(frozen=True)
class Lineage:
    """The first ``LINEAGE_SHOWN`` outputs of a lineage list, and whether
    there are more (a content regenerated a thousand times lists no thousand)."""

    rows: list[Content]
    more: bool

    def __bool__(self) -> bool:
        return bool(self.rows)


def _lineage(contents: QuerySet[Content]) -> Lineage:
    rows = list(_light(contents).order_by("created_at", "id")[: LINEAGE_SHOWN + 1])
    return Lineage(rows=rows[:LINEAGE_SHOWN], more=len(rows) > LINEAGE_SHOWN)


def content_regenerations(*, content: Content) -> Lineage:
    """The outputs that regenerate ``content``, oldest first (its lineage below)."""
    return _lineage(content.regenerations.all())


def content_inpaintings(*, content: Content) -> Lineage:
    """The inpaints of ``content``'s output, oldest first (its lineage below)."""
    return _lineage(content.inpaintings.all())


def content_card(*, content_id: int) -> Content:
    """One grid card's row; raises ``Content.DoesNotExist``."""
    return _light(Content.objects.all()).get(pk=content_id)


def grid_get(*, batch_id: int) -> Batch:
    """An X/Y/Z grid with its persona; raises ``Batch.DoesNotExist``."""
    return Batch.objects.select_related("persona").get(
        pk=batch_id, kind=BatchKind.GRID
    )


@dataclass
class GridTile:
    """One tile of a contact sheet: its output (None when it is gone) and the
    axes whose parameter its run did not use (what auto chose, say)."""

    content: Content | None
    unused: list[str]


@dataclass
class GridHeader:
    """One value of one axis, as a sheet's heading shows it: its indexes (what
    "use this value" posts), its label and whether the persona uses it now."""

    axis: int
    value: int
    label: str
    current: bool


@dataclass
class GridRow:
    header: GridHeader | None
    tiles: list[GridTile]


@dataclass
class GridTable:
    """One table of a sheet: one per Z value (one in all without a Z axis)."""

    header: GridHeader | None
    rows: list[GridRow]


@dataclass
class GridSheet:
    axes: list[GridAxis]
    columns: list[GridHeader]
    tables: list[GridTable]

    @property
    def x(self) -> GridAxis:
        return self.axes[0]

    @property
    def y(self) -> GridAxis | None:
        return self.axes[1] if len(self.axes) > 1 else None


def grid_sheet(*, batch: Batch) -> GridSheet:
    """A grid's contact sheet: its tiles laid out by their axis values, each
    with its output as a card shows it and what its run did not use."""
    axes = [GridAxis.from_json(data) for data in batch.axes]
    rows = _light(Content.objects.filter(batch=batch)).select_related(
        "before_reference"
    )
    contents = {content.pk: content for content in rows}
    snapshots = dict(
        Content.objects.filter(pk__in=contents).values_list("pk", "snapshot")
    )
    content_at = {tuple(cell): content_id for content_id, cell in batch.tiles}

    def tile(indexes: tuple[int, ...]) -> GridTile:
        content = contents.get(content_at.get(indexes, 0))
        snapshot = snapshots.get(content.pk) if content is not None else None
        return GridTile(content=content, unused=unused_axes(axes, snapshot))

    persona = batch.persona
    units = {unit.pk: unit for unit in persona.control_units.all()}
    current = [persona_current(axis, persona, units) for axis in axes]

    def headers(index: int) -> list[GridHeader | None]:
        if index >= len(axes):
            return [None]
        axis = axes[index]
        return [
            GridHeader(
                axis=index,
                value=position,
                label=f"{axis.label} {axis.value_label(position)}",
                current=value == current[index],
            )
            for position, value in enumerate(axis.values)
        ]

    def cell(*parts: GridHeader | None) -> tuple[int, ...]:
        return tuple(part.value for part in parts if part is not None)

    columns = headers(0)
    tables = [
        GridTable(
            header=z,
            rows=[
                GridRow(header=y, tiles=[tile(cell(x, y, z)) for x in columns])
                for y in headers(1)
            ],
        )
        for z in headers(2)
    ]
    return GridSheet(axes=axes, columns=columns, tables=tables)


def grid_value_of(*, batch: Batch, content_id: int, parameter: str) -> tuple[int, int]:
    """(axis index, value index) of ``parameter``'s axis at the tile of content
    ``content_id`` (what the old "use this strength" posted); ``LookupError``
    when the content is no tile of the grid or no axis varies ``parameter``."""
    parameters = [data["parameter"] for data in batch.axes]
    cells = [cell for pk, cell in batch.tiles if pk == content_id]
    if parameter not in parameters or not cells:
        raise LookupError(f"content #{content_id} has no {parameter} in this grid")
    axis = parameters.index(parameter)
    return axis, cells[0][axis]


def content_next_pending(*, content: Content) -> Content | None:
    """The persona's next succeeded output waiting for review after
    ``content`` (the newest first, as the grid shows them), else the first."""
    pending = Content.objects.filter(
        persona_id=content.persona_id,
        status=ContentStatus.SUCCEEDED,
        review_state=ReviewState.PENDING,
    ).exclude(pk=content.pk)
    return (
        pending.filter(pk__lt=content.pk).order_by("-pk").first()
        or pending.order_by("-pk").first()
    )


def content_compare_sources(*, content: Content, extra: str = "") -> list[Content]:
    """Other outputs to put on the compare slider's left: the one it
    regenerates, its regenerations, and ``extra`` (an id typed by the person),
    each a succeeded output."""
    ids = {
        content.regenerated_from_id,
        *content.regenerations.order_by("created_at", "id").values_list(
            "pk", flat=True
        )[:LINEAGE_SHOWN],
    }
    if extra.isdigit():
        ids.add(int(extra))
    ids.discard(None)
    ids.discard(content.pk)
    return list(
        Content.objects.filter(pk__in=ids, status=ContentStatus.SUCCEEDED)
        .exclude(output_image="")
        .only("pk", "output_image")
        .order_by("pk")
    )


@dataclass(frozen=True)
class QueuedRow:
    """A queued content and its place: 1 is next, None when its job is not in
    the queue's list (due later, or lost until the reconciler runs)."""

    content: Content
    position: int | None


@dataclass(frozen=True)
class WorkerRow:
    name: str
    queues: list[str]
    state: str
    current_job_id: str | None
    current_content: Content | None
    warm_models: list[str]


@dataclass(frozen=True)
class QueueView:
    name: str
    rows: list[QueuedRow]
    workers: list[WorkerRow]


def queue_overview() -> list[QueueView]:
    """Every generation queue in RQ's order, with the workers listening on it."""
    from rq import Worker

    from generation.queues import all_queue_names, get_queue
    from generation.worker import WARM_MODELS_FIELD

    queued = {
        row.rq_job_id: row
        for row in _light(
            Content.objects.filter(status=ContentStatus.QUEUED)
        ).select_related("persona")
    }
    running = {
        row.rq_job_id: row
        for row in Content.objects.filter(status=ContentStatus.RUNNING).only(
            "pk", "rq_job_id", "progress_step", "progress_total", "status"
        )
    }
    views = []
    for name in all_queue_names():
        queue = get_queue(name)
        positions = {
            job_id: index for index, job_id in enumerate(queue.get_job_ids(), 1)
        }
        rows = sorted(
            (
                QueuedRow(content=row, position=positions.get(job_id))
                for job_id, row in queued.items()
                if row.queue_name == name
            ),
            key=lambda item: (
                item.position is None,
                item.position or 0,
                item.content.pk,
            ),
        )
        workers = []
        for worker in Worker.all(queue=queue):
            job_id = worker.get_current_job_id()
            state = worker.get_state()  # a WorkerStatus, or its value
            warm = queue.connection.hget(worker.key, WARM_MODELS_FIELD)
            workers.append(
                WorkerRow(
                    name=worker.name,
                    queues=worker.queue_names(),
                    state=str(getattr(state, "value", state)),
                    current_job_id=job_id,
                    current_content=running.get(job_id) if job_id else None,
                    warm_models=json.loads(warm) if warm else [],
                )
            )
        views.append(QueueView(name=name, rows=rows, workers=workers))
    return views


def batch_get(*, batch_id: int) -> Batch:
    """A batch (or grid) with its persona; raises ``Batch.DoesNotExist``."""
    return Batch.objects.select_related("persona").get(pk=batch_id)


def batch_contents(*, batch: Batch) -> list[Content]:
    """A batch's outputs in the order they were queued, as grid cards."""
    return list(_light(Content.objects.filter(batch=batch)).order_by("pk"))


def persona_for_generate(*, slug: str) -> Persona:
    """A persona with its gallery and units, for its generate page; raises
    ``Persona.DoesNotExist``."""
    return Persona.objects.prefetch_related("references", "control_units").get(
        slug=slug
    )


def content_progress(*, content_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Status and progress of up to ``MAX_PROGRESS_IDS`` outputs, by id; unknown
    ids are left out."""
    ids = list(dict.fromkeys(content_ids))[:MAX_PROGRESS_IDS]
    rows = list(
        Content.objects.filter(pk__in=ids).only(
            "status",
            "progress_step",
            "progress_total",
            "progress_phase",
            "progress_eta_seconds",
            "identity_status",
            "rq_job_id",
        )
    )
    preview_steps = previews.preview_steps(
        job_ids=[row.rq_job_id for row in rows if row.status == ContentStatus.RUNNING]
    )
    # A succeeded output is not finished until its scores land ("scoring…"),
    # so that its card is fetched again with them; "ended" says the run itself
    # is over, so that the card shows the output while the scores are pending.
    # "preview" is the running content's live preview (its step in the query,
    # so that the browser fetches each new one).
    return {
        row.pk: {
            "status": row.status,
            "phase": row.progress_phase or ProgressPhase.WAITING.value,
            "step": row.progress_step,
            "total": row.progress_total,
            "percent": row.progress_percent,
            "eta_seconds": row.progress_eta_seconds,
            "label": row.progress_label,
            "preview": (
                f"{reverse('gallery:content-preview', args=[row.pk])}"
                f"?step={preview_steps[row.rq_job_id]}"
            )
            if row.rq_job_id in preview_steps
            else None,
            "ended": row.is_finished,
            "finished": row.is_finished and not row.scoring,
        }
        for row in rows
    }


def content_preview(*, content_id: int) -> bytes | None:
    """A running content's live preview (JPEG bytes), or None."""
    job_id = (
        Content.objects.filter(pk=content_id, status=ContentStatus.RUNNING)
        .values_list("rq_job_id", flat=True)
        .first()
    )
    return previews.preview_image(job_id=job_id) if job_id else None


# --- Internals ---------------------------------------------------------------------


def _light(contents: QuerySet[Content]) -> QuerySet[Content]:
    """Grid-card rows with the large JSON columns left unread, annotated with
    ``effective_method`` (the method used once it ran, the one asked for while it
    waits), ``model_key`` and ``strength`` (None for a method without one), read
    out of the request JSON."""
    return (
        contents.annotate(
            effective_method=Coalesce(
                NullIf("method_used", Value("")), "method_requested"
            ),
            model_key=KT("request__model"),
        )
        .annotate(
            strength=Case(
                When(
                    effective_method__in=METHODS_WITH_STRENGTH,
                    then=Cast(KT("request__strength"), FloatField()),
                ),
                default=None,
                output_field=FloatField(),
            )
        )
        .defer(*_HEAVY_FIELDS)
    )


def _sort_field(sort: str) -> str:
    return _NULLABLE_SORTS.get(sort, "created_at")


def _ordering(sort: str, *, forward: bool) -> list[Any]:
    """``forward``: the grid's order, highest key first and empty scores last;
    otherwise the exact reverse (to read the page before a cursor)."""
    field = F(_sort_field(sort))
    # Only the scores can be empty; a plain order on created_at keeps its index.
    nulls = {"nulls_last": True} if sort in _NULLABLE_SORTS else {}
    if forward:
        return [field.desc(**nulls), F("id").desc()]
    nulls = {"nulls_first": True} if sort in _NULLABLE_SORTS else {}
    return [field.asc(**nulls), F("id").asc()]


def _beyond(sort: str, key: tuple[Any, int], *, forward: bool) -> Q:
    """Rows strictly after ``key`` (value, id) in the grid's order, or strictly
    before it when not ``forward``. Only the scores can be empty (sorted last)."""
    value, pk = key
    name = _sort_field(sort)
    if forward:
        if value is None:
            return Q(**{f"{name}__isnull": True, "id__lt": pk})
        return (
            Q(**{f"{name}__lt": value})
            | Q(**{name: value, "id__lt": pk})
            | Q(**{f"{name}__isnull": True})
        )
    if value is None:
        return Q(**{f"{name}__isnull": False}) | Q(
            **{f"{name}__isnull": True, "id__gt": pk}
        )
    return Q(**{f"{name}__gt": value}) | Q(**{name: value, "id__gt": pk})


def _sort_value(sort: str, content: Content) -> Any:
    return getattr(content, _sort_field(sort))


def _cursor(sort: str, content: Content) -> str:
    """An opaque page cursor: the sort key and id of ``content``."""
    value = _sort_value(sort, content)
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = json.dumps([sort, value, content.pk]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(sort: str, cursor: str) -> tuple[Any, int]:
    """The (value, id) key of a cursor that ``_cursor`` wrote for ``sort``;
    ``BadCursor`` for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        cursor_sort, value, pk = json.loads(base64.urlsafe_b64decode(padded))
        if cursor_sort != sort or not isinstance(pk, int):
            raise BadCursor(cursor)
        if sort == GallerySort.NEWEST:
            value = datetime.fromisoformat(value)
        elif not isinstance(value, float | int | None):
            raise BadCursor(cursor)
    except (binascii.Error, ValueError, TypeError) as error:
        raise BadCursor(cursor) from error
    return value, pk


# --- A persona's identity page ------------------------------------------------------

IDENTITY_COLUMNS = (
    "id",
    "created_at",
    "method_used",
    "identity_status",
    "identity_similarity",
    "identity_distance",
    "identity_same_person",
    "identity_nearest_reference_id",
    "identity_nearest_distance",
    "consistency_score",
    "review_state",
    "flagged_for_review",
    "not_kept",
)


@dataclass(frozen=True)
class MethodIdentity:
    """How one method kept a persona's identity: counts, the mean similarity
    of its scored outputs, the share judged the same person, approvals."""

    method: str
    outputs: int
    scored: int
    no_face: int
    mean_similarity: float | None
    same_person_share: float | None
    approved: int
    flagged: int


def persona_identity_rows(*, persona: Persona) -> list[dict[str, Any]]:
    """Every succeeded output of ``persona``, oldest first, with its identity
    numbers (the identity page's chart and CSV), in one query."""
    return list(
        Content.objects.filter(persona=persona, status=ContentStatus.SUCCEEDED)
        .order_by("created_at", "id")
        .values(*IDENTITY_COLUMNS)
    )


def identity_by_method(rows: Iterable[dict[str, Any]]) -> list[MethodIdentity]:
    """``persona_identity_rows`` summed up per method, by name."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(row["method_used"] or "unknown", []).append(row)
    summary = []
    for method, method_rows in sorted(by_method.items()):
        scored = [row for row in method_rows if row["identity_status"] == "scored"]
        similarities = [row["identity_similarity"] for row in scored]
        same = sum(bool(row["identity_same_person"]) for row in scored)
        summary.append(
            MethodIdentity(
                method=method,
                outputs=len(method_rows),
                scored=len(scored),
                no_face=sum(row["identity_status"] == "no_face" for row in method_rows),
                mean_similarity=sum(similarities) / len(similarities)
                if similarities
                else None,
                same_person_share=same / len(scored) if scored else None,
                approved=sum(
                    row["review_state"] == ReviewState.APPROVED for row in method_rows
                ),
                flagged=sum(row["flagged_for_review"] for row in method_rows),
            )
        )
    return summary

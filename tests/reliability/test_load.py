"""Load: 10,000 content rows in the pages that list them, and 500 jobs queued at
once on one worker.

The pages (the admin's content changelist, the gallery overview, a persona's
grid in both sorts, a later page of it, a filtered one, and the progress
endpoint) must run the same number of queries with 10,000 rows as with 150;
their times are measured and reported, not asserted (the machine decides them).
The 500 jobs run on one real worker with the tiny model at 64 x 64 pixels and
one denoising step: every one must end succeeded, none lost or stuck. A plain
test run (``make test``) queues 100 through the same path, to keep the suite
fast; the report's run (``make reliability``) queues the 500 its figures are of.
"""

from __future__ import annotations

import os
import random
import statistics
import time
import uuid
from collections.abc import Callable

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from generation import services
from generation.models import ACTIVE_STATUSES, Content, ContentStatus, ReviewState
from personas.models import Persona
from tests.images import encode, halves
from tests.reliability.figures import FIGURES_ENV
from tests.workers import make_persona, use_queue, wait_for

pytestmark = pytest.mark.reliability

# More rows than one page of the admin (100) and of the grid (48) at both sizes.
SMALL, LARGE = 150, 10_000
# Jobs queued at once: the report's figure, and what a plain test run queues.
REPORTED_QUEUED_JOBS, TESTED_QUEUED_JOBS = 500, 100
TIMED_REQUESTS = 3


def add_rows(persona: Persona, count: int, thumbnail: str) -> None:
    """``count`` finished rows of ``persona``, as a long-used studio has them:
    mixed statuses, review states and scores, one shared thumbnail file."""
    rng = random.Random(count)
    statuses = [ContentStatus.SUCCEEDED] * 8 + [ContentStatus.FAILED]
    Content.objects.bulk_create(
        [
            Content(
                persona=persona,
                prompt=f"load row {index}",
                method_requested="text",
                method_used="text",
                seed=index,
                request={"model": persona.base_model, "strength": 0.5},
                status=rng.choice(statuses),
                review_state=rng.choice(ReviewState.values),
                consistency_score=rng.random(),
                output_thumbnail=thumbnail,
                progress_step=1,
                progress_total=1,
            )
            for index in range(count)
        ],
        batch_size=1000,
    )


def pages(persona: Persona, client: Client) -> dict[str, Callable[[], str]]:
    """The listing pages, by name; each returns the URL to request now."""
    grid = reverse("gallery:persona", args=[persona.slug])

    def later_page() -> str:
        cursor = client.get(grid).context["page"].next_cursor
        assert cursor, "one page of rows only"
        return f"{grid}?after={cursor}"

    def progress() -> str:
        ids = Content.objects.order_by("-id").values_list("id", flat=True)[:100]
        return f"{reverse('gallery:progress')}?ids={','.join(map(str, ids))}"

    return {
        "admin content changelist": lambda: reverse(
            "admin:generation_content_changelist"
        ),
        "admin content changelist, filtered and searched": lambda: (
            reverse("admin:generation_content_changelist")
            + "?status__exact=succeeded&q=load"
        ),
        "gallery overview": lambda: reverse("gallery:index"),
        "persona grid, newest first": lambda: grid,
        "persona grid, best score first": lambda: f"{grid}?sort=score",
        "persona grid, approved only": lambda: f"{grid}?review_state=approved",
        "persona grid, second page": later_page,
        "progress endpoint, 100 ids": progress,
    }


def measure(client: Client, url: str) -> tuple[int, float]:
    """(queries, median seconds) of ``TIMED_REQUESTS`` requests of ``url``."""
    counts, seconds = [], []
    for _ in range(TIMED_REQUESTS):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(url)
            seconds.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
        counts.append(len(queries))
    assert len(set(counts)) == 1, (url, counts)
    return counts[0], statistics.median(seconds)


def test_listing_pages_keep_their_query_count_at_10000_rows(
    db, client, superuser, media_root, figures
):
    client.force_login(superuser)
    persona = make_persona(slug="crowded")
    thumbnail = default_storage.save(
        "thumbnails/generated/shared.webp",
        ContentFile(encode(halves((64, 64)), "WEBP")),
    )
    add_rows(persona, SMALL, thumbnail)
    small = {
        name: measure(client, url()) for name, url in pages(persona, client).items()
    }
    add_rows(persona, LARGE - SMALL, thumbnail)
    assert Content.objects.count() == LARGE
    large = {
        name: measure(client, url()) for name, url in pages(persona, client).items()
    }

    for name in small:
        (small_queries, small_seconds), (large_queries, large_seconds) = (
            small[name],
            large[name],
        )
        figures.record(
            group="pages",
            item=name,
            outcome=f"{large_queries} queries at {LARGE:,} rows "
            f"({small_queries} at {SMALL})",
            queries_small=small_queries,
            queries_large=large_queries,
            ms_small=round(small_seconds * 1000, 1),
            ms_large=round(large_seconds * 1000, 1),
        )
    assert {name: queries for name, (queries, _) in large.items()} == {
        name: queries for name, (queries, _) in small.items()
    }


@pytest.mark.django_db(transaction=True)
def test_hundreds_of_queued_jobs_on_one_worker_all_end(
    studio_settings, start_worker, figures
):
    queued_jobs = (
        REPORTED_QUEUED_JOBS if os.environ.get(FIGURES_ENV) else TESTED_QUEUED_JOBS
    )
    use_queue(studio_settings, "load")  # where the worker started below listens
    persona = make_persona(
        slug=f"busy-{uuid.uuid4().hex[:6]}", steps=1, method="text", width=64, height=64
    )
    enqueue_started = time.perf_counter()
    for _ in range(queued_jobs // 10):
        services.content_enqueue_batch(persona=persona, prompt="load", count=10)
    enqueue_seconds = time.perf_counter() - enqueue_started
    ids = list(persona.contents.values_list("id", flat=True))
    assert len(ids) == queued_jobs

    start_worker("load")
    started = time.monotonic()
    wait_for(
        lambda: (
            not Content.objects.filter(pk__in=ids, status__in=ACTIVE_STATUSES).exists()
        ),
        timeout=1800,
        what=f"{queued_jobs} jobs to end",
    )
    seconds = time.monotonic() - started

    rows = Content.objects.filter(pk__in=ids)
    statuses = {status: rows.filter(status=status).count() for status in ContentStatus}
    assert statuses[ContentStatus.SUCCEEDED] == queued_jobs, statuses
    assert rows.filter(attempts=1).count() == queued_jobs
    job_seconds = sorted(row.timings["job_total"] for row in rows)
    figures.record(
        group="queue",
        item=f"{queued_jobs} jobs queued at once, one worker",
        outcome=f"{statuses[ContentStatus.SUCCEEDED]} succeeded, 0 lost or stuck",
        jobs=queued_jobs,
        enqueue_seconds=round(enqueue_seconds, 2),
        drain_seconds=round(seconds, 1),
        jobs_per_second=round(queued_jobs / seconds, 2),
        job_median_seconds=round(statistics.median(job_seconds), 3),
        job_p95_seconds=round(job_seconds[int(0.95 * len(job_seconds))], 3),
    )

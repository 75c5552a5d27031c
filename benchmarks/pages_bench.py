"""How fast the gallery's pages are under load: the gallery index, a persona's
grid and a content's page, with thousands of contents, served by gunicorn.

``python -m benchmarks.pages_bench [--contents 5000] [--clients 50]
[--requests 1500] [--workers 2]`` makes a throwaway studio in a temporary folder
(its own SQLite database and media folder; the studio's own are never touched),
migrates it, fills it with ``--contents`` content rows spread over
``--personas`` personas (most of them on one: its grid and a content of it are
the pages measured), logs a staff user in, starts gunicorn
(``studio.wsgi:application``, ``--workers`` sync workers, the settings of
``studio.settings.local`` with ``DEBUG`` off) on a free loopback port, and runs a
bounded load on each page in turn: ``--clients`` concurrent clients, each
sending its next request as soon as its last one is answered, until
``--requests`` requests have been answered (after a warm-up of
``--warmup``). It prints a Markdown section for BENCHMARKS.md: p50, p95 and
p99 latency and requests per second per page, with the machine's load.

The load generator is one asyncio process (plain HTTP/1.1 over sockets, one
connection per request as gunicorn's sync workers close it): it shares the CPU
with gunicorn, as any load generator on the same machine does. Every answer
must be a 200 with the page's own title, or the run fails: a login page
served fast would measure nothing. Outside the product's import graph.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from studio.conf import BASE_DIR

# Variables of the studio's own environment that must not leak into the
# throwaway studio.
_HOST_SETTINGS = (
    "REDIS_URL",
    "DATABASE_URL",
    "MEDIA_ROOT",
    "AWS_STORAGE_BUCKET_NAME",
    "STUDIO_VAR_DIR",
    "DJANGO_SETTINGS_MODULE",
)
# Contents of each persona but the measured one (at most), which has the rest.
CONTENTS_PER_OTHER_PERSONA = 40
START_TIMEOUT_SECONDS = 60
REQUEST_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class PageTarget:
    """One measured page: its name in the report, its path, and a text every
    good answer contains (its title)."""

    name: str
    path: str
    expect: str


@dataclass(frozen=True)
class PageResult:
    name: str
    path: str
    requests: int
    seconds: float
    latencies_ms: list[float]
    cache_hits: int
    server_cpu_ms: float
    client_cpu_ms: float
    bytes_per_page: int
    queries: int

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))
        return ordered[index]

    def summary(self) -> dict[str, Any]:
        return {
            "page": self.name,
            "path": self.path,
            "requests": self.requests,
            "requests_per_second": round(self.requests / self.seconds, 1),
            "p50_ms": round(self.percentile(0.50), 1),
            "p95_ms": round(self.percentile(0.95), 1),
            "p99_ms": round(self.percentile(0.99), 1),
            "max_ms": round(max(self.latencies_ms), 1),
            "cache_hits": self.cache_hits,
            "server_cpu_ms_per_request": round(self.server_cpu_ms, 2),
            "client_cpu_ms_per_request": round(self.client_cpu_ms, 2),
            "kb": round(self.bytes_per_page / 1024, 1),
            "queries": self.queries,
        }


# --- The throwaway studio --------------------------------------------------------


def studio_environment(root: Path) -> dict[str, str]:
    """The environment of the throwaway studio (this process and gunicorn)."""
    environment = {
        key: value for key, value in os.environ.items() if key not in _HOST_SETTINGS
    }
    environment.update(
        DJANGO_SETTINGS_MODULE="studio.settings.local",
        DEBUG="false",
        PYTHONUNBUFFERED="1",
        STUDIO_VAR_DIR=str(root / "var"),
        DATABASE_URL=f"sqlite:///{root / 'var' / 'db.sqlite3'}",
        MEDIA_ROOT=str(root / "var" / "media"),
        # The tiny model is "configured" without weights on disk: the pages only
        # name it (and say its images are noise).
        STUDIO_MODELS="{}",
    )
    return environment


def _png(colour: tuple[int, int, int], size: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def seed(*, contents: int, personas: int) -> dict[str, Any]:
    """Fill the (migrated, empty) database: ``personas`` personas with a primary
    reference each, ``contents`` content rows (mixed statuses, review states,
    scores, methods; one thumbnail file per persona), a content with lineage
    (regenerations, an inpaint, a control image) and a staff user. Returns the
    main persona's slug, that content's id and the user's session cookie."""
    from django.contrib.auth.models import User
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.test import Client

    from generation.models import (
        Batch,
        Content,
        ContentControlImage,
        ContentStatus,
        ReviewState,
    )
    from personas.models import Persona, ReferenceImage

    rng = random.Random(17)
    # The measured persona keeps at least half of the rows.
    per_other = min(CONTENTS_PER_OTHER_PERSONA, contents // (2 * personas))
    main_count = contents - per_other * (personas - 1)
    people = []
    for index in range(personas):
        person = Persona.objects.create(
            name=f"Persona {index:03d}",
            slug=f"persona-{index:03d}",
            appearance="a red and blue test card",
            width=512,
            height=512,
        )
        image = default_storage.save(
            f"bench/reference-{index}.png", ContentFile(_png((index * 9 % 255, 80, 90)))
        )
        ReferenceImage.objects.create(
            persona=person,
            image=image,
            thumbnail=image,
            width=64,
            height=64,
            sha256=f"{index:064x}",
            is_primary=True,
            order=1,
        )
        people.append(person)
    main = people[0]
    thumbnail = default_storage.save(
        "bench/thumbnail.png", ContentFile(_png((200, 30, 30)))
    )
    batch = Batch.objects.create(persona=main, kind="batch", prompt="bench batch")
    statuses = [ContentStatus.SUCCEEDED] * 16 + [
        ContentStatus.FAILED,
        ContentStatus.CANCELLED,
        ContentStatus.QUEUED,
    ]
    methods = ["text", "img2img", "controlnet", "both", "ip_adapter"]
    owners = [main] * main_count + [
        person for person in people[1:] for _ in range(per_other)
    ]
    rows = []
    for index, person in enumerate(owners[:contents]):
        status = rng.choice(statuses)
        method = rng.choice(methods)
        succeeded = status == ContentStatus.SUCCEEDED
        rows.append(
            Content(
                persona=person,
                batch=batch if index % 97 == 0 else None,
                prompt=f"bench row {index}, a portrait in soft light",
                method_requested=method,
                method_used=method if succeeded else "",
                seed=index,
                request={
                    "model": "tiny",
                    "strength": 0.6,
                    "width": 512,
                    "height": 512,
                    "steps": 20,
                    "guidance_scale": 7.0,
                },
                snapshot={
                    "pipeline_class": "StableDiffusionImg2ImgPipeline",
                    "scheduler": {"class": "DDIMScheduler"},
                    "request": {"model": "tiny", "steps": 20, "strength": 0.6},
                }
                if succeeded
                else {},
                timings={"inference": 1.5, "storing": 0.03, "registry_hit": True},
                status=status,
                review_state=rng.choice(ReviewState.values),
                consistency_score=rng.random() if succeeded else None,
                identity_status="scored" if succeeded else "",
                identity_similarity=rng.random() if succeeded else None,
                output_image=thumbnail if succeeded else "",
                output_thumbnail=thumbnail if succeeded else "",
                progress_step=20 if succeeded else 0,
                progress_total=20,
                error_message="The run failed." if status == "failed" else "",
            )
        )
    Content.objects.bulk_create(rows, batch_size=500)
    # A long-used studio's outputs were made over months, one a minute here.
    start = datetime.now(UTC) - timedelta(minutes=len(rows))
    created = list(Content.objects.order_by("pk").only("pk", "created_at"))
    for minute, content in enumerate(created):
        content.created_at = start + timedelta(minutes=minute)
    Content.objects.bulk_update(created, ["created_at"], batch_size=500)

    # A succeeded output of the measured persona, well down its grid.
    succeeded = Content.objects.filter(persona=main, status=ContentStatus.SUCCEEDED)
    depth = min(len(rows) // 4, succeeded.count() - 1)
    shown = succeeded.order_by("-pk")[depth:].first()
    for regeneration in Content.objects.filter(
        persona=main, status=ContentStatus.SUCCEEDED, pk__lt=shown.pk
    ).order_by("-pk")[:2]:
        regeneration.regenerated_from = shown
        regeneration.save(update_fields=["regenerated_from"])
    inpaint = Content.objects.filter(persona=main, pk__gt=shown.pk).first()
    inpaint.inpainted_from = shown
    inpaint.save(update_fields=["inpainted_from"])
    ContentControlImage.objects.create(
        content=shown, control_type="canny", image=thumbnail
    )
    user = User.objects.create_superuser("bench", "bench@example.com", "bench-pass")
    client = Client()
    client.force_login(user)
    # A browser has a CSRF cookie from its first page on (the pages' forms).
    client.get("/admin/", HTTP_HOST="127.0.0.1")
    return {
        "persona": main.slug,
        "content": shown.pk,
        "cookie": "; ".join(
            f"{name}={client.cookies[name].value}"
            for name in ("sessionid", "csrftoken")
        ),
        "main_persona_contents": main_count,
    }


def page_targets(seeded: dict[str, Any]) -> list[PageTarget]:
    from django.urls import reverse

    return [
        PageTarget("gallery index", reverse("gallery:index"), "<title>Gallery"),
        PageTarget(
            "persona grid",
            reverse("gallery:persona", args=[seeded["persona"]]),
            "– gallery",
        ),
        PageTarget(
            "content page",
            reverse("gallery:content", args=[seeded["content"]]),
            f"Content #{seeded['content']}",
        ),
    ]


def page_queries(target: PageTarget, cookie: str) -> tuple[int, int]:
    """(queries, bytes) of one rendering of ``target`` in this process (the
    page cache off), as the server renders it on a miss (the same database)."""
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_COOKIE=cookie)
    with (
        override_settings(STUDIO_GALLERY_PAGE_CACHE_SECONDS=0),
        CaptureQueriesContext(connection) as queries,
    ):
        response = client.get(target.path, HTTP_HOST="127.0.0.1")
    if response.status_code != 200:
        raise RuntimeError(f"{target.path} answered {response.status_code}")
    return len(queries), len(response.content)


# --- gunicorn ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_gunicorn(
    environment: dict[str, str], *, port: int, workers: int, log: Path
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "studio.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--backlog",
        "2048",
        "--timeout",
        "120",
    ]
    with log.open("w") as output:
        server = subprocess.Popen(
            command, env=environment, cwd=BASE_DIR, stdout=output, stderr=output
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn ended: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=2)
            return server
        except OSError:
            time.sleep(0.3)
    server.terminate()
    raise RuntimeError(f"gunicorn did not answer in {START_TIMEOUT_SECONDS} s")


# --- The load ---------------------------------------------------------------------


async def _get(port: int, path: str, cookie: str) -> tuple[int, bytes, bytes]:
    """One GET on a new connection: (status, head, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Cookie: {cookie}\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is None:
            return status, head, await reader.read()
        return status, head, await reader.readexactly(length)
    finally:
        writer.close()


async def _load(
    port: int, target: PageTarget, cookie: str, *, clients: int, requests: int
) -> tuple[list[float], float, int]:
    """``requests`` answers of ``target`` from ``clients`` concurrent clients:
    (latencies in ms, seconds in all, answers from the page cache)."""
    latencies: list[float] = []
    hits = 0
    remaining = requests
    expect = target.expect.encode()

    async def client() -> None:
        nonlocal remaining, hits
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            status, head, body = await asyncio.wait_for(
                _get(port, target.path, cookie), REQUEST_TIMEOUT_SECONDS
            )
            latencies.append((time.perf_counter() - started) * 1000)
            hits += b"X-Gallery-Cache: hit" in head
            if status != 200 or expect not in body:
                raise RuntimeError(
                    f"{target.path}: HTTP {status}, {target.expect!r} "
                    f"{'found' if expect in body else 'missing'}"
                )

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, time.perf_counter() - started, hits


def _server_cpu_seconds(server: subprocess.Popen) -> float:
    """CPU seconds used so far by gunicorn's workers (the arbiter does no
    request work)."""
    import psutil

    total = 0.0
    for worker in psutil.Process(server.pid).children():
        try:
            times = worker.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure_page(
    server: subprocess.Popen,
    port: int,
    target: PageTarget,
    cookie: str,
    *,
    clients: int,
    requests: int,
    warmup: int,
    queries: int,
    size: int,
) -> PageResult:
    asyncio.run(_load(port, target, cookie, clients=clients, requests=warmup))
    server_cpu = _server_cpu_seconds(server)
    client_cpu = time.process_time()
    latencies, seconds, hits = asyncio.run(
        _load(port, target, cookie, clients=clients, requests=requests)
    )
    client_cpu = time.process_time() - client_cpu
    server_cpu = _server_cpu_seconds(server) - server_cpu
    return PageResult(
        name=target.name,
        path=target.path,
        requests=len(latencies),
        seconds=seconds,
        latencies_ms=latencies,
        cache_hits=hits,
        server_cpu_ms=1000 * server_cpu / len(latencies),
        client_cpu_ms=1000 * client_cpu / len(latencies),
        bytes_per_page=size,
        queries=queries,
    )


# --- The run and its report -----------------------------------------------------


def _cpu_model() -> str:
    from benchmarks.report import _cpu_model as cpu_model

    return cpu_model()


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=30)


def run(options: argparse.Namespace) -> dict[str, Any]:
    """Make, serve and load the throwaway studio; whatever happens, its
    gunicorn and Redis are stopped and its folder removed."""
    with ExitStack() as cleanup:
        root = Path(tempfile.mkdtemp(prefix="pages-bench-", dir=options.workdir))
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)
        environment = studio_environment(root)
        if options.page_cache_seconds is not None:
            environment["STUDIO_GALLERY_PAGE_CACHE_SECONDS"] = str(
                options.page_cache_seconds
            )
        (root / "var").mkdir()
        os.environ.update(environment)
        for name in _HOST_SETTINGS:
            if name not in environment:
                os.environ.pop(name, None)
        import django
        from django.core.management import call_command

        from studio.redis_embedded import EmbeddedRedis

        # The pages' cache keeps its version in the studio's Redis.
        redis_server = EmbeddedRedis(root / "var" / "redis").start()
        cleanup.callback(redis_server.stop)
        django.setup()
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        seeded = seed(contents=options.contents, personas=options.personas)
        seed_seconds = time.perf_counter() - started
        targets = page_targets(seeded)
        port = free_port()
        load_at_start = os.getloadavg()
        server = start_gunicorn(
            environment, port=port, workers=options.workers, log=root / "gunicorn.log"
        )
        cleanup.callback(_stop, server)
        results = []
        for target in targets:
            queries, size = page_queries(target, seeded["cookie"])
            results.append(
                measure_page(
                    server,
                    port,
                    target,
                    seeded["cookie"],
                    clients=options.clients,
                    requests=options.requests,
                    warmup=options.warmup,
                    queries=queries,
                    size=size,
                ).summary()
            )
        return {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python -m benchmarks.pages_bench "
            + " ".join(
                f"--{name.replace('_', '-')} {value}"
                for name, value in vars(options).items()
                if name not in ("json", "workdir") and value is not None
            ),
            "machine": {
                "cpu": _cpu_model(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_at_start": [round(load, 2) for load in load_at_start],
                "load_average_at_end": [round(load, 2) for load in os.getloadavg()],
            },
            "contents": options.contents,
            "personas": options.personas,
            "main_persona_contents": seeded["main_persona_contents"],
            "clients": options.clients,
            "page_cache_seconds": options.page_cache_seconds,
            "workers": options.workers,
            "seed_seconds": round(seed_seconds, 1),
            "pages": results,
        }


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"- Date: {report['date']}",
        f"- Command: `{report['command']}`",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, Python "
        f"{machine['python']}; load average {machine['load_average_at_start'][0]} "
        f"at the start, {machine['load_average_at_end'][0]} at the end",
        f"- {report['contents']:,} contents over {report['personas']} personas "
        f"({report['main_persona_contents']:,} of them the measured persona's); "
        f"gunicorn, {report['workers']} sync workers, SQLite; "
        f"{report['clients']} concurrent clients; page cache "
        + (
            "off"
            if report["page_cache_seconds"] == 0
            else "on (STUDIO_GALLERY_PAGE_CACHE_SECONDS default)"
            if report["page_cache_seconds"] is None
            else f"{report['page_cache_seconds']} s"
        ),
        "",
        "| page | requests (from the cache) | requests/s | p50 ms | p95 ms "
        "| p99 ms | max ms | server CPU ms/request | load generator CPU ms/request "
        "| KB | queries rendering it |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines.extend(
        f"| {page['page']} (`{page['path']}`) | {page['requests']} "
        f"({page['cache_hits']}) | "
        f"{page['requests_per_second']} | {page['p50_ms']} | {page['p95_ms']} | "
        f"{page['p99_ms']} | {page['max_ms']} | "
        f"{page['server_cpu_ms_per_request']} | "
        f"{page['client_cpu_ms_per_request']} | {page['kb']} | {page['queries']} |"
        for page in report["pages"]
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contents", type=int, default=5000)
    parser.add_argument("--personas", type=int, default=25)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--page-cache-seconds",
        type=int,
        default=None,
        help="STUDIO_GALLERY_PAGE_CACHE_SECONDS of the served studio (0: every "
        "page rendered; default: the studio's)",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args(argv)
    if options.personas < 1 or options.contents < options.personas:
        parser.error("--contents must be at least --personas, and both above 0")
    if min(options.clients, options.requests, options.workers) < 1 or (
        options.warmup < 0
    ):
        parser.error(
            "--clients, --requests and --workers take 1 or more, --warmup 0 or more"
        )
    report = run(options)
    if options.json:
        options.json.write_text(json.dumps(report, indent=2) + "\n")
    print(render_markdown(report))


if __name__ == "__main__":
    main()

"""Fixtures shared by every suite that runs generations (a pytest plugin loaded
by tests/conftest.py): the tiny model, written once per session, personas with a
reference, and real worker processes (``manage.py studio_worker``) on the real Redis.

Nothing here imports torch, diffusers or transformers at collection: the tiny
model is written by a fixture, so a test that needs no model never loads them.

A worker is a separate process, so it sees only committed rows (tests use
``transactional_db``) in the same test database (a file for SQLite, see
studio/settings/test.py; ``test_<name>`` for PostgreSQL), the same media folder
and the same Redis, all passed to it through its environment. Each test that
starts its own worker gives it a queue of its own, so that no other worker takes
its jobs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection

from generation.models import ACTIVE_STATUSES, Content
from personas.models import Persona
from personas.services import persona_create, reference_image_add
from studio.redis_embedded import EmbeddedRedis
from tests.images import encode, halves
from tests.zygote import ForkedProcess, Zygote

WORKER_START_TIMEOUT = 120
JOB_TIMEOUT = 300


@pytest.fixture(scope="session")
def tiny_model_location(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session's tiny model is (or will be) written; what the settings
    point to, so that a test that runs no model does not pay for writing it."""
    return tmp_path_factory.mktemp("tiny-model")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_location: Path) -> Path:
    """The tiny model, written once per session (for workers and engine tests)."""
    from generation.engine.tiny_model import write_tiny_model

    return write_tiny_model(tiny_model_location)


@pytest.fixture(scope="session")
def shared_media_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One media folder for the test process and its workers."""
    return tmp_path_factory.mktemp("e2e-media")


@pytest.fixture
def studio_settings(
    settings,
    redis_server: EmbeddedRedis,
    tiny_model_location: Path,
    shared_media_root: Path,
):
    """This process's settings, matching what the workers get by environment
    (the tiny model is written only for tests that ask for ``tiny_model_dir``)."""
    settings.MEDIA_ROOT = shared_media_root
    settings.REDIS_URL = redis_server.url
    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tiny_model_location)
    settings.STUDIO_PROGRESS_INTERVAL_SECONDS = 0
    settings.STUDIO_RETRY_BACKOFF_SECONDS = [1]
    use_queue(settings, "gpu")
    return settings


def use_queue(settings, name: str) -> None:
    """Route every generation of this test to queue ``name``."""
    settings.STUDIO_DEFAULT_QUEUE = name
    settings.STUDIO_QUEUE_ROUTES = {}
    settings.RQ_QUEUES = {
        queue: {"URL": settings.REDIS_URL, "DEFAULT_TIMEOUT": 600}
        for queue in (name, settings.STUDIO_CPU_QUEUE)
    }


def database_url() -> str:
    """A DATABASE_URL for the test database this process uses."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db["USER"] or "")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"])
    host = db["HOST"] or "localhost"
    port = db["PORT"] or 5432
    return f"postgres://{credentials}@{host}:{port}/{db['NAME']}"


_zygote: Zygote | None = None


def worker_zygote() -> Zygote:
    """This session's fork server for worker processes (started on first use):
    a worker forked from it skips seconds of torch and diffusers imports."""
    global _zygote
    if _zygote is None:
        _zygote = Zygote(Path(django_settings.BASE_DIR))
    return _zygote


@pytest.fixture(scope="session", autouse=True)
def _close_worker_zygote() -> Iterator[None]:
    yield
    if _zygote is not None:
        _zygote.close()


@dataclass
class WorkerProcess:
    """A real ``manage.py studio_worker`` process and its log."""

    name: str
    queue: str
    process: ForkedProcess
    log_path: Path
    connection: redis.Redis
    stop_requested: bool = False

    def wait_ready(self) -> WorkerProcess:
        """Wait until the worker has registered itself in Redis (after preload and
        its reconcile at start)."""
        key = f"rq:worker:{self.name}"
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not self.connection.exists(key):
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited at start:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker did not start:\n{self.log()}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, and reap the process (a zombie would still look alive)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM (a warm shutdown), and wait for the process to exit."""
        self.request_stop()
        return self.wait_stopped()

    def request_stop(self) -> None:
        """SIGTERM, once: a second one would be rq's cold shutdown."""
        if self.process.poll() is None and not self.stop_requested:
            self.stop_requested = True
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> int:
        """Wait for a stopped worker to exit; SIGKILL it after 30 s."""
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


@dataclass
class WorkerFactory:
    """Starts workers for one test and stops them after it."""

    settings: object
    base_env: dict[str, str]
    log_dir: Path
    connection: redis.Redis
    started: list[WorkerProcess] = field(default_factory=list)
    # The workers' working folder: another one stands for another host.
    cwd: Path | None = None

    def __call__(
        self, queue: str, *, worker_class: str | None = None, **env: str
    ) -> WorkerProcess:
        """Start a worker on ``queue`` (where this test's generations go too),
        of ``worker_class`` (a dotted path; default: the studio's)."""
        use_queue(self.settings, queue)
        return self.spawn(queue, worker_class=worker_class, **env)

    def spawn(
        self, queue: str, *, worker_class: str | None = None, **env: str
    ) -> WorkerProcess:
        """Start a worker on ``queue`` and wait until it is ready."""
        name = f"test-{queue}-{uuid.uuid4().hex[:8]}"
        log_path = self.log_dir / f"{name}.log"
        command = [
            sys.executable,
            str(Path(django_settings.BASE_DIR) / "manage.py"),
            "studio_worker",
            "--queues",
            queue,
            "--name",
            name,
            "--job-monitoring-interval",
            "1",
        ]
        if worker_class:
            command += ["--worker-class", worker_class]
        process = worker_zygote().spawn(
            command,
            env={**self.base_env, "STUDIO_DEFAULT_QUEUE": queue, **env},
            cwd=self.cwd or Path(django_settings.BASE_DIR),
            log_path=log_path,
        )
        worker = WorkerProcess(name, queue, process, log_path, self.connection)
        self.started.append(worker)
        return worker.wait_ready()

    def stop_all(self) -> None:
        """Stop every worker (all at once: each takes a moment to exit); their
        logs go to the captured output, which pytest shows when the test failed."""
        for worker in self.started:
            worker.request_stop()
        for worker in self.started:
            worker.wait_stopped()
            print(f"--- log of worker {worker.name} ---\n{worker.log()}")


def worker_environment(
    redis_server: EmbeddedRedis, tiny_model_dir: Path, media_root: Path
) -> dict[str, str]:
    """The environment of a test worker: this session's database, Redis, media
    folder and tiny model."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "studio.settings.test",
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": str(media_root),
        "REDIS_URL": redis_server.url,
        "STUDIO_TINY_MODEL_DIR": str(tiny_model_dir),
        "STUDIO_PROGRESS_INTERVAL_SECONDS": "0",
        "STUDIO_RETRY_BACKOFF_SECONDS": "[1]",
        # Workers reconcile only at start here; the tests run reconcile themselves.
        "STUDIO_RECONCILE_INTERVAL_SECONDS": "3600",
        "PYTHONUNBUFFERED": "1",
        # One thread per worker: test machines are small and shared.
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def start_worker(
    studio_settings,
    transactional_db,
    redis_server: EmbeddedRedis,
    tiny_model_dir: Path,
    shared_media_root: Path,
    tmp_path: Path,
) -> Iterator[WorkerFactory]:
    """``start_worker(queue, **env)`` starts a worker on ``queue`` and waits until
    it is ready; every worker started is stopped after the test."""
    factory = WorkerFactory(
        studio_settings,
        worker_environment(redis_server, tiny_model_dir, shared_media_root),
        tmp_path,
        redis.Redis.from_url(redis_server.url),
    )
    yield factory
    factory.stop_all()


SHARED_QUEUE = "shared"


@pytest.fixture(scope="session")
def _shared_worker_process(
    django_db_setup,
    django_db_blocker,
    redis_server: EmbeddedRedis,
    tiny_model_dir: Path,
    shared_media_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """One worker for the whole session, started when a test first asks for it
    and stopped before the test database goes."""
    with django_db_blocker.unblock():
        env = worker_environment(redis_server, tiny_model_dir, shared_media_root)

    factory = WorkerFactory(
        None,
        env,
        tmp_path_factory.mktemp("shared-worker"),
        redis.Redis.from_url(redis_server.url),
    )
    worker = factory.spawn(SHARED_QUEUE)
    yield worker
    worker.stop()


@pytest.fixture
def shared_worker(
    studio_settings, transactional_db, _shared_worker_process: WorkerProcess
) -> Iterator[WorkerProcess]:
    """A worker on the session's shared queue, already warm, for tests that only
    need their jobs run (not a fresh registry, a fault, or a worker to stop):
    starting a worker costs seconds of imports and model loads."""
    worker = _shared_worker_process
    assert worker.process.poll() is None, f"the shared worker exited:\n{worker.log()}"
    use_queue(studio_settings, SHARED_QUEUE)
    log_start = len(worker.log())
    yield worker
    print(f"--- log of the shared worker, this test ---\n{worker.log()[log_start:]}")


@pytest.fixture
def redis_connection(redis_server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


def make_persona(*, slug: str = "ada", **fields) -> Persona:
    """A persona with a primary reference, set up for fast tiny-model runs."""
    persona = persona_create(
        name=slug.title(),
        slug=slug,
        appearance="a red and blue test card",
        width=fields.pop("width", 64),
        height=fields.pop("height", 64),
        steps=fields.pop("steps", 4),
        **fields,
    )
    reference_image_add(
        persona=persona,
        file=SimpleUploadedFile("reference.png", encode(halves((64, 64)), "PNG")),
        is_primary=True,
    )
    return persona


@pytest.fixture
def persona_with_reference(studio_settings) -> Persona:
    """A persona with a primary reference, sized for fast tiny-model runs, with
    this process's settings matching the workers' (the test's ``django_db`` mark
    gives the database)."""
    return make_persona()


def wait_for(
    predicate: Callable[[], object], *, timeout: float = JOB_TIMEOUT, what: str = ""
) -> object:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def wait_finished(content: Content, *, timeout: float = JOB_TIMEOUT) -> Content:
    """Wait until ``content`` leaves queued/running; return it fresh."""
    wait_for(
        lambda: (
            not Content.objects.filter(
                pk=content.pk, status__in=ACTIVE_STATUSES
            ).exists()
        ),
        timeout=timeout,
        what=f"content #{content.pk} to finish",
    )
    return Content.objects.get(pk=content.pk)


def wait_scored(content: Content, *, timeout: float = JOB_TIMEOUT) -> Content:
    """Wait until ``content``'s scores have landed (a CPU worker scores it on
    ``STUDIO_CPU_QUEUE``); return it fresh."""
    wait_for(
        lambda: Content.objects.filter(pk=content.pk)
        .exclude(identity_status="pending")
        .exists(),
        timeout=timeout,
        what=f"content #{content.pk} to be scored",
    )
    return Content.objects.get(pk=content.pk)

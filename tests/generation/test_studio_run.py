"""``make run`` (``manage.py studio_run``): everything starts, Ctrl-C stops all.

It runs the real command in a fresh ``var/`` folder: migrations, the admin
account, the embedded Redis, a worker and the web server, then SIGINT; and, with
a job running, SIGINT to the launcher's whole process group (what Ctrl-C in a
terminal sends): the worker hands the job back before Redis stops, no
traceback, no process left.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from django.conf import settings

from generation.engine.tiny_model import write_tiny_model

pytestmark = pytest.mark.e2e

START_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _read(url: str) -> str:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(url, timeout=5) as response:
        return response.read().decode()


def test_studio_run_starts_everything_and_ctrl_c_stops_it_all(
    tmp_path_factory: pytest.TempPathFactory,
):
    var = tmp_path_factory.mktemp("var")
    tiny = write_tiny_model(tmp_path_factory.mktemp("tiny"))
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "MEDIA_ROOT")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="studio.settings.local",
        STUDIO_VAR_DIR=str(var),
        STUDIO_TINY_MODEL_DIR=str(tiny),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    log_path = var / "studio_run.log"
    with log_path.open("wb") as log:
        studio = subprocess.Popen(
            [
                sys.executable,
                str(Path(settings.BASE_DIR) / "manage.py"),
                "studio_run",
                "--addrport",
                f"127.0.0.1:{port}",
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    socket_path = var / "redis" / "redis.sock"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (
            _answers(f"http://127.0.0.1:{port}/admin/login/")
            and socket_path.exists()
            and redis.Redis(unix_socket_path=str(socket_path)).scard("rq:workers")
        ):
            assert studio.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        output = log_path.read_text()
        password = (var / "admin-password.txt").read_text().strip()
        assert f"as 'admin' with password {password}" in output
        # Every page names a favicon that is served (no 404 in the log).
        login = _read(f"http://127.0.0.1:{port}/admin/login/")
        icon = re.search(r'<link rel="icon" href="([^"]+)"', login)
        assert icon, login
        assert _answers(f"http://127.0.0.1:{port}{icon.group(1)}")

        studio.send_signal(signal.SIGINT)
        assert studio.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if studio.poll() is None:
            studio.kill()
    assert "Persona Studio stopped." in log_path.read_text()
    assert not socket_path.exists()
    assert not _answers(f"http://127.0.0.1:{port}/admin/login/")


# A slow run on the tiny model: still running when Ctrl-C comes.
ENQUEUE_SLOW_JOB = """
from tests.workers import make_persona
from generation import services
persona = make_persona(slug="slow", width=256, height=256, steps=150)
print(services.content_enqueue(persona=persona, prompt="a long run").pk)
"""


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.add(child)
            pending.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_with_a_job_running_hands_it_back_and_stops_cleanly(
    tmp_path_factory: pytest.TempPathFactory,
):
    var = tmp_path_factory.mktemp("var")
    tiny = write_tiny_model(tmp_path_factory.mktemp("tiny"))
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "MEDIA_ROOT")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="studio.settings.local",
        STUDIO_VAR_DIR=str(var),
        STUDIO_TINY_MODEL_DIR=str(tiny),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
    log_path = var / "studio_run.log"
    with log_path.open("wb") as log:
        # Its own process group, as a shell gives a foreground command.
        studio = subprocess.Popen(
            [*manage, "studio_run", "--addrport", f"127.0.0.1:{port}"],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    socket_path = var / "redis" / "redis.sock"
    database = var / "db.sqlite3"

    def row() -> tuple[str, int, int] | None:
        with sqlite3.connect(database) as db:
            return db.execute(
                "SELECT status, attempts, progress_step FROM generation_content "
                "WHERE id = ?",
                (content_id,),
            ).fetchone()

    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (
            _answers(f"http://127.0.0.1:{port}/admin/login/")
            and socket_path.exists()
            and redis.Redis(unix_socket_path=str(socket_path)).scard("rq:workers")
            >= 2
        ):
            assert studio.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        enqueued = subprocess.run(
            [*manage, "shell", "-c", ENQUEUE_SLOW_JOB],
            cwd=settings.BASE_DIR,
            env=env,
            capture_output=True,
            text=True,
        )
        assert enqueued.returncode == 0, enqueued.stderr
        content_id = int(enqueued.stdout.split()[-1])
        while not ((state := row()) and state[0] == "running" and state[2] > 0):
            assert studio.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, (state, log_path.read_text())
            time.sleep(0.5)
        processes = _descendants(studio.pid)
        assert len(processes) >= 4, processes  # 2 workers, web server, redis

        os.killpg(studio.pid, signal.SIGINT)
        assert studio.wait(timeout=90) == 0, log_path.read_text()
    finally:
        if studio.poll() is None:
            os.killpg(studio.pid, signal.SIGKILL)
            studio.wait()
    output = log_path.read_text()
    assert "Persona Studio stopped." in output
    assert "Traceback" not in output, output
    assert "Lost Redis" not in output, output
    assert [pid for pid in processes if _alive(pid)] == []
    assert not socket_path.exists()
    # Handed back by its worker (the attempt refunded): queued for the next start.
    assert row()[:2] == ("queued", 0), output

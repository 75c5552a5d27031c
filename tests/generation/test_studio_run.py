"""``make run`` (``manage.py studio_run``): everything starts, Ctrl-C stops all.

It runs the real command in a fresh ``var/`` folder: migrations, the admin
account, the embedded Redis, a worker and the web server, then SIGINT.
"""

from __future__ import annotations

import os
import signal
import socket
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

        studio.send_signal(signal.SIGINT)
        assert studio.wait(timeout=60) == 0, log_path.read_text()
    finally:
        if studio.poll() is None:
            studio.kill()
    assert "Persona Studio stopped." in log_path.read_text()
    assert not socket_path.exists()
    assert not _answers(f"http://127.0.0.1:{port}/admin/login/")

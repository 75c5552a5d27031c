"""The tests' fork server (tests/zygote.py) gives real ``manage.py`` processes:
the environment, working folder and log they were given, Django set up from that
environment, and exit statuses reported as ``subprocess.Popen`` reports them."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.workers import worker_zygote

pytestmark = pytest.mark.e2e


def _manage(*arguments: str) -> list[str]:
    return [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *arguments]


def test_a_forked_command_gets_its_environment_folder_and_exit_status(
    tmp_path: Path,
):
    log = tmp_path / "command.log"
    probe = (
        "import os, sys; from django.conf import settings; "
        "print('FOLDER', os.getcwd()); print('PROBE', os.environ['STUDIO_PROBE']); "
        "print('SETTINGS', settings.SETTINGS_MODULE); sys.exit(3)"
    )
    process = worker_zygote().spawn(
        _manage("shell", "-c", probe),
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "studio.settings.test",
            "STUDIO_PROBE": "from-the-test",
        },
        cwd=tmp_path,
        log_path=log,
    )

    assert process.wait(timeout=120) == 3, log.read_text()
    output = log.read_text()
    assert f"FOLDER {tmp_path}" in output
    assert "PROBE from-the-test" in output
    assert "SETTINGS studio.settings.test" in output


def test_a_killed_forked_process_reports_the_signal_like_popen(tmp_path: Path):
    log = tmp_path / "sleeper.log"
    process = worker_zygote().spawn(
        _manage("shell", "-c", "import time; print('ready'); time.sleep(600)"),
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "studio.settings.test",
            "PYTHONUNBUFFERED": "1",
        },
        cwd=tmp_path,
        log_path=log,
    )
    deadline = time.monotonic() + 120
    while "ready" not in (log.read_text() if log.exists() else ""):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the forked shell never started"
        time.sleep(0.05)

    process.send_signal(signal.SIGKILL)

    assert process.wait(timeout=60) == -signal.SIGKILL
    assert process.poll() == -signal.SIGKILL

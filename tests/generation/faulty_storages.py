"""Storages with a fault, for the cleanup tests: plugged in through the
``STORAGES`` setting (in this process) or ``cleanup_storage_settings`` (in a
worker); the folder that fails comes from the environment."""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from typing import Any

from django.core.files.storage import FileSystemStorage

FAILING_FOLDER_ENV = "STUDIO_TEST_FULL_DISK_FOLDER"
KILL_FOLDER_ENV = "STUDIO_TEST_KILL_FOLDER"


class _FailingChunks:
    """File content whose second chunk never arrives: the disk is full."""

    def __init__(self, content: Any) -> None:
        self.content = content

    def chunks(self, chunk_size: int | None = None) -> Iterator[bytes]:
        yield b""
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.content, name)


class FullDiskStorage(FileSystemStorage):
    """``FileSystemStorage`` on a disk that fills up while writing a file under
    the folder ``STUDIO_TEST_FULL_DISK_FOLDER``: the file is created, its bytes
    never come, as a real full disk leaves a zero-byte file."""

    def _save(self, name: str, content: Any) -> str:
        if name.startswith(os.environ.get(FAILING_FOLDER_ENV, "\0")):
            return super()._save(name, _FailingChunks(content))
        return super()._save(name, content)


class KilledWhileStoringStorage(FileSystemStorage):
    """``FileSystemStorage`` whose process is killed (SIGKILL) when it starts
    writing under ``STUDIO_TEST_KILL_FOLDER``, after the files before it."""

    def _save(self, name: str, content: Any) -> str:
        if name.startswith(os.environ.get(KILL_FOLDER_ENV, "\0")):
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._save(name, content)



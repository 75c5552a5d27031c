"""A storage backend whose writes fail, for the storage-fault test.

``FaultyStorage`` is Django's ``FileSystemStorage`` except that saving a name
under one of the folders in ``STUDIO_TEST_FAILING_FOLDERS`` (a JSON list, read
from the environment when the storage is built) raises the error a full disk
raises, before any byte is written, as S3 and most backends do. Reads,
deletes and every other folder work, so the job gets as far as it can before
the write that fails. A worker runs with it through the settings module
``tests.reliability.faulty_storage_settings``.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from django.core.files.storage import FileSystemStorage

FAILING_FOLDERS_ENV = "STUDIO_TEST_FAILING_FOLDERS"


class FaultyStorage(FileSystemStorage):
    """File storage whose saves under the failing folders raise ``ENOSPC``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing_folders = tuple(
            json.loads(os.environ.get(FAILING_FOLDERS_ENV, "[]"))
        )

    def _save(self, name: str, content: Any) -> str:
        if name.startswith(self.failing_folders):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        return super()._save(name, content)

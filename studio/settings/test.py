"""Tests: fast hashing; media and Redis are pointed at temporary places by
fixtures in tests/conftest.py."""

import os
import tempfile

from .base import *  # noqa: F403
from .base import DATABASES

DEBUG = False
SECRET_KEY = "persona-studio-tests"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A test's rolled-back rows leave the gallery's version as it was: pages kept
# by one test could show in the next. The cache's own tests turn it on.
STUDIO_GALLERY_PAGE_CACHE_SECONDS = 0

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: the end-to-end tests' worker process opens the same
    # test database. One file per test session, since several may run at once.
    DATABASES["default"]["TEST"] = {
        "NAME": os.path.join(
            tempfile.gettempdir(), f"persona-studio-test-{os.getpid()}.sqlite3"
        )
    }

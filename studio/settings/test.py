"""Tests: fast hashing; media and Redis are pointed at temporary places by
fixtures in tests/conftest.py."""

from .base import *  # noqa: F403

DEBUG = False
SECRET_KEY = "persona-studio-tests"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

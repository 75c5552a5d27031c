"""Test settings whose default storage fails to write (``FaultyStorage``)."""

from studio.settings.test import *  # noqa: F403
from studio.settings.test import STORAGES

STORAGES = {
    **STORAGES,
    "default": {"BACKEND": "tests.reliability.faulty_storage.FaultyStorage"},
}

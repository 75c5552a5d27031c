"""Test settings whose storage kills its process while storing (see
``faulty_storages.KilledWhileStoringStorage``)."""

from studio.settings.test import *  # noqa: F403
from studio.settings.test import STORAGES

STORAGES = {
    **STORAGES,
    "default": {
        "BACKEND": "tests.generation.faulty_storages.KilledWhileStoringStorage"
    },
}

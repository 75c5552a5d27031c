"""``orphaned_files()``: the files in the media folder that no row points to.

For the fault tests: after every fault, ``assert orphaned_files() == []``. It
reads the media folder directly and asks the database about every file field of
every installed model, independently of ``studio_sweep_media``, so that it can
judge that command as well.

The workers' media folder is shared by a whole session, and a transactional
test's rows are flushed after it while its files stay: a test on that folder
takes ``before = stored_files()`` first and asks
``orphaned_files(ignoring=before)``.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db.models import FileField


def referenced_names() -> set[str]:
    """The storage name of every file any row of any installed model points to:
    its file fields, and the checkpoints a training run names in its JSON."""
    from generation.training_models import TrainingRun

    checkpoints = {
        name
        for entries in TrainingRun.objects.values_list("checkpoints", flat=True)
        for entry in entries or ()
        for name in entry["files"].values()
    }
    return checkpoints | {
        name
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if isinstance(field, FileField)
        for name in model._default_manager.exclude(**{field.name: ""})
        .values_list(field.name, flat=True)
        .iterator()
        if name
    }


def stored_files(media_root: Path | None = None) -> set[str]:
    """Every file under the media folder, by storage name; the folder is
    ``MEDIA_ROOT`` unless given (the worker fixtures may move it)."""
    root = Path(settings.MEDIA_ROOT if media_root is None else media_root)
    return {
        path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()
    }


def orphaned_files(
    media_root: Path | None = None, *, ignoring: Collection[str] = ()
) -> list[str]:
    """The stored files that no row points to, sorted (empty: no orphan), but
    for those in ``ignoring`` (what was there before the test)."""
    return sorted(stored_files(media_root) - referenced_names() - set(ignoring))

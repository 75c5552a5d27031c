"""The stored files of rows: nothing written is left behind by a failed write,
and nothing a deleted row owned stays in storage.

Everything goes through the storage API (names, never paths), so S3 behaves as
local files do. Both apps use these helpers for their own rows: ``personas``
for references, control images and LoRA weights, ``generation`` for contents.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from django.apps import AppConfig
from django.core.files import File
from django.core.files.storage import Storage
from django.db import models, transaction
from django.db.models.fields.files import FieldFile
from django.db.models.signals import post_delete

logger = logging.getLogger(__name__)

StoredName = tuple[Storage, str]


class WrittenFiles:
    """The files written during a block, by storage and name.

    :meth:`save` learns a file's name before any byte is written, so that a
    write that fails half-way (a full disk leaves a zero-byte file) is removed
    too; :meth:`append` records a file that some other code has written.
    """

    def __init__(self) -> None:
        self.names: list[StoredName] = []

    def append(self, field_file: FieldFile) -> None:
        if field_file:
            self.names.append((field_file.storage, field_file.name))

    def save(self, field_file: FieldFile, filename: str, content: File) -> None:
        """``field_file.save(filename, content, save=False)``, written under a
        name recorded first."""
        field = field_file.field
        storage = field_file.storage
        name = field.generate_filename(field_file.instance, filename)
        # A name that is taken is someone else's file: the storage picks another
        # (or, on S3 with overwriting, replaces it), and only the name it
        # reports is ours to remove.
        ours_before_writing = not storage.exists(name)
        if ours_before_writing:
            self.names.append((storage, name))
        stored = storage.save(name, content, max_length=field.max_length)
        if stored != name or not ours_before_writing:
            self.names.append((storage, stored))
        field_file.name = stored
        setattr(field_file.instance, field.attname, stored)
        field_file._committed = True

    def remove(self) -> None:
        for storage, name in self.names:
            delete_quietly(storage, name)


@contextmanager
def written_files_removed_on_failure() -> Iterator[WrittenFiles]:
    """Collect the files written during a block; delete them if the block fails.

    Put the transaction inside the block (``with written_files_removed_on_failure()
    as written, transaction.atomic():``) so that a failed commit removes them too.
    """
    written = WrittenFiles()
    try:
        yield written
    except BaseException:
        written.remove()
        raise


def row_files(instance: models.Model) -> list[FieldFile]:
    """The stored files of a row: the values of all its file fields."""
    return [
        getattr(instance, field.name)
        for field in instance._meta.concrete_fields
        if isinstance(field, models.FileField) and getattr(instance, field.name)
    ]


def files_delete_on_commit(files: Iterable[FieldFile | StoredName]) -> None:
    """Delete these files once the current transaction commits (at once outside
    one); names are taken now. A rolled-back transaction deletes nothing."""
    names = [
        (file.storage, file.name) if isinstance(file, FieldFile) else file
        for file in files
        if file
    ]
    if not names:
        return

    def delete() -> None:
        for storage, name in names:
            delete_quietly(storage, name)

    transaction.on_commit(delete)


def delete_quietly(storage: Storage, name: str) -> None:
    # A file that cannot be deleted now is an orphan that ``studio_sweep_media``
    # finds later; it must not hide the error being reported or fail a deletion
    # that has committed.
    try:
        storage.delete(name)
    except Exception:  # noqa: BLE001 - any storage backend's error, logged
        logger.warning("Could not delete %s from storage", name, exc_info=True)


def remove_files_of_deleted_row(
    sender: type[models.Model], instance: models.Model, **kwargs: Any
) -> None:
    """``post_delete`` receiver: a deleted row's files go once the deletion
    commits."""
    files_delete_on_commit(row_files(instance))


def connect_file_cleanup(
    app_config: AppConfig, *, exclude: Iterable[type[models.Model]] = ()
) -> None:
    """Remove the files of every deleted row of the app's models that have file
    fields, however the row was deleted.

    A receiver, not only the services: a deletion cascades (deleting a persona
    deletes its references and contents) without calling the services of the
    rows it takes along, and ``personas`` may not call those of ``generation``.
    A model in ``exclude`` has a receiver of its own.
    """
    excluded = set(exclude)
    for model in app_config.get_models():
        if model in excluded or not any(
            isinstance(field, models.FileField) for field in model._meta.concrete_fields
        ):
            continue
        post_delete.connect(
            remove_files_of_deleted_row,
            sender=model,
            dispatch_uid=f"studio-file-cleanup-{model._meta.label_lower}",
        )

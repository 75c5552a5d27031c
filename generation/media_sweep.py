"""Find, and remove, the files in storage that no row points to.

The rows' deletions and the stores' failures remove their own files; this finds
what escaped them (a storage that was down when a file was to be deleted, a
process killed between a write and its commit). It knows every app's files by
looking at the file fields of every installed model, walks the studio's own
folders only, through the storage API only (``listdir``, ``get_modified_time``,
``delete``, so S3 works as local files do), looks names up in batches, and never
touches a file younger than the grace period: an upload whose row is not
committed yet is not an orphan.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.apps import apps
from django.core.files.storage import Storage
from django.db import models
from django.utils import timezone

from generation.cleanup import training_checkpoints_referenced
from personas.files import delete_quietly

STUDIO_MEDIA_FOLDERS = (
    "references",
    "thumbnails",
    "control",
    "loras",
    "generated",
    "training",
    "staging",
)
"""The top folders the studio's rows store files under (the ``upload_to`` of
``personas.models`` and ``generation.models``, and the training runs'
checkpoints), and ``staging`` (uploads kept from a save that failed,
``personas.staging``, which no row points to: swept once past the grace
period); nothing outside them is swept."""
DEFAULT_GRACE = timedelta(hours=1)
DEFAULT_LIMIT = 1000
LOOKUP_BATCH = 500

FileFields = list[tuple[type[models.Model], models.FileField]]


@dataclass
class SweepReport:
    """What one sweep saw: files examined, orphans found (and removed)."""

    examined: int = 0
    referenced: int = 0
    young: int = 0
    orphans: list[str] = field(default_factory=list)
    deleted: int = 0
    limit_reached: bool = False

    def __str__(self) -> str:
        removed = f", {self.deleted} removed" if self.deleted else ""
        more = " (limit reached: run again for more)" if self.limit_reached else ""
        return (
            f"examined {self.examined} files: {self.referenced} referenced, "
            f"{self.young} too young to judge, {len(self.orphans)} orphaned"
            f"{removed}{more}"
        )


def file_fields() -> dict[int, tuple[Storage, FileFields]]:
    """Every file field of every installed model, grouped by storage."""
    by_storage: dict[int, tuple[Storage, FileFields]] = {}
    for model in apps.get_models():
        for model_field in model._meta.concrete_fields:
            if isinstance(model_field, models.FileField):
                storage = model_field.storage
                by_storage.setdefault(id(storage), (storage, []))[1].append(
                    (model, model_field)
                )
    return by_storage


def sweep_media(
    *,
    delete: bool = False,
    older_than: timedelta = DEFAULT_GRACE,
    limit: int = DEFAULT_LIMIT,
    folders: tuple[str, ...] = STUDIO_MEDIA_FOLDERS,
) -> SweepReport:
    """Find the orphans in ``folders`` of every storage a file field uses, at
    most ``limit`` of them; remove them too with ``delete``."""
    unknown = set(folders) - set(STUDIO_MEDIA_FOLDERS)
    if unknown:
        raise ValueError(
            f"Only the studio's folders are swept ({', '.join(STUDIO_MEDIA_FOLDERS)})"
            f"; not {', '.join(sorted(unknown))}."
        )
    report = SweepReport()
    cutoff = timezone.now() - older_than
    for storage, fields in file_fields().values():
        for folder in folders:
            for batch in _batches(_walk(storage, folder), LOOKUP_BATCH):
                report.examined += len(batch)
                unreferenced = _unreferenced(batch, fields)
                report.referenced += len(batch) - len(unreferenced)
                old = [name for name in unreferenced if _older(storage, name, cutoff)]
                report.young += len(unreferenced) - len(old)
                room = limit - len(report.orphans)
                if len(old) >= room:
                    old, report.limit_reached = old[:room], True
                if delete:
                    # Looked up again just before: a row may have come meanwhile.
                    for name in _unreferenced(old, fields):
                        delete_quietly(storage, name)
                        report.deleted += 1
                report.orphans += old
                if report.limit_reached:
                    return report
    return report


def _walk(storage: Storage, folder: str) -> Iterator[str]:
    """Every file name under ``folder``, depth first, one ``listdir`` a folder."""
    try:
        directories, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in sorted(files):
        yield posixpath.join(folder, name)
    for directory in sorted(directories):
        yield from _walk(storage, posixpath.join(folder, directory))


def _batches(names: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for name in names:
        batch.append(name)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _unreferenced(names: list[str], fields: FileFields) -> list[str]:
    if not names:
        return []
    # Checkpoints are named in a run's JSON, not by a file field.
    referenced = training_checkpoints_referenced(names)
    for model, model_field in fields:
        referenced.update(
            model._default_manager.filter(
                **{f"{model_field.name}__in": names}
            ).values_list(model_field.name, flat=True)
        )
    return [name for name in names if name not in referenced]


def _older(storage: Storage, name: str, cutoff: datetime) -> bool:
    """Whether the file was last written before ``cutoff``; a file whose age the
    storage cannot tell (or that went meanwhile) is never judged old."""
    try:
        modified = storage.get_modified_time(name)
    except Exception:  # noqa: BLE001 - any backend's "cannot tell"
        return False
    if timezone.is_naive(modified):
        modified = timezone.make_aware(modified)
    return modified < cutoff

"""The files of content rows: those of a deleted row, and those an attempt that
did not finish left behind.

A content's files are stored under names that depend on the row only
(``generation.models.content_file_stem``), so the names an unfinished attempt
may have written (a worker killed while storing, a write that failed half-way)
are known without listing the storage: a new attempt removes them before it
writes, and a row that fails, is cancelled or is deleted removes them too.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.files.storage import Storage, default_storage
from django.db.models.signals import post_delete

from generation.models import Content, ContentControlImage, TrainingRun
from personas.files import (
    StoredName,
    connect_file_cleanup,
    delete_quietly,
    files_delete_on_commit,
    row_files,
)

FILE_FIELDS = (
    "output_image",
    "output_thumbnail",
    "before_thumbnail",
    "detailer_before_image",
)
"""The fields an attempt writes (an inpaint's mask is written with its row, and
goes with it: ``row_files``)."""


def content_attempt_files(content: Content) -> list[StoredName]:
    """Every name an attempt at ``content`` may write, stored or not."""
    # The field's storage, not the row's file: the row may be loaded ``only``
    # with the fields the names need.
    storage: Storage = Content._meta.get_field("output_image").storage
    names = [
        Content._meta.get_field(name).generate_filename(content, "")
        for name in FILE_FIELDS
    ]
    control_field = ContentControlImage._meta.get_field("image")
    names += [
        control_field.generate_filename(
            ContentControlImage(content=content, order=order), ""
        )
        for order in range(len(content.request.get("control_units") or ()))
    ]
    return [(storage, name) for name in names]


def content_attempt_files_remove(content: Content) -> None:
    """Remove now what an unfinished attempt at ``content`` may have left (the
    row must not be succeeded: these are its files then)."""
    for storage, name in content_attempt_files(content):
        delete_quietly(storage, name)


def remove_files_of_deleted_content(
    sender: type[Content], instance: Content, **kwargs: Any
) -> None:
    """``post_delete`` receiver: the row's files, and what an unfinished attempt
    left, go once the deletion commits."""
    files_delete_on_commit([*row_files(instance), *content_attempt_files(instance)])


def training_checkpoint_files(run: TrainingRun) -> list[StoredName]:
    """The checkpoint files of a training run: storage names kept in its JSON
    ``checkpoints`` (no file field points at them)."""
    return [
        (default_storage, name)
        for entry in run.checkpoints or ()
        for name in entry["files"].values()
    ]


def training_checkpoints_referenced(names: list[str]) -> set[str]:
    """Those of ``names`` that a training run's ``checkpoints`` point to (for
    the media sweep: no file field knows them)."""
    run_ids = {
        int(parts[1])
        for parts in (name.split("/") for name in names)
        if len(parts) > 2 and parts[0] == "training" and parts[1].isdigit()
    }
    if not run_ids:
        return set()
    runs = TrainingRun.objects.filter(pk__in=run_ids).only("pk", "checkpoints")
    return {name for run in runs for _, name in training_checkpoint_files(run)}


def remove_files_of_deleted_training_run(
    sender: type[TrainingRun], instance: TrainingRun, **kwargs: Any
) -> None:
    """``post_delete`` receiver: a run's checkpoints go once the deletion
    commits (its samples have file fields, and the app's receiver)."""
    files_delete_on_commit(training_checkpoint_files(instance))


def connect(app_config: AppConfig) -> None:
    """Remove the files of deleted content rows, however they were deleted.

    A receiver, not only ``services.content_delete``: deleting a persona
    cascades to its contents without calling generation's services (personas
    may not import them), and the admin's and the gallery's deletions go through
    the same ``Model.delete``, so one receiver sees every deleted row.
    """
    post_delete.connect(
        remove_files_of_deleted_content,
        sender=Content,
        dispatch_uid="studio-file-cleanup-generation.content",
    )
    post_delete.connect(
        remove_files_of_deleted_training_run,
        sender=TrainingRun,
        dispatch_uid="studio-file-cleanup-generation.trainingrun",
    )
    connect_file_cleanup(app_config, exclude=[Content])

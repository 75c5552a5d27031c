"""``python manage.py studio_sweep_media [--delete]``: list, then remove, the
files in storage that no row points to."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from generation.media_sweep import (
    DEFAULT_GRACE,
    DEFAULT_LIMIT,
    STUDIO_MEDIA_FOLDERS,
    sweep_media,
)


class Command(BaseCommand):
    help = (
        "List the files in the studio's media folders that no row points to "
        "(orphans); with --delete, remove them. Files younger than --older-than "
        "are never touched (an upload may be in flight), and nothing outside the "
        f"studio's folders ({', '.join(STUDIO_MEDIA_FOLDERS)}) is looked at."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--delete", action="store_true", help="Remove the orphans found."
        )
        parser.add_argument(
            "--older-than",
            type=int,
            default=int(DEFAULT_GRACE.total_seconds()),
            metavar="SECONDS",
            help="Only files last written this many seconds ago or more "
            "(default %(default)s).",
        )
        parser.add_argument(
            "--limit",
            type=int,
            default=DEFAULT_LIMIT,
            help="Stop after this many orphans (default %(default)s); run again "
            "for more.",
        )
        parser.add_argument(
            "--folder",
            action="append",
            choices=STUDIO_MEDIA_FOLDERS,
            help="Sweep only this folder (repeatable; default: all of them).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than"] < 0 or options["limit"] < 1:
            raise CommandError(
                "--older-than must be 0 or more seconds and --limit 1 or more."
            )
        report = sweep_media(
            delete=options["delete"],
            older_than=timedelta(seconds=options["older_than"]),
            limit=options["limit"],
            folders=tuple(options["folder"] or STUDIO_MEDIA_FOLDERS),
        )
        for name in report.orphans:
            self.stdout.write(name)
        style = self.style.WARNING if report.orphans else self.style.SUCCESS
        self.stdout.write(style(f"Sweep: {report}"))
        if report.orphans and not options["delete"]:
            self.stdout.write("Run again with --delete to remove them.")

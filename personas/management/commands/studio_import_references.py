"""Add image files from disk to a persona's gallery, through the upload checks.

    python manage.py studio_import_references <persona-slug> <file>... [--role ROLE]

Prints one line per file (accepted, or rejected and why) and exits with status 1
when any file was rejected. A bad file is reported, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser

from personas.models import Persona, ReferenceImage, ReferenceRole
from personas.services import reference_image_add
from personas.uploads import printable


class Command(BaseCommand):
    help = (
        "Add images to a persona's gallery through the same checks as the admin; "
        "one line per file, exit status 1 when any file is rejected."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("persona", metavar="persona-slug")
        parser.add_argument("files", nargs="+", metavar="file")
        parser.add_argument(
            "--role",
            choices=ReferenceRole.values,
            default=ReferenceRole.OTHER,
            help="the role of every imported image (default: %(default)s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        slug = options["persona"]
        persona = Persona.objects.filter(slug=slug).first()
        if persona is None:
            raise CommandError(
                f'No persona has the slug "{printable(slug)}": create it in the '
                "admin first, or check the spelling."
            )
        files: list[str] = options["files"]
        rejected = 0
        for path in files:
            shown = printable(path)
            try:
                reference = self.import_file(persona, Path(path), options["role"])
            except ValidationError as error:
                rejected += 1
                reason = " ".join(error.messages)
                self.stdout.write(self.style.ERROR(f"rejected {shown}: {reason}"))
            else:
                self.stdout.write(
                    self.style.SUCCESS(
                        f"accepted {shown}: reference #{reference.pk}, "
                        f"{reference.width} x {reference.height}"
                    )
                )
        if rejected:
            raise CommandError(
                f"{rejected} of {len(files)} files were rejected; nothing was "
                "stored for them.",
                returncode=1,
            )

    def import_file(self, persona: Persona, path: Path, role: str) -> ReferenceImage:
        """Add one file; a file that cannot be opened is a rejection too."""
        try:
            handle = path.open("rb")
        except OSError as error:
            raise ValidationError(
                "%(path)s could not be read (%(reason)s): check the path and its "
                "permissions.",
                code="unreadable",
                params={
                    "path": printable(str(path)),
                    "reason": error.strerror or error,
                },
            ) from None
        with handle:
            return reference_image_add(
                persona=persona, file=File(handle, name=path.name), role=role
            )

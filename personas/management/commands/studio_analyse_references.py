"""Analyse the faces of the reference gallery in this process (CPU).

    python manage.py studio_analyse_references [--persona SLUG] [--all]

Without ``--all`` only references not analysed yet (uploaded before face
analysis existed, or while Redis was down); with it, every one again. Prints
one line per reference, then each persona's health warnings.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from personas.face_analysis import (
    persona_reference_health,
    reference_analyse,
    references_unanalysed,
)
from personas.models import Persona, ReferenceImage


class Command(BaseCommand):
    help = (
        "Find the faces in reference images (dlib, on the CPU) and report each "
        "persona's reference health."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--persona", metavar="SLUG", help="only this persona")
        parser.add_argument(
            "--all",
            action="store_true",
            help="analyse every reference again, not only those not analysed yet",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        persona = None
        if options["persona"]:
            persona = Persona.objects.filter(slug=options["persona"]).first()
            if persona is None:
                raise CommandError(
                    f"No persona with the slug {options['persona']!r}; see the "
                    "persona list in the admin."
                )
        if options["all"]:
            references = ReferenceImage.objects.order_by("persona_id", "order", "id")
            if persona is not None:
                references = references.filter(persona=persona)
        else:
            references = references_unanalysed(persona=persona)
        personas = {}
        for reference in references:
            reference = reference_analyse(reference=reference)
            personas[reference.persona_id] = reference.persona
            outcome = reference.face_error or (
                f"{reference.face_count} faces found ({reference.face_detector})"
            )
            self.stdout.write(f"{reference.persona.slug} #{reference.pk}: {outcome}")
        if not personas:
            self.stdout.write("Nothing to analyse.")
        for analysed in personas.values():
            for health in persona_reference_health(persona=analysed):
                for message in health.messages:
                    self.stdout.write(
                        self.style.WARNING(
                            f"{analysed.slug} #{health.reference.pk}: {message}"
                        )
                    )

"""``python manage.py studio_generate``: queue generations from the command line."""

from __future__ import annotations

import time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from generation import services
from generation.models import ACTIVE_STATUSES, Content, ContentStatus
from generation.parameters import GenerationOverrides
from personas.models import ConsistencyMethod, Persona


class Command(BaseCommand):
    help = (
        "Queue generations for a persona and print their content ids; with "
        "--wait, wait for them and print their final statuses (exit status 1 "
        "when any did not succeed)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--persona", required=True, metavar="SLUG")
        parser.add_argument("--prompt", required=True)
        parser.add_argument("--negative-prompt", default="")
        parser.add_argument("--method", choices=ConsistencyMethod.values)
        parser.add_argument("--strength", type=float, help="img2img strength, 0..1")
        parser.add_argument("--seed", type=int)
        parser.add_argument(
            "--guidance-scale",
            type=float,
            help="Classifier-free guidance (FLUX.1: its distilled guidance).",
        )
        parser.add_argument(
            "--true-cfg-scale",
            type=float,
            help="True CFG with the negative prompt (FLUX.1 and Qwen-Image only).",
        )
        parser.add_argument("--count", type=int, default=1)
        parser.add_argument(
            "--no-refiner",
            action="store_true",
            help="Run an SDXL model with a refiner without it (the base alone).",
        )
        parser.add_argument("--wait", action="store_true")
        parser.add_argument(
            "--timeout",
            type=float,
            default=3600,
            help="Seconds --wait waits at most (default 3600).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            persona = Persona.objects.get(slug=options["persona"])
        except Persona.DoesNotExist:
            raise CommandError(
                f"No persona with slug {options['persona']!r}."
            ) from None
        overrides = GenerationOverrides(
            method=options["method"],
            strength=options["strength"],
            seed=options["seed"],
            guidance_scale=options["guidance_scale"],
            true_cfg_scale=options["true_cfg_scale"],
            use_refiner=False if options["no_refiner"] else None,
        )
        request = {
            "persona": persona,
            "prompt": options["prompt"],
            "negative_prompt": options["negative_prompt"],
            "overrides": overrides,
        }
        try:
            if options["count"] == 1:
                ids = [services.content_enqueue(**request).pk]
            else:
                batch = services.content_enqueue_batch(
                    count=options["count"], **request
                )
                ids = list(batch.contents.order_by("id").values_list("id", flat=True))
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        for content_id in ids:
            self.stdout.write(f"content #{content_id} queued")
        if options["wait"]:
            self._wait(ids, timeout=options["timeout"])

    def _wait(self, ids: list[int], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while Content.objects.filter(pk__in=ids, status__in=ACTIVE_STATUSES).exists():
            if time.monotonic() > deadline:
                raise CommandError(f"Still not finished after {timeout:g} s.")
            time.sleep(0.5)
        unsuccessful = 0
        for content in Content.objects.filter(pk__in=ids).order_by("id"):
            line = f"content #{content.pk} {content.status}"
            if content.error_message:
                line += f": {content.error_message}"
            if content.status != ContentStatus.SUCCEEDED:
                unsuccessful += 1
            self.stdout.write(line)
        if unsuccessful:
            raise CommandError(f"{unsuccessful} of {len(ids)} did not succeed.")

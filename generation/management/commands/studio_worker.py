"""``python manage.py studio_worker``: one GPU worker process (DESIGN.md decision 3)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from generation.queues import all_queue_names, get_queue
from generation.worker import StudioWorker


class Command(BaseCommand):
    help = (
        "Run a Persona Studio GPU worker: jobs run in this process on a warm "
        "pipeline registry, one at a time. Start one per GPU."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--queues",
            nargs="+",
            metavar="QUEUE",
            help="Queues to listen on (default: every generation queue, "
            "STUDIO_DEFAULT_QUEUE first).",
        )
        parser.add_argument(
            "--device",
            help="Inference device for this worker, e.g. cuda:1 (default: "
            "STUDIO_DEVICE, else chosen).",
        )
        parser.add_argument(
            "--preload",
            nargs="*",
            metavar="MODEL",
            help="Model keys to load before the first job (default: "
            "STUDIO_PRELOAD_MODELS).",
        )
        parser.add_argument("--name", help="Worker name (default: random).")
        parser.add_argument(
            "--burst", action="store_true", help="Exit when the queues are empty."
        )
        parser.add_argument("--max-jobs", type=int, help="Exit after this many jobs.")
        parser.add_argument(
            "--job-monitoring-interval",
            type=int,
            default=30,
            help="Seconds between heartbeats of a running job (default 30); a "
            "killed worker's job is abandoned this plus 60 seconds later.",
        )
        parser.add_argument(
            "--reconcile-interval",
            type=float,
            help="Seconds between reconcile runs (default: "
            "STUDIO_RECONCILE_INTERVAL_SECONDS).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["device"]:
            # This process's engine reads STUDIO_DEVICE when it is first built.
            settings.STUDIO_DEVICE = options["device"]
        queues = [get_queue(name) for name in options["queues"] or all_queue_names()]
        worker = StudioWorker(
            queues,
            connection=queues[0].connection,
            name=options["name"],
            job_monitoring_interval=options["job_monitoring_interval"],
            preload_models=options["preload"],
            reconcile_interval=options["reconcile_interval"],
        )
        worker.work(burst=options["burst"], max_jobs=options["max_jobs"])

"""``python manage.py studio_worker``: one GPU worker process (DESIGN.md decision 3)."""

from __future__ import annotations

from typing import Any

import django_rq
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from generation.queues import all_queue_names
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
        parser.add_argument(
            "--worker-class",
            help="Dotted path of a StudioWorker subclass (default: RQ['WORKER_CLASS'], "
            "generation.worker.StudioWorker).",
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
        queue_names = options["queues"] or all_queue_names()
        configured = sorted(settings.RQ_QUEUES)
        unknown = [name for name in queue_names if name not in settings.RQ_QUEUES]
        if unknown:
            raise CommandError(
                f"Queue {', '.join(map(repr, unknown))} is not configured. "
                f"Configured queues: {', '.join(configured) or 'none'} (from "
                "STUDIO_DEFAULT_QUEUE and STUDIO_QUEUE_ROUTES, docs/settings.md)."
            )
        worker = django_rq.get_worker(
            *queue_names,
            worker_class=self._worker_class(options["worker_class"]),
            name=options["name"],
            job_monitoring_interval=options["job_monitoring_interval"],
            preload_models=options["preload"],
            reconcile_interval=options["reconcile_interval"],
            device=options["device"],
        )
        worker.work(burst=options["burst"], max_jobs=options["max_jobs"])

    @staticmethod
    def _worker_class(path: str | None) -> type[StudioWorker]:
        """The worker class: ``--worker-class``, else ``RQ['WORKER_CLASS']``."""
        path = path or getattr(settings, "RQ", {}).get("WORKER_CLASS")
        try:
            worker_class = import_string(path) if isinstance(path, str) else path
        except ImportError as error:
            raise CommandError(
                f"Worker class {path!r} cannot be imported: {error}"
            ) from None
        if worker_class is None:
            return StudioWorker
        if not (
            isinstance(worker_class, type) and issubclass(worker_class, StudioWorker)
        ):
            raise CommandError(
                f"Worker class {path!r} is not a generation.worker.StudioWorker: "
                "studio_worker runs jobs in its own process on a warm engine."
            )
        return worker_class

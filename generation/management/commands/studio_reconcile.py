"""``python manage.py studio_reconcile``: repair rows whose jobs Redis lost."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from generation.reconcile import reconcile


class Command(BaseCommand):
    help = (
        "Compare queued and running content with Redis: enqueue lost jobs again, "
        "retry or fail the runs of workers that are gone, and report what changed."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        report = reconcile()
        style = self.style.WARNING if report.repaired else self.style.SUCCESS
        self.stdout.write(style(f"Reconcile: {report}"))

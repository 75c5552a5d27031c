"""Figures the reliability tests record for docs/reliability.md.

A test records what it tried, how much, and what happened; when the suite runs
under ``tests/reliability/report.py`` the records go to a JSON-lines file named
by ``STUDIO_RELIABILITY_FIGURES``, from which the report writes the document.
In a plain ``pytest`` run nothing is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIGURES_ENV = "STUDIO_RELIABILITY_FIGURES"


@dataclass(frozen=True)
class Figures:
    """The recorder one test gets (``figures`` fixture)."""

    test: str
    section: str

    def record(self, *, group: str, item: str, outcome: str, **numbers: Any) -> None:
        """Record one thing tried: ``group`` (an entry point, a fault, a role)
        collects ``item``s; ``outcome`` is what happened; ``numbers`` are
        counts and seconds worth reporting."""
        path = os.environ.get(FIGURES_ENV)
        if not path:
            return
        record = {
            "test": self.test,
            "section": self.section,
            "group": group,
            "item": item,
            "outcome": outcome,
            "numbers": numbers,
        }
        with Path(path).open("a", encoding="utf-8") as file:
            file.write(json.dumps(record, default=str) + "\n")


def read_figures(path: Path) -> list[dict[str, Any]]:
    """Every record written to ``path`` (none when the file does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]

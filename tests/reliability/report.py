"""Run the reliability suite and write its figures to docs/reliability.md.

    .venv/bin/python -m tests.reliability.report [--output PATH] [PYTEST ARGS...]

One command reproduces the document: it runs ``pytest -m reliability`` on
tests/reliability (and the tests of the other findings, which live beside
their apps: the large gallery, file cleanup, the heartbeat, the RQ dashboard,
ids out of range, the production server; marked ``large_gallery`` or
``finding``) with
``STUDIO_RELIABILITY_FIGURES`` pointing at a fresh JSON-lines file (see
``figures.py``), reads the figures and the JUnit results back, and writes, for
each test, what was tried (its module's and its own description), how much (the
records' counts) and what happened (its outcome and the records' outcomes and
numbers). Extra arguments go to pytest (``-k fault`` runs part of the suite;
the document then covers that part). The exit status is pytest's. The
machine's load average before and after the run goes into the document, and
``--note`` adds a sentence about the machine (shared with other jobs, say):
times measured under load are longer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.reliability.figures import FIGURES_ENV, read_figures

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "docs" / "reliability.md"
COMMAND = ".venv/bin/python -m tests.reliability.report"
SECTIONS = {
    "hostile_uploads": "Hostile input: files",
    "hostile_parameters": "Hostile input: parameters",
    "faults": "Faults",
    "permissions": "Permissions",
    "load": "Load",
    "large_gallery": "Large galleries",
    "bounded_model_inputs": "Bounded model inputs",
    "lora_layers": "LoRA keys and shapes against the base model's layers",
    "cleanup": "No orphans: deletes, failed stores, retried attempts, the sweep",
    "heartbeat": "A running job is never re-run by its own worker",
    "rq_dashboard": "The RQ dashboard: who sees it, and Redis down",
    "views": "Bad requests: ids out of range",
    "gunicorn": "Production fails fast; the documented server serves",
}
MODULES = {
    "large_gallery": "tests.personas.test_large_gallery",
    "cleanup": "tests.generation.test_cleanup",
    "heartbeat": "tests.generation.test_heartbeat",
    "rq_dashboard": "tests.studio.test_rq_dashboard",
    "views": "tests.gallery.test_views",
    "gunicorn": "tests.deployment.test_gunicorn",
}
"""Sections whose tests live beside their app, outside tests/reliability (their
module); the tests of a finding there carry the ``finding`` marker."""
SUITE_PATHS = [
    "tests/reliability",
    "tests/personas/test_large_gallery.py",
    "tests/generation/test_cleanup.py",
    "tests/generation/test_heartbeat.py",
    "tests/studio/test_rq_dashboard.py",
    "tests/gallery/test_views.py",
    "tests/deployment/test_gunicorn.py",
]
SUITE_MARKERS = "reliability or large_gallery or finding"


@dataclass(frozen=True)
class TestResult:
    module: str
    name: str
    outcome: str
    seconds: float
    message: str

    @property
    def function(self) -> str:
        return self.name.split("[", 1)[0]


def run_suite(pytest_args: list[str], figures_path: Path, junit_path: Path) -> int:
    """Run the reliability suite in a child pytest; return its exit status."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        *SUITE_PATHS,
        "-m",
        SUITE_MARKERS,
        "-p",
        "no:cacheprovider",
        "-q",
        f"--junitxml={junit_path}",
        *pytest_args,
    ]
    env = {**os.environ, FIGURES_ENV: str(figures_path)}
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def read_results(junit_path: Path) -> list[TestResult]:
    if not junit_path.exists():
        return []
    results = []
    for case in ElementTree.parse(junit_path).iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            element = case.find(kind)
            if element is not None:
                outcome = {"failure": "failed", "error": "error"}.get(kind, kind)
                first_lines = (element.get("message") or "").strip().splitlines()
                message = first_lines[0] if first_lines else ""
                break
        results.append(
            TestResult(
                module=case.get("classname", ""),
                name=case.get("name", ""),
                outcome=outcome,
                seconds=float(case.get("time", 0)),
                message=message,
            )
        )
    return results


def describe(module: str, function: str | None = None) -> str:
    """A test module's or function's docstring, as one paragraph."""
    try:
        target: Any = importlib.import_module(module)
        if function:
            target = getattr(target, function)
    except (ImportError, AttributeError):
        return ""
    return " ".join((target.__doc__ or "").split())


def humanise(function: str) -> str:
    return function.removeprefix("test_").replace("_", " ").capitalize()


def table(headers: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(" --- " for _ in headers) + "|",
    ]
    for row in rows:
        cells = [str(cell).replace("|", "\\|").replace("\n", " ") for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# --- Sections -----------------------------------------------------------------


CHECK_COST = "check cost: "


def check_cost_lines(records: list[dict]) -> list[str]:
    """The worst accepted and refused file by CPU and by memory (the targets:
    1 s of CPU, 256 MB), and the LoRA header refusal."""
    rows = []
    for record in records:
        numbers = record["numbers"]
        web_cpu = numbers.get("web_cpu_seconds", numbers.get("cpu_seconds", ""))
        rows.append(
            (
                record["group"].removeprefix(CHECK_COST),
                f"`{record['item']}`",
                web_cpu,
                numbers.get("child_cpu_seconds", ""),
                numbers.get("web_peak_mb", ""),
                numbers.get("child_peak_mb", ""),
                record["outcome"],
            )
        )
    if not rows:
        return []
    return [
        "**What checking a file cost** (targets: 1 s of CPU and 256 MB for any "
        "file; the web process's CPU and Python allocations at their peak, the "
        "decoding child's CPU and peak resident memory):",
        "",
        *table(
            [
                "worst",
                "file",
                "web CPU (s)",
                "decoder CPU (s)",
                "web peak (MB)",
                "decoder peak (MB)",
                "outcome",
            ],
            rows,
        ),
        "",
    ]


def uploads_section(records: list[dict]) -> list[str]:
    from tests.reliability.corpus import Kind, corpus

    costs = [r for r in records if r["group"].startswith(CHECK_COST)]
    records = [r for r in records if not r["group"].startswith(CHECK_COST)]
    files = corpus()
    lines = [
        f"The corpus (`tests/reliability/corpus.py`) holds {len(files)} files built "
        "in code: "
        + ", ".join(
            f"{sum(1 for f in files if f.kind is kind and f.refused is refused)} "
            f"{kind.value} files {'to refuse' if refused else 'to accept'}"
            for kind in Kind
            for refused in (True, False)
        )
        + ". Every file goes through every upload entry point; a file of the "
        "other kind must be refused too.",
        "",
        *check_cost_lines(costs),
        *table(
            ["entry point", "files tried", "outcomes"],
            (
                (group, len(items), summarise(item["outcome"] for item in items))
                for group, items in grouped(records).items()
            ),
        ),
        "",
        "<details><summary>Every corpus file</summary>",
        "",
        *table(
            ["kind", "file", "bytes", "what it is", "expected"],
            (
                (
                    file.kind.value,
                    f"`{file.name!r}`",
                    f"{len(file.content):,}",
                    file.description,
                    f"refused: `{file.code}`" if file.refused else "neutralised",
                )
                for file in files
            ),
        ),
        "",
        "</details>",
    ]
    return lines


def parameters_section(records: list[dict]) -> list[str]:
    lines = []
    for group, items in grouped(records).items():
        lines += [
            f"**{group}** ({len(items)} tried)",
            "",
            *table(
                ["what was sent", "what the person was told"],
                ((item["item"], item["outcome"]) for item in items),
            ),
            "",
        ]
    return lines


ORPHANS = "orphaned files after "


def faults_section(records: list[dict]) -> list[str]:
    orphans = [r for r in records if r["item"].startswith(ORPHANS)]
    records = [r for r in records if not r["item"].startswith(ORPHANS)]
    return [
        *fault_table(records),
        "",
        "**Orphaned files after each fault** (goal: 0; files in the media "
        "folder that no row points to, counted by `tests/reliability/"
        "orphans.py` after the test):",
        "",
        *table(
            ["after", "orphaned files"],
            (
                (
                    f"`{r['item'].removeprefix(ORPHANS)}`",
                    r["numbers"].get("orphans", ""),
                )
                for r in orphans
            ),
        ),
        "",
        f"Total: {sum(r['numbers'].get('orphans', 0) for r in orphans)} orphaned "
        f"files after {len(orphans)} faults.",
    ]


def fault_table(records: list[dict]) -> list[str]:
    shown = {
        "rows",
        "ended_correctly",
        "lost_or_stuck",
        "recovered_by",
        "recovery_seconds",
        "recovery_target_seconds",
    }
    extra_keys = sorted(
        {key for record in records for key in record["numbers"] if key not in shown}
    )
    return table(
        [
            "fault",
            "rows",
            "ended correctly",
            "lost or stuck",
            "final statuses",
            "recovered by",
            "recovery (s)",
            *extra_keys,
        ],
        (
            (
                record["item"],
                record["numbers"].get("rows", ""),
                record["numbers"].get("ended_correctly", ""),
                record["numbers"].get("lost_or_stuck", ""),
                record["outcome"],
                record["numbers"].get("recovered_by", ""),
                recovery_against_target(record["numbers"]),
                *(record["numbers"].get(key, "") for key in extra_keys),
            )
            for record in records
        ),
    )


def recovery_against_target(numbers: dict[str, Any]) -> str:
    """The measured recovery time, and whether it met its target: a figure, which
    no test asserts (a loaded machine is slower)."""
    seconds = numbers.get("recovery_seconds")
    target = numbers.get("recovery_target_seconds")
    if seconds is None or target is None:
        return "" if seconds is None else str(seconds)
    verdict = "within" if seconds < target else "over"
    return f"{seconds} ({verdict} the {target} s target)"


def area(item: str) -> str:
    """Which part of the studio a permission record is about."""
    if item.startswith("admin action"):
        return "admin actions"
    path = item.split(" ", 2)[1] if " " in item else item
    for prefix, name in (
        ("/admin/rq/", "queue dashboard"),
        ("/admin/", "admin pages"),
        ("/gallery/", "gallery"),
        ("/media/", "media files"),
    ):
        if path.startswith(prefix):
            return name
    return "other"


def permissions_section(records: list[dict]) -> list[str]:
    areas = [
        "admin pages",
        "admin actions",
        "gallery",
        "media files",
        "queue dashboard",
    ]
    counts: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        counts[record["group"]][(area(record["item"]), record["outcome"])] += 1
    return [
        "Each cell: requests granted / requests made. Every request matched the "
        "policy in `tests/reliability/test_permissions.py` when the test passed. "
        "Pages that need objects a test cannot create (RQ results and "
        "schedulers) are requested only by roles the policy denies, hence the "
        "superuser's smaller total on the queue dashboard.",
        "",
        *table(
            ["role", *areas],
            (
                (
                    role,
                    *(
                        f"{found[(name, 'granted')]} / "
                        f"{found[(name, 'granted')] + found[(name, 'denied')]}"
                        for name in areas
                    ),
                )
                for role, found in counts.items()
            ),
        ),
    ]


def load_section(records: list[dict]) -> list[str]:
    by_group = grouped(records)
    lines = []
    if by_group.get("pages"):
        lines += table(
            [
                "page",
                "queries (150 rows)",
                "queries (10,000 rows)",
                "ms (150 rows)",
                "ms (10,000 rows)",
            ],
            (
                (
                    item["item"],
                    item["numbers"]["queries_small"],
                    item["numbers"]["queries_large"],
                    item["numbers"]["ms_small"],
                    item["numbers"]["ms_large"],
                )
                for item in by_group["pages"]
            ),
        )
        lines.append("")
    for item in by_group.get("queue", []):
        numbers = ", ".join(f"{key} {value}" for key, value in item["numbers"].items())
        lines += [f"**{item['item']}**: {item['outcome']}; {numbers}.", ""]
    return lines


def large_gallery_section(records: list[dict]) -> list[str]:
    return table(
        [
            "gallery",
            "outcome",
            "references after the save",
            "fields posted",
            "change page (KB)",
            "change page (s)",
            "save queries",
            "save (s)",
        ],
        (
            (
                record["item"],
                record["outcome"],
                record["numbers"].get("references", ""),
                record["numbers"].get("fields_posted", ""),
                record["numbers"].get("page_kb", ""),
                record["numbers"].get("page_seconds", ""),
                record["numbers"].get("save_queries", ""),
                record["numbers"].get("save_seconds", ""),
            )
            for record in records
        ),
    )


def records_section(records: list[dict]) -> list[str]:
    """The records of a section as one table: what was tried, what happened,
    and the numbers."""
    if not records:
        return []
    return table(
        ["what", "item", "outcome", "numbers"],
        (
            (
                record["group"],
                record["item"],
                record["outcome"],
                ", ".join(f"{key} {value}" for key, value in record["numbers"].items()),
            )
            for record in records
        ),
    )


RENDERERS = {
    "hostile_uploads": uploads_section,
    "hostile_parameters": parameters_section,
    "faults": faults_section,
    "permissions": permissions_section,
    "load": load_section,
    "large_gallery": large_gallery_section,
    "bounded_model_inputs": records_section,
    "lora_layers": records_section,
    "cleanup": records_section,
    "heartbeat": records_section,
    "rq_dashboard": records_section,
    "views": records_section,
    "gunicorn": records_section,
}


def grouped(records: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[record["group"]].append(record)
    return dict(groups)


def summarise(outcomes: Iterable[str]) -> str:
    return ", ".join(
        f"{count} {outcome}" for outcome, count in sorted(Counter(outcomes).items())
    )


def render(
    results: list[TestResult],
    records: list[dict],
    exit_status: int,
    *,
    machine_note: str = "",
) -> str:
    outcomes = Counter(result.outcome for result in results)
    database = os.environ.get("DATABASE_URL", "").split(":", 1)[0] or "sqlite"
    lines = [
        "# Reliability: faults, hostile input, permissions and load",
        "",
        f"Generated by `{COMMAND}` (tests/reliability/report.py), which runs "
        "`pytest -m reliability` on tests/reliability (and the large-gallery "
        "tests of tests/personas) and writes this file; run it again to "
        "reproduce every figure. Do not edit by hand.",
        "",
        f"Last run: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on "
        f"{platform.machine()} with {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, database {database}. Tests: "
        + ", ".join(f"{count} {outcome}" for outcome, count in outcomes.items())
        + f" (pytest exit status {exit_status}).",
        "",
    ]
    if machine_note:
        lines += [machine_note, ""]
    # A skipped test ran nothing: what its fixtures recorded is no figure.
    skipped = {r.name for r in results if r.outcome == "skipped"}
    by_section: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        if record["test"].rsplit("::", 1)[-1] not in skipped:
            by_section[record["section"]].append(record)
    for key, title in SECTIONS.items():
        module = MODULES.get(key, f"tests.reliability.test_{key}")
        tests = [result for result in results if result.module == module]
        if not tests and not by_section.get(key):
            continue
        lines += [f"## {title}", "", describe(module), ""]
        lines += RENDERERS[key](by_section.get(key, []))
        lines += ["", "Tests:", ""]
        lines += test_lines(module, tests)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def test_lines(module: str, tests: list[TestResult]) -> list[str]:
    """One line per test function: its description, cases and outcomes."""
    by_function: dict[str, list[TestResult]] = defaultdict(list)
    for result in tests:
        by_function[result.function].append(result)
    lines = []
    for function, cases in by_function.items():
        summary = summarise(case.outcome for case in cases)
        seconds = sum(case.seconds for case in cases)
        about = describe(module, function)
        line = (
            f"- **{humanise(function)}** ({len(cases)} cases: {summary}; "
            f"{seconds:.1f} s)"
        )
        if about:
            line += f": {about}"
        lines.append(line)
        for case in cases:
            if case.outcome != "passed":
                lines.append(f"  - `{case.name}` {case.outcome}: {case.message}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--note", default="", help="a sentence about the machine, for the document"
    )
    options, pytest_args = parser.parse_known_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings.test")
    import django

    django.setup()
    with tempfile.TemporaryDirectory(prefix="reliability-") as folder:
        figures_path = Path(folder) / "figures.jsonl"
        junit_path = Path(folder) / "junit.xml"
        load_before = os.getloadavg()
        exit_status = run_suite(pytest_args, figures_path, junit_path)
        load_after = os.getloadavg()
        note = (
            f"Load average (1, 5, 15 min) before the run "
            f"{', '.join(f'{x:.1f}' for x in load_before)}, after it "
            f"{', '.join(f'{x:.1f}' for x in load_after)}, on {os.cpu_count()} CPUs."
        )
        if options.note:
            note += " " + options.note.strip()
        document = render(
            read_results(junit_path),
            read_figures(figures_path),
            exit_status,
            machine_note=note,
        )
    options.output.write_text(document, encoding="utf-8")
    print(f"Wrote {options.output}")
    return exit_status


if __name__ == "__main__":
    sys.exit(main())

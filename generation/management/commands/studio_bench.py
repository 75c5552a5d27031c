"""``python manage.py studio_bench``: measure the studio against raw diffusers.

The benchmark itself is the top-level ``benchmarks`` package, outside the
product's import graph: only this command imports it, when it runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Benchmark the studio: its overhead against raw diffusers, the pipeline "
        "registry's economics, how cost grows with the work, queue throughput and "
        "GPU iterations per second. Runs on random-weight models the studio writes "
        "itself; prints Markdown tables and can write the full JSON report."
    )

    def add_arguments(self, parser: Any) -> None:
        from benchmarks.presets import PRESETS
        from benchmarks.suite import SECTIONS

        parser.add_argument(
            "--preset",
            choices=sorted(PRESETS),
            default="tiny",
            help="tiny: seconds, a smoke test; small: a reduced SD 1.5 for the "
            "CPU; sd15: SD 1.5's full architecture, for a GPU; flux: FLUX.1 "
            "Kontext [dev]'s full architecture in bf16, for a GPU of 48 GB or "
            "more; qwen-image: Qwen-Image-Edit-2509's full architecture in bf16, "
            "for a GPU of 80 GB or more and 60 GB of free disk (default: tiny).",
        )
        parser.add_argument(
            "--json", type=Path, metavar="PATH", help="Write the JSON report here."
        )
        parser.add_argument(
            "--runs",
            type=int,
            help="Timed runs per measurement (default: the preset's; the growth "
            "series use half as many per point).",
        )
        parser.add_argument(
            "--only",
            help=f"Comma-separated sections to run (default: the preset's; all "
            f"of {','.join(SECTIONS)} but for flux, which runs overhead,gpu).",
        )
        parser.add_argument(
            "--queue-jobs",
            type=int,
            help="Tiny jobs for the queue throughput (default: the preset's, 200).",
        )
        parser.add_argument(
            "--device",
            help="cuda, cuda:1, mps or cpu (default: chosen as the engine does).",
        )
        parser.add_argument(
            "--gpu-dry-run",
            action="store_true",
            help="Run the gpu section on this device (the CPU, say), once per "
            "path and speed option, with torch.compile's eager backend: checks "
            "the GPU script runs; measures no GPU.",
        )
        parser.add_argument(
            "--workdir",
            type=Path,
            help="Where the models and the sandboxed studio go (default: "
            "STUDIO_VAR_DIR/bench); models are reused across runs.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from benchmarks.presets import PRESETS
        from benchmarks.report import render_markdown
        from benchmarks.suite import SECTIONS, BenchOptions, run_bench

        preset = PRESETS[options["preset"]]
        only = options["only"] or ",".join(preset.sections)
        sections = [name.strip() for name in only.split(",") if name.strip()]
        if not sections:
            raise CommandError(f"--only takes sections among {', '.join(SECTIONS)}.")
        if options["runs"] is not None and options["runs"] < 1:
            raise CommandError("--runs must be at least 1.")
        self._started = time.monotonic()
        workdir = options["workdir"] or Path(settings.STUDIO_VAR_DIR) / "bench"
        try:
            report = run_bench(
                preset,
                BenchOptions(
                    sections=sections,
                    workdir=workdir.resolve(),
                    runs=options["runs"],
                    queue_jobs=options["queue_jobs"],
                    device=options["device"],
                    gpu_dry_run=options["gpu_dry_run"],
                ),
                log=self._log,
            )
        except ValueError as error:
            raise CommandError(str(error)) from error
        report["command"] = "python manage.py studio_bench " + " ".join(
            _command_arguments(options)
        )
        if options["json"]:
            options["json"].parent.mkdir(parents=True, exist_ok=True)
            options["json"].write_text(json.dumps(report, indent=2) + "\n")
        self.stdout.write(render_markdown(report))

    def _log(self, message: str) -> None:
        """Progress on stderr, with the seconds since the start."""
        self.stderr.write(f"[{time.monotonic() - self._started:7.1f} s] {message}")


def _command_arguments(options: dict[str, Any]) -> list[str]:
    """The options given, as a command line that reproduces the run."""
    from benchmarks.suite import SECTIONS

    arguments = [f"--preset {options['preset']}"]
    for name in ("runs", "only", "queue_jobs", "device"):
        if options[name] is not None and not (
            name == "only" and options[name] == ",".join(SECTIONS)
        ):
            arguments.append(f"--{name.replace('_', '-')} {options[name]}")
    if options.get("gpu_dry_run"):
        arguments.append("--gpu-dry-run")
    return arguments

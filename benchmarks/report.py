"""The benchmark's report: the machine it ran on, and Markdown tables of a run.

The tables are what ``studio_bench`` prints and what BENCHMARKS.md keeps per
preset; the JSON report holds every number behind them.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import diffusers
import torch


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU, library versions and the load at start
    (other work on the machine skews timings; the load says how much there was)."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(_memory_bytes() / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a header, then one table per measured section."""
    machine = report["machine"]
    lines = [
        f"### Preset `{report['preset']}`: {report['summary']}",
        "",
        f"- Date: {report['date']}",
        f"- Command: `{report['command']}`",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB RAM, GPU: {machine['gpu'] or 'none'}; "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), "
        f"diffusers {machine['diffusers']}; load average (1, 5, 15 min) at start "
        f"{_loads(machine['load_average'])}, at the end "
        f"{_loads(machine.get('load_average_end', []))}",
        f"- Device: {report['device']} ({report['dtype']})",
        "",
    ]
    for name, render in (
        ("overhead", _overhead),
        ("registry", _registry),
        ("growth", _growth),
        ("queue", _queue),
        ("gpu", _gpu),
    ):
        if name in report:
            lines += render(report[name]) + [""]
    if report.get("targets"):
        lines += _table(
            ["target", "measured", "limit", "met"],
            [
                [
                    row["target"],
                    _num(row["measured"]),
                    _num(row["limit"]),
                    "yes" if row["met"] else "**no**",
                ]
                for row in report["targets"]
            ],
        )
    return "\n".join(lines).rstrip() + "\n"


def _overhead(section: dict[str, Any]) -> list[str]:
    raw, engine, studio = section["raw"], section["engine"], section["studio"]
    workload = section["workload"]
    rows = [
        ["raw diffusers, bare process", raw, 1.0, 1.0, 0.0],
        [
            "Engine.generate",
            engine,
            section["engine_ratio"],
            section["engine_ratio_min"],
            section["engine_overhead_ms"],
        ],
        [
            "studio: enqueue, worker, stored, scored, row updated",
            studio,
            section["studio_ratio"],
            section["studio_ratio_min"],
            section["studio_overhead_ms"],
        ],
    ]
    verdict = (
        f"spread (IQR / median) at most {_num(section['max_spread'])} on every "
        f"path, within the {_num(section['spread_limit'])} limit: the ratios can "
        "be judged"
        if section["judgeable"]
        else f"**spread too large to judge**: IQR / median up to "
        f"{_num(section['max_spread'])} on a path, above the "
        f"{_num(section['spread_limit'])} limit; neither ratio is a verdict"
    )
    breakdown = studio["breakdown"]
    return [
        f"**Overhead** (txt2img {workload['width']}x{workload['height']}, "
        f"{workload['steps']} steps, seed {workload['seed']}; medians of "
        f"{raw['runs']} runs after a warm-up, taking turns run by run; same image "
        f"on all paths: {'yes' if section['same_image'] else '**no**'})",
        "",
        *_table(
            [
                "path",
                "median s",
                "min s",
                "max s",
                "IQR / median",
                "ratio of medians",
                "ratio of minimums",
                "overhead ms",
            ],
            [
                [
                    name,
                    _num(t["median"]),
                    _num(t["min"]),
                    _num(t["max"]),
                    _num(t["spread"]),
                    _num(ratio),
                    _num(ratio_min),
                    _num(ms),
                ]
                for name, t, ratio, ratio_min, ms in rows
            ],
        ),
        "",
        f"Spread rule: {verdict}.",
        "",
        f"Studio minus engine: {_num(section['beyond_engine_ms'])} ms per job, of "
        f"which {_num(section['inside_engine_call_ms'])} ms inside the engine call "
        f"(the worker's call, with the job's per-step progress and cancellation "
        f"checks, against this process's; within noise when small against the "
        f"spread above). Around the engine call, paired per job: "
        f"{_num(section['outside_engine_call_ms'])} ms (enqueue to pick-up "
        f"{_ms(breakdown['enqueue_and_queue'])}, of which the worker's pick-up, "
        f"the row's enqueued to started, {_ms(breakdown.get('pick_up', 0.0))}; "
        f"score {_ms(breakdown['score'])}, "
        f"the rest of the job "
        f"{_ms(breakdown['job_before_and_after_engine'] - breakdown['score'])}, "
        f"storing output and thumbnails and updating the row "
        f"{_ms(breakdown['store_and_row_update'])}, of which encoding every file "
        f"{_ms(breakdown.get('encode', 0.0))}). Parts of enqueue to pick-up: "
        f"the service call (row committed, job pushed) "
        f"{_ms(breakdown.get('enqueue', 0.0))}, the pushed job to the row claimed "
        f"(Redis waking the worker's blocking pop, RQ's preparation, the claim) "
        f"{_ms(breakdown.get('hand_over', 0.0))}, the row finished to the result "
        f"read back (commit, RQ's end of job, the result stream) "
        f"{_ms(breakdown.get('after_finish', 0.0))}.",
    ]


def _registry(section: dict[str, Any]) -> list[str]:
    memory = section["memory_measure"]
    unit = "MB allocated on the GPU" if memory == "cuda_mb" else "MB RSS"
    rows = [
        ["cold load (first `pipeline`), ms", section["cold_load_ms"]],
        ["first read of every weight, ms", section["first_read_ms"]],
        ["ControlNet cold load, ms", section["controlnet_cold_load_ms"]],
        ["warm hit, ms", section["hit_ms"]],
        *[
            [f"derive {method}, ms", section[f"derive_{method}_ms"]]
            for method in ("img2img", "controlnet", "hybrid")
        ],
        [f"base, {unit}", section[f"{memory}_base"]],
        [f"base + ControlNet, {unit}", section[f"{memory}_base_and_controlnet"]],
        [f"with every variant live, {unit}", section[f"{memory}_all_variants"]],
        ["every variant / base + ControlNet", section["variants_memory_ratio"]],
        ["slowest derivation / cold load", section["derivation_share_of_cold_load"]],
    ]
    return [
        "**Registry** (fresh process; medians of repeated calls)",
        "",
        *_table(["measure", "value"], [[name, _num(v)] for name, v in rows]),
    ]


def _growth(section: dict[str, Any]) -> list[str]:
    names = {
        "strength": "img2img strength (PNDM)",
        "strength_ddim": "img2img strength (DDIM)",
        "steps": "steps",
        "size": "image side (square)",
        "images": "images per job",
        "controlnets": "ControlNets",
        "ip_adapter": "IP-Adapter",
    }
    rows = [
        [
            label,
            str(point["value"]),
            _num(point["median"]),
            str(point["steps_run"]),
            _num(point["denoise_median"]),
        ]
        for key, label in names.items()
        for point in section[key]
    ]
    fits = section["fits"]
    pndm, ddim = (
        section["strength_proportionality"][name]
        for name in ("model_scheduler", "ddim")
    )
    return [
        "**Cost growth** (Engine.generate, warm; medians)",
        "",
        *_table(["series", "value", "median s", "steps run", "denoising s"], rows),
        "",
        f"Per step {_ms(fits['steps']['slope'])}, per image "
        f"{_ms(fits['images']['slope'])}, per ControlNet "
        f"{_ms(fits['controlnets']['slope'])}, per megapixel "
        f"{_ms(fits['size']['slope'])}. img2img denoising time vs strength, worst "
        f"deviation from proportional: {pndm['max_deviation']:.1%} with PNDM (one "
        f"extra step per run), {ddim['max_deviation']:.1%} with DDIM; fixed cost "
        f"(text encoding, VAE encode and decode) {_ms(pndm['fixed_seconds'])}.",
    ]


def _queue(section: dict[str, Any]) -> list[str]:
    breakdown = section["breakdown_ms"]
    return [
        f"**Queue throughput** ({section['jobs']} jobs, one worker)",
        "",
        *_table(
            [
                "jobs/s",
                "per job ms",
                "engine ms",
                "overhead ms",
                "in job beyond engine ms",
                "score ms",
                "between jobs ms",
                "enqueue ms",
            ],
            [
                [
                    _num(section["jobs_per_second"]),
                    _num(section["per_job_ms"]),
                    _num(section["engine_ms"]),
                    _num(section["overhead_ms"]),
                    _num(breakdown["in_job_beyond_engine"]),
                    _num(breakdown["score"]),
                    _num(breakdown["between_jobs"]),
                    _num(breakdown["enqueue_per_job"]),
                ]
            ],
        ),
    ]


def _gpu(section: dict[str, Any]) -> list[str]:
    if "skipped" in section:
        return [f"**GPU**: not measured: {section['skipped']}."]
    dry = ", a dry run: checks the script, measures no GPU"
    dry = dry if section.get("dry_run") else ""
    return [
        f"**GPU** ({section['device']}, {section['dtype']}){dry}",
        "",
        *_table(
            ["options", "raw it/s", "studio it/s", "studio / raw", "same image"],
            [
                [
                    row["options"],
                    _num(row["raw_it_per_s"]),
                    _num(row["studio_it_per_s"]),
                    _num(row["studio_ratio"]),
                    "yes" if row["same_image"] else "**no**",
                ]
                for row in section["rows"]
            ],
        ),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _num(value: float) -> str:
    """Three significant decimals for small numbers, one for large ones."""
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def _loads(loads: list[float]) -> str:
    return "/".join(str(load) for load in loads) or "n/a"


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

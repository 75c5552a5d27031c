"""The registry's economics, from the registry benchmark (``benchmarks.registry``).

That benchmark measures, in a fresh process so that resident memory counts only
what the registry holds: a cold load, a warm hit, deriving img2img, ControlNet
and hybrid from the loaded base, and the memory of the base alone, with its
ControlNet, and with one live pipeline of every method. This module runs it on a
preset's model and states the two targets: deriving every variant adds no second
copy of the weights (memory at most 1.02 times the base with its ControlNet,
which the ControlNet variants need) and takes under 1% of a cold load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

DERIVED_METHODS = ("img2img", "controlnet", "hybrid")


def measure_registry(model_root: Path, *, device: str, runs: int) -> dict[str, Any]:
    """Run the registry benchmark on the model written under ``model_root``.

    The benchmark picks its device as the engine does; a CPU run hides the GPUs
    from it.
    """
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.registry",
            "--measure",
            str(model_root),
            "--repeat",
            str(runs),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    slowest_derivation_ms = max(
        measured[f"derive_{method}_ms"] for method in DERIVED_METHODS
    )
    memory_key = "cuda_mb" if "cuda_mb_base" in measured else "rss_mb"
    return {
        **measured,
        "memory_measure": memory_key,
        "variants_memory_ratio": measured[f"{memory_key}_all_variants"]
        / measured[f"{memory_key}_base_and_controlnet"],
        "derivation_share_of_cold_load": slowest_derivation_ms
        / measured["cold_load_ms"],
    }

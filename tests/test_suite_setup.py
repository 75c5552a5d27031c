"""The test suite's own promises: collecting a test that needs no model imports
no torch, diffusers or transformers, and torch runs on one thread in the test
process (as in the workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers")


def test_collecting_a_test_without_a_model_imports_no_torch():
    probe = (
        "import sys, pytest\n"
        "pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', "
        "'tests/studio/test_settings_doc.py'])\n"
        f"print('HEAVY', [name for name in {HEAVY!r} if name in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_torch_runs_on_one_thread_in_the_test_process():
    import torch

    assert torch.get_num_threads() == 1

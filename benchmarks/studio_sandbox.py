"""The whole studio in a private folder, for measuring its full path.

The benchmark must not write into the studio's own database, media or Redis, nor
compete with its workers. A sandbox is a folder with its own SQLite database,
media folder and embedded Redis; a driver process (``studio_driver``) set up on
it enqueues generations through the services, and a real ``studio_worker``
process runs them. Both get their settings through the environment only, as a
worker on another host would, so the path measured is the production one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.line_process import LineProcess
from benchmarks.workload import SpeedOptions
from generation.engine.config import EngineConfig
from studio.conf import BASE_DIR

# Variables of the studio's own environment that must not leak into the sandbox.
_HOST_SETTINGS = ("REDIS_URL", "DATABASE_URL", "MEDIA_ROOT", "AWS_STORAGE_BUCKET_NAME")


@dataclass
class StudioSandbox:
    """A private studio serving one engine configuration (see the module doc).

    ``root`` is emptied when the sandbox is made: every sandbox starts with an
    empty database, media folder and Redis.
    """

    root: Path
    config: EngineConfig
    device: str
    dtype: str

    def __post_init__(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.var_dir.mkdir(parents=True)

    @property
    def var_dir(self) -> Path:
        """The sandbox's ``STUDIO_VAR_DIR``: database, media, Redis, worker log."""
        return self.root / "var"

    def environment(self, speed: SpeedOptions) -> dict[str, str]:
        """The environment of the driver and its worker."""
        var = self.var_dir
        env = {
            key: value for key, value in os.environ.items() if key not in _HOST_SETTINGS
        }
        ip_adapter = self.config.ip_adapter
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "studio.settings.local",
                "DEBUG": "false",
                "PYTHONUNBUFFERED": "1",
                "STUDIO_VAR_DIR": str(var),
                "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
                "MEDIA_ROOT": str(var / "media"),
                "STUDIO_MODELS": json.dumps(
                    {
                        key: {"source": spec.source, "label": spec.label}
                        for key, spec in self.config.models.items()
                    }
                ),
                "STUDIO_MODEL_ROOTS": json.dumps(
                    [str(root) for root in self.config.model_roots]
                ),
                "STUDIO_CONTROLNETS": json.dumps(self.config.controlnets),
                "STUDIO_IP_ADAPTER": json.dumps(
                    asdict(ip_adapter) if ip_adapter else {}
                ),
                "STUDIO_PRELOAD_MODELS": json.dumps(list(self.config.models)),
                "STUDIO_DEVICE": self.device,
                "STUDIO_DTYPE": self.dtype,
                "STUDIO_CHANNELS_LAST": str(speed.channels_last).lower(),
                "STUDIO_TORCH_COMPILE": str(speed.compile).lower(),
                "STUDIO_COMPILE_BACKEND": speed.compile_backend,
                # The workload is a text job: its worker compiles no IP-Adapter
                # graph at start (two more compiles, minutes on a GPU).
                "STUDIO_COMPILE_IP_ADAPTER": "false",
            }
        )
        return env

    def start(self, plan: dict[str, Any], speed: SpeedOptions) -> LineProcess:
        """Start the driver on ``plan`` (see ``studio_driver``), its worker ready."""
        plan_path = self.root / "plan.json"
        plan_path.write_text(json.dumps(plan))
        return LineProcess(
            [sys.executable, "-m", "benchmarks.studio_driver", str(plan_path)],
            env=self.environment(speed),
            cwd=BASE_DIR,
            log_path=self.root / "driver.log",
        )

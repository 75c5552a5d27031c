"""A helper process driven line by line: one request on stdin, one reply on stdout.

The benchmark keeps raw diffusers and the sandboxed studio in processes of their
own, loaded once, and asks each for one run at a time, so that the paths it
compares take turns: whatever else the machine is doing slows all of them alike,
instead of whichever path happened to run at that moment. Replies are the stdout
lines that start with ``PREFIX`` followed by JSON; anything else a library prints
is ignored. The process's stderr goes to a log file, quoted when it fails.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

PREFIX = "BENCH "
EXIT_TIMEOUT_SECONDS = 120


class BenchProcessError(RuntimeError):
    """A helper process ended without replying; the message quotes its log."""


class LineProcess:
    """A started helper process (see the module docstring); a context manager.

    Its first reply, sent once it has loaded and warmed up, is read by
    ``wait_ready``: several helpers can start at once and be waited for after.
    """

    def __init__(
        self, command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path
    ) -> None:
        self.log_path = log_path
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self.ready: dict[str, Any] = {}

    def wait_ready(self) -> LineProcess:
        """Wait for the ready reply and keep it in ``ready``."""
        self.ready = self.reply()
        return self

    def reply(self) -> dict[str, Any]:
        """The next reply; raises when the process ends first."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                return json.loads(line.removeprefix(PREFIX))
        self.process.wait()
        raise BenchProcessError(
            f"{self.process.args[:3]} exited ({self.process.returncode}) without "
            f"replying:\n{self.log_path.read_text()[-6000:]}"
        )

    def request(self, line: str) -> dict[str, Any]:
        """Send one request line; its reply."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.reply()

    def close(self) -> None:
        """End of input: the process finishes and exits."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=EXIT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LineProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def send_reply(payload: dict[str, Any]) -> None:
    """Reply from inside a helper process."""
    print(PREFIX + json.dumps(payload), flush=True)

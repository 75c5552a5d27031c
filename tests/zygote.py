"""A fork server for the tests' worker processes.

Every end-to-end test starts real ``manage.py studio_worker`` processes; most of
a fresh process's start is importing torch, diffusers and transformers (seconds
each time, on a small machine). The zygote is one process, started once per test
session, that has imported them and then forks a worker on request: the child
sets the environment, working folder and log it was given and runs
``manage.py`` exactly as ``python manage.py ...`` would, Django setup included
(nothing of Django, the studio's settings or a database is touched before the
fork). The worker is as real as one started with ``subprocess``; only the
imports are shared, copy-on-write.

The tests talk to the zygote over its standard input and output, a JSON line
per request; :class:`ForkedProcess` gives a forked worker the part of
``subprocess.Popen``'s interface the tests use (``pid``, ``poll``, ``wait``,
``send_signal``, ``returncode``). The zygote reaps its children and reports their
exit status the way ``Popen`` does (a negative signal number when killed). When
the test process goes, the zygote's input closes and it kills what it forked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# What a worker imports first and longest (the framework-free engine included:
# it reads no settings at import).
PRELOADED_MODULES = (
    "torch",
    "numpy",
    "PIL.Image",
    "safetensors.torch",
    "transformers",
    "diffusers",
    "redis",
    "rq",
    "generation.engine.registry",
    "generation.engine.methods",
    "generation.engine.runner",
)


class ZygoteError(RuntimeError):
    pass


class Zygote:
    """The test side: starts the fork server and asks it for processes."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir)
        self._lock = threading.Lock()
        self._server = subprocess.Popen(
            [sys.executable, "-m", "tests.zygote"],
            cwd=self.base_dir,
            env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def _ask(self, **request) -> dict:
        with self._lock:
            if self._server.poll() is not None:
                raise ZygoteError(f"the zygote exited with {self._server.returncode}")
            self._server.stdin.write(json.dumps(request) + "\n")
            self._server.stdin.flush()
            reply = self._server.stdout.readline()
        if not reply:
            raise ZygoteError("the zygote closed its output")
        answer = json.loads(reply)
        if "error" in answer:
            raise ZygoteError(answer["error"])
        return answer

    def spawn(
        self, argv: list[str], *, env: dict[str, str], cwd: Path, log_path: Path
    ) -> ForkedProcess:
        """Fork ``argv`` (``[python, manage.py, command, ...]``) with ``env`` in
        ``cwd``, its output appended to ``log_path``."""
        answer = self._ask(
            op="spawn", argv=argv, env=env, cwd=str(cwd), log=str(log_path)
        )
        return ForkedProcess(self, answer["pid"])

    def returncode(self, pid: int) -> int | None:
        return self._ask(op="poll", pid=pid)["returncode"]

    def close(self) -> None:
        if self._server.poll() is None:
            self._server.stdin.close()
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()


class ForkedProcess:
    """A process forked by the zygote, with ``Popen``'s interface."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# The server side (``python -m tests.zygote``).


def _run_child(request: dict) -> None:
    """In the forked child: become ``python manage.py ...`` and never return."""
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(devnull)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        script = request["argv"][1]
        sys.argv = request["argv"][1:]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        import runpy

        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve() -> None:
    import importlib

    for name in PRELOADED_MODULES:
        importlib.import_module(name)
    children: dict[int, int | None] = {}

    def reap() -> None:
        for pid, status in children.items():
            if status is None:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    children[pid] = (
                        -os.WTERMSIG(raw)
                        if os.WIFSIGNALED(raw)
                        else os.WEXITSTATUS(raw)
                    )

    requests = sys.stdin
    replies = sys.stdout
    for line in requests:
        request = json.loads(line)
        try:
            if request["op"] == "spawn":
                replies.flush()
                pid = os.fork()
                if pid == 0:
                    _run_child(request)
                children[pid] = None
                answer = {"pid": pid}
            elif request["op"] == "poll":
                reap()
                answer = {"returncode": children.get(request["pid"])}
            else:
                answer = {"error": f"unknown request {request['op']!r}"}
        except Exception as error:  # a reply, never a dead zygote
            answer = {"error": repr(error)}
        replies.write(json.dumps(answer) + "\n")
        replies.flush()
    for pid, status in children.items():
        if status is None:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


if __name__ == "__main__":
    _serve()

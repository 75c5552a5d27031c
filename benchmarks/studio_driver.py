"""Drives the full studio path inside a sandbox (``studio_sandbox``) and times it.

Run as ``python -m benchmarks.studio_driver PLAN.json`` with the sandbox's
environment; it speaks ``line_process``'s protocol. It migrates the sandbox
database, starts the embedded Redis and one real ``manage.py studio_worker``
process (which preloads the model), creates a persona with a primary
reference, runs ``warmup_jobs`` unmeasured generations and replies that it is
ready. Then, one request per line on stdin:

- ``job``: one generation of ``workload`` through ``content_enqueue``, timed
  from the service call until the worker has published the job's result
  (blocking on RQ's result stream, not polling), and from the row's own
  timestamps; the job stores the output, thumbnails and score as it always does;
- ``queue N``: N generations of ``queue_workload`` enqueued in one transaction,
  and how the one worker drained them.

PLAN keys: model_key, workload, warmup_jobs, queue_workload (workloads as
``Workload.as_dict``). At the end of input the worker and Redis are stopped.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

WORKER_START_TIMEOUT_SECONDS = 900
JOB_TIMEOUT_SECONDS = 1800
WAIT_ROUND_SECONDS = 1


def main(plan_path: str) -> None:
    import django

    django.setup()
    from django.core.management import call_command

    from benchmarks.line_process import send_reply
    from studio.redis_embedded import ensure_embedded_redis

    plan = json.loads(Path(plan_path).read_text())
    call_command("migrate", verbosity=0, interactive=False)
    redis_server = ensure_embedded_redis()
    try:
        with _worker():
            persona = _persona(plan["model_key"], plan["workload"])
            for _ in range(plan["warmup_jobs"]):
                _timed_job(persona, plan["workload"])
            send_reply({"ready": True})
            for line in sys.stdin:
                command, _, argument = line.strip().partition(" ")
                if command == "job":
                    send_reply(_timed_job(persona, plan["workload"]))
                elif command == "queue":
                    send_reply(_drain(persona, plan["queue_workload"], int(argument)))
    finally:
        if redis_server is not None:
            redis_server.stop()


@contextmanager
def _worker() -> Iterator[None]:
    """One real worker process on the sandbox, ready (model preloaded) on entry."""
    from django.conf import settings

    from generation.queues import redis_connection

    name = f"bench-{uuid.uuid4().hex[:8]}"
    log_path = Path(settings.STUDIO_VAR_DIR) / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                str(Path(settings.BASE_DIR) / "manage.py"),
                "studio_worker",
                "--name",
                name,
            ],
            env=os.environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        connection = redis_connection()
        deadline = time.monotonic() + WORKER_START_TIMEOUT_SECONDS
        while not connection.exists(f"rq:worker:{name}"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"The benchmark worker did not start:\n{log_path.read_text()}"
                )
            time.sleep(0.1)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _persona(model_key: str, workload: dict[str, Any]) -> Any:
    """A text-method persona whose prompt composition adds nothing (no appearance,
    no negative prompt), with a primary reference to show and score against."""
    from django.core.files.base import ContentFile
    from PIL import Image

    from personas.services import persona_create, reference_image_add

    persona = persona_create(
        name="Benchmark",
        slug=f"benchmark-{uuid.uuid4().hex[:8]}",
        base_model=model_key,
        method="text",
        width=workload["width"],
        height=workload["height"],
        steps=workload["steps"],
        guidance_scale=workload["guidance_scale"],
    )
    reference = Image.radial_gradient("L").convert("RGB")
    buffer = io.BytesIO()
    reference.resize((workload["width"], workload["height"])).save(buffer, "PNG")
    reference_image_add(
        persona=persona,
        file=ContentFile(buffer.getvalue(), name="reference.png"),
        is_primary=True,
    )
    return persona


def _enqueue(persona: Any, workload: dict[str, Any]) -> Any:
    from generation.parameters import GenerationOverrides
    from generation.services import content_enqueue

    return content_enqueue(
        persona=persona,
        prompt=workload["prompt"],
        negative_prompt=workload["negative_prompt"],
        overrides=GenerationOverrides(
            method="text",
            seed=workload["seed"],
            steps=workload["steps"],
            guidance_scale=workload["guidance_scale"],
            width=workload["width"],
            height=workload["height"],
        ),
    )


def _wait(content: Any) -> None:
    """Block until the worker has published the result of the row's job.

    Blocks on RQ's result stream in short rounds: the connection's socket
    timeout would cut a long block, and a round returns as soon as the result
    is there.
    """
    from rq.job import Job

    from generation.queues import redis_connection

    job = Job.fetch(content.rq_job_id, connection=redis_connection())
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while job.latest_result(timeout=WAIT_ROUND_SECONDS) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Content #{content.pk} did not finish in time.")


def _timed_job(persona: Any, workload: dict[str, Any]) -> dict[str, Any]:
    started_at = time.time()
    started = time.perf_counter()
    content = _enqueue(persona, workload)
    enqueued = time.perf_counter() - started
    _wait(content)
    wall = time.perf_counter() - started
    content.refresh_from_db()
    record = _record(content)
    return {
        "wall": wall,
        **record,
        # The service call: the row created and committed, the job pushed.
        "enqueue": enqueued,
        # From the pushed job to the row claimed: Redis waking the worker's
        # blocking pop, RQ's preparation, the claim (wall clocks of one machine).
        "hand_over": record["started_at"] - (started_at + enqueued),
        # From the row's finished_at to the result read here: the commit, RQ's
        # bookkeeping of the job's end, the result stream read back.
        "after_finish": started_at + wall - record["finished_at"],
    }


def _record(content: Any) -> dict[str, Any]:
    """What one finished row says about its job (seconds), and its output pixels'
    hash; raises when the generation did not succeed."""
    from PIL import Image

    from benchmarks.workload import pixels_sha256
    from generation.models import ContentStatus

    if content.status != ContentStatus.SUCCEEDED:
        raise RuntimeError(
            f"Content #{content.pk} ended {content.status}: {content.error_message}\n"
            f"{content.error_detail}"
        )
    with content.output_image.open("rb") as output:
        output_sha256 = pixels_sha256(Image.open(output))
    timings = content.timings
    return {
        "row": (content.finished_at - content.created_at).total_seconds(),
        "in_worker": (content.finished_at - content.started_at).total_seconds(),
        "queue_wait": timings["queue_wait"],
        "engine": timings["engine_total"],
        "inference": timings["inference"],
        # Scoring left the GPU job for the CPU queue: it adds nothing here.
        "score": timings.get("score", 0.0),
        "job": timings["job_total"],
        # Encoding every file of the job (output PNG, thumbnails, controls).
        "encode": timings.get("encode", 0.0),
        "registry_hit": timings["registry_hit"],
        "started_at": content.started_at.timestamp(),
        "finished_at": content.finished_at.timestamp(),
        "pixels_sha256": output_sha256,
    }


def _drain(persona: Any, workload: dict[str, Any], count: int) -> dict[str, Any]:
    """Enqueue ``count`` jobs in one transaction; time the worker draining them."""
    from django.db import transaction

    from generation.models import Content

    started = time.perf_counter()
    with transaction.atomic():
        contents = [_enqueue(persona, workload) for _ in range(count)]
    enqueue_seconds = time.perf_counter() - started
    _wait(contents[-1])
    rows = Content.objects.filter(pk__in=[c.pk for c in contents]).order_by(
        "started_at"
    )
    records = [_record(row) for row in rows]
    return {
        "jobs": count,
        "enqueue_seconds": enqueue_seconds,
        "records": records,
    }


if __name__ == "__main__":
    main(*sys.argv[1:])

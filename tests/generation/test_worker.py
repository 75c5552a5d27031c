"""The worker's keepalive, in process, on the real Redis: a long job's started
entry is renewed, with a short TTL so that a killed worker's job is soon seen
abandoned."""

from __future__ import annotations

import time

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.worker import WorkerStatus

from generation import runtime
from generation.queues import get_queue
from generation.worker import StudioWorker
from tests.workers import use_queue


def test_the_keepalive_renews_a_running_jobs_heartbeats(
    studio_settings, redis_connection
):
    use_queue(studio_settings, "keepalive")
    queue = get_queue("keepalive")
    job = queue.enqueue("generation.jobs.content_generate", 0, job_timeout=3600)
    worker = StudioWorker(
        [queue], connection=queue.connection, job_monitoring_interval=5
    )
    worker.register_birth()
    try:
        assert worker.get_heartbeat_ttl(job) == 5 + 60

        execution = worker.prepare_execution(job)
        worker.prepare_job_execution(job)
        registry = StartedJobRegistry("keepalive", connection=redis_connection)
        member = execution.composite_key
        first_expiry = redis_connection.zscore(registry.key, member)
        first_beat = Job.fetch(job.id, connection=redis_connection).last_heartbeat

        time.sleep(1.1)
        with worker._running(job, execution):
            worker.keep_current_job_alive()

        assert redis_connection.zscore(registry.key, member) > first_expiry
        assert (
            Job.fetch(job.id, connection=redis_connection).last_heartbeat > first_beat
        )
        assert 0 < redis_connection.ttl(execution.key) <= 5 + 60
    finally:
        worker.register_death()


def test_studio_worker_on_a_queue_not_configured_names_the_configured_ones(settings):
    settings.RQ_QUEUES = {
        "gpu": {"URL": "redis://127.0.0.1:1/0"},
        "sdxl": {"URL": "redis://127.0.0.1:1/0"},
    }

    with pytest.raises(CommandError) as error:
        call_command("studio_worker", "--queues", "gpu", "gpus")

    assert str(error.value) == (
        "Queue 'gpus' is not configured. Configured queues: gpu, sdxl (from "
        "STUDIO_DEFAULT_QUEUE and STUDIO_QUEUE_ROUTES, docs/settings.md)."
    )


@pytest.mark.parametrize(
    "path, says",
    [
        ("rq.worker.Worker", "is not a generation.worker.StudioWorker"),
        ("generation.no_such.Worker", "cannot be imported"),
    ],
)
def test_studio_worker_refuses_a_worker_class_that_is_not_the_studios(path, says):
    with pytest.raises(CommandError, match=says):
        call_command("studio_worker", "--queues", "gpu", "--worker-class", path)


def test_the_workers_device_goes_to_its_engine_configuration_not_the_settings(
    settings,
):
    settings.STUDIO_DEVICE = ""
    settings.STUDIO_MODELS = {}
    # The factory returns the configuration it is given, as the engine to use.
    runtime.start(device="cuda:1", factory=lambda config: config)
    try:
        assert runtime.engine().device == "cuda:1"
        assert runtime.engine() is runtime.engine()
        assert settings.STUDIO_DEVICE == ""
    finally:
        runtime.start()


def test_a_stop_while_busy_asks_the_running_job_to_hand_back(studio_settings):
    use_queue(studio_settings, "handback")
    queue = get_queue("handback")
    worker = StudioWorker([queue], connection=queue.connection)
    runtime.start()
    assert not runtime.handback_requested()

    worker.set_state(WorkerStatus.IDLE)
    worker.handle_warm_shutdown_request()
    assert not runtime.handback_requested()

    worker.set_state(WorkerStatus.BUSY)
    worker.handle_warm_shutdown_request()
    assert runtime.handback_requested()
    runtime.start()


@pytest.mark.compile
@pytest.mark.django_db
def test_a_compiling_worker_compiles_its_preloaded_model_before_any_job(
    studio_settings, tiny_model_dir
):
    """With STUDIO_TORCH_COMPILE the worker's start compiles the preloaded
    model (Dynamo's eager backend, no IP-Adapter graphs: one compile)."""
    from torch._dynamo.utils import counters

    studio_settings.STUDIO_TORCH_COMPILE = True
    studio_settings.STUDIO_COMPILE_BACKEND = "eager"
    studio_settings.STUDIO_COMPILE_IP_ADAPTER = False
    use_queue(studio_settings, "warmup")
    queue = get_queue("warmup")
    graphs = counters["stats"]["unique_graphs"]
    worker = StudioWorker(
        [queue], connection=queue.connection, preload_models=["tiny-sd15"]
    )
    try:
        worker.work(burst=True)
        pipe, hit = runtime.engine().registry.pipeline("tiny-sd15", "text")
        assert hit
        assert pipe.unet._compiled_call_impl is not None
        assert counters["stats"]["unique_graphs"] > graphs
    finally:
        runtime.start()
        import torch

        torch._dynamo.reset()

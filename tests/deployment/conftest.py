"""Fixtures for the many-host layout on one machine: a real S3 API on loopback
(moto's standalone server, a separate process), the studio's storage built from
the same environment variables a deployment sets, and workers that run in
another working folder with another local media folder, as on another host.

The worker machinery (tiny model, real Redis, ``manage.py studio_worker``
processes) is the generation suite's, imported here.
"""

from __future__ import annotations

import dataclasses
import runpy
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from django.conf import settings as django_settings

from tests.workers import WorkerFactory

S3_ACCESS_KEY = "studio-access"
S3_SECRET_KEY = "studio-secret"
S3_REGION = "us-east-1"
SERVER_START_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1, in a process of its own."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(
                    f"moto did not start:\n{log_path.read_text()}"
                ) from None
            time.sleep(0.1)
    yield endpoint
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def s3_env(s3_endpoint: str) -> dict[str, str]:
    """The storage variables of a deployment, for a fresh private bucket."""
    bucket = f"studio-{uuid.uuid4().hex[:12]}"
    env = {
        "AWS_STORAGE_BUCKET_NAME": bucket,
        "AWS_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_S3_REGION_NAME": S3_REGION,
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
    }
    s3_client_for(env).create_bucket(Bucket=bucket)
    return env


def s3_client_for(env: dict[str, str]):
    """A plain boto3 client on the bucket's server, to look behind the studio."""
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_S3_ENDPOINT_URL"],
        region_name=env["AWS_S3_REGION_NAME"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def bucket_keys(env: dict[str, str]) -> set[str]:
    listing = s3_client_for(env).list_objects_v2(Bucket=env["AWS_STORAGE_BUCKET_NAME"])
    return {item["Key"] for item in listing.get("Contents", [])}


@pytest.fixture
def s3_storage(
    studio_settings,  # noqa: F811
    s3_env: dict[str, str],
    monkeypatch,
    tmp_path: Path,
) -> dict:
    """This process (the web side) stores through S3, with the ``STORAGES`` that
    studio/settings/base.py derives from the deployment's variables."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    base_settings = Path(django_settings.BASE_DIR) / "studio" / "settings" / "base.py"
    derived = runpy.run_path(str(base_settings))["STORAGES"]
    assert derived["default"]["BACKEND"] == "storages.backends.s3.S3Storage"
    studio_settings.STORAGES = derived
    # A local media folder of its own, which must stay empty.
    studio_settings.MEDIA_ROOT = tmp_path / "web-media"
    studio_settings.MEDIA_ROOT.mkdir()
    return s3_env


@pytest.fixture
def remote_workers(
    start_worker: WorkerFactory,
    s3_storage: dict,
    tmp_path: Path,
) -> Iterator[WorkerFactory]:
    """Starts workers as if on another host: another working folder, another
    (unused) local media folder, storage through S3 only."""
    home = tmp_path / "worker-host"
    media = home / "media"
    media.mkdir(parents=True)
    factory = dataclasses.replace(
        start_worker,
        base_env={**start_worker.base_env, **s3_storage, "MEDIA_ROOT": str(media)},
        started=[],
        cwd=home,
    )
    yield factory
    factory.stop_all()

"""The many-host layout on one machine: storage through a real S3 API on
loopback, workers in other working folders, two workers serving two models on
two queues (docs/deployment.md)."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from PIL import Image

from generation import services
from generation.models import Content, ContentStatus
from personas.models import ReferenceRole
from personas.services import persona_create
from studio import checks
from tests.deployment.conftest import bucket_keys, free_port, s3_client_for
from tests.images import encode, halves
from tests.workers import wait_finished

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TINY = {"width": 64, "height": 64, "steps": 4}


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def s3_object(env: dict[str, str], key: str) -> bytes:
    response = s3_client_for(env).get_object(
        Bucket=env["AWS_STORAGE_BUCKET_NAME"], Key=key
    )
    return response["Body"].read()


def test_a_worker_on_another_host_generates_from_an_admin_upload_into_s3(
    admin_client, client, s3_storage, remote_workers, studio_settings
):
    web_media = Path(studio_settings.MEDIA_ROOT)
    persona = persona_create(name="Ada", appearance="a red and blue card", **TINY)

    response = admin_client.post(
        "/admin/personas/referenceimage/add/",
        {
            "persona": persona.pk,
            "image": SimpleUploadedFile("ada.png", encode(halves((64, 64)), "PNG")),
            "primary": "on",
            "role": ReferenceRole.FACE,
            "caption": "",
            "order": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    reference = persona.references.get()
    assert reference.image.name in bucket_keys(s3_storage)

    worker = remote_workers("deploy-s3")
    response = admin_client.post(
        "/admin/personas/persona/",
        {
            "action": "generate",
            "_selected_action": [persona.pk],
            "post": "yes",
            "prompt": "a portrait",
            "negative_prompt": "",
            "count": "1",
            "method": "img2img",
            "strength": "0.75",
            "seed": "11",
        },
    )
    assert response.status_code == 302
    content = wait_finished(Content.objects.get(persona=persona))

    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.worker_name == worker.name
    keys = bucket_keys(s3_storage)
    for file in (content.output_image, content.output_thumbnail):
        assert file.name in keys
    output = s3_object(s3_storage, content.output_image.name)
    assert Image.open(io.BytesIO(output)).size == (64, 64)
    # Neither side wrote a file of its own: everything went through S3.
    assert files_under(web_media) == []
    assert files_under(remote_workers.cwd) == []

    media_url = f"/media/{content.output_image.name}"
    response = admin_client.get(media_url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content) == output

    assert client.get(media_url).status_code == 302
    get_user_model().objects.create_user("viewer", password="viewer-password")
    client.login(username="viewer", password="viewer-password")
    response = client.get(media_url)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_two_workers_on_two_queues_serve_two_models_at_once(
    s3_storage, remote_workers, studio_settings, tiny_model_dir, tmp_path
):
    models_root = tmp_path / "models"
    models = {}
    for key in ("tiny-a", "tiny-b"):
        shutil.copytree(tiny_model_dir / "sd15", models_root / key)
        models[key] = {"source": str(models_root / key), "label": key}
    routes = {"tiny-a": "deploy-a", "tiny-b": "deploy-b"}
    model_env = {
        "STUDIO_MODELS": json.dumps(models),
        "STUDIO_MODEL_ROOTS": json.dumps([str(models_root)]),
        "STUDIO_QUEUE_ROUTES": json.dumps(routes),
    }
    workers = {
        key: remote_workers(queue, **model_env, STUDIO_PRELOAD_MODELS=json.dumps([key]))
        for key, queue in routes.items()
    }
    # The web side routes by model, as every host of a deployment does.
    studio_settings.STUDIO_MODELS = models
    studio_settings.STUDIO_MODEL_ROOTS = [str(models_root)]
    studio_settings.STUDIO_QUEUE_ROUTES = routes
    studio_settings.RQ_QUEUES = {
        queue: {"URL": studio_settings.REDIS_URL, "DEFAULT_TIMEOUT": 600}
        for queue in routes.values()
    }
    assert all(worker.process.poll() is None for worker in workers.values())

    personas = {
        key: persona_create(name=key, base_model=key, method="text", **TINY)
        for key in routes
    }
    contents = {
        key: services.content_enqueue(persona=persona, prompt="a portrait")
        for key, persona in personas.items()
    }
    for key, content in contents.items():
        content = contents[key] = wait_finished(content)
        assert content.status == ContentStatus.SUCCEEDED, content.error_detail
        assert content.queue_name == routes[key]
        assert content.worker_name == workers[key].name
        assert content.snapshot["model"]["source"] == str((models_root / key).resolve())
        assert content.output_image.name in bucket_keys(s3_storage)
    first, second = contents.values()
    # At once: each job started before the other one finished.
    assert first.started_at < second.finished_at
    assert second.started_at < first.finished_at


def test_the_deployed_configuration_passes_the_runtime_checks(
    s3_storage, studio_settings, capsys
):
    call_command("check", deploy=True, tags=["studio_runtime"])
    assert "no issues" in capsys.readouterr().out


def storage_with(settings, **options) -> None:
    default = settings.STORAGES["default"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**default, "OPTIONS": {**default["OPTIONS"], **options}},
    }


def test_a_missing_bucket_is_reported_with_its_endpoint(s3_storage, settings):
    storage_with(settings, bucket_name="no-such-bucket")
    messages = checks.check_storage_reachable()
    assert [message.id for message in messages] == ["studio.E036"]
    assert s3_storage["AWS_S3_ENDPOINT_URL"] in messages[0].msg


def test_an_endpoint_that_does_not_answer_is_reported_quickly(s3_storage, settings):
    storage_with(settings, endpoint_url=f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    messages = checks.check_storage_reachable()
    assert [message.id for message in messages] == ["studio.E036"]
    assert time.monotonic() - started < 10


def test_no_credentials_anywhere_is_reported(
    s3_storage, settings, monkeypatch, tmp_path
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage_with(settings, access_key=None, secret_key=None)
    assert [m.id for m in checks.check_storage_reachable()] == ["studio.E035"]

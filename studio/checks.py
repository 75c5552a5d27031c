"""System checks for a studio deployment (``python manage.py check``).

Each misconfiguration that would otherwise show up as a broken worker, lost
media or a leaked image gets an id and a hint. ``StudioConfig.ready()`` registers
them in three groups:

- configuration checks run on every ``manage.py`` command: they only read
  settings and the local file system;
- deployment checks (``check --deploy``) look for media served publicly;
- runtime checks (``check --deploy``, or only them with
  ``check --deploy --tag studio_runtime``) talk to Redis and S3 with short
  timeouts, and look for the configured models (also ``--tag studio_models``).
  A web host holds no model weights: it silences the model ids with
  ``SILENCED_SYSTEM_CHECKS``.

The ids and what they mean are listed in docs/deployment.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from generation.engine.config import EngineConfig

RUNTIME_TAG = "studio_runtime"
"""Tag of the checks that reach Redis, S3 and the model folders."""

MODELS_TAG = "studio_models"
"""Tag of the model check alone: what a worker host needs and a web host lacks."""

NETWORK_TIMEOUT_SECONDS = 2.0
"""How long a runtime check waits for Redis or S3 before it reports them down."""

PUBLIC_ACLS = ("public-read", "public-read-write", "authenticated-read")


def _reason(error: BaseException) -> str:
    """An exception as the end of a sentence in a check message."""
    return str(error).rstrip(". ") + "."


# --- Worker class (DESIGN.md decision 3) ------------------------------------


def check_worker_class(**kwargs: Any) -> list[checks.CheckMessage]:
    """A worker that forks per job loses the warm registry and cannot use CUDA."""
    from rq.worker import SimpleWorker

    path = getattr(settings, "RQ", {}).get("WORKER_CLASS")
    if path is None:
        return [
            checks.Warning(
                "django-rq has no RQ['WORKER_CLASS']: `manage.py rqworker` would "
                "start RQ's default Worker, which forks a process for every job.",
                hint="Set RQ = {'WORKER_CLASS': 'generation.worker.StudioWorker'} "
                "and start workers with `manage.py studio_worker`.",
                id="studio.W001",
            )
        ]
    try:
        worker_class = import_string(path) if isinstance(path, str) else path
    except ImportError as error:
        return [
            checks.Error(
                f"RQ['WORKER_CLASS'] {path!r} cannot be imported: {_reason(error)}",
                hint="Use 'generation.worker.StudioWorker'.",
                id="studio.E002",
            )
        ]
    if not (isinstance(worker_class, type) and issubclass(worker_class, SimpleWorker)):
        return [
            checks.Error(
                f"RQ['WORKER_CLASS'] {path!r} is not a SimpleWorker: it runs each "
                "job in a new process, so the loaded models die with every job and "
                "CUDA cannot be initialised in a forked child.",
                hint="Use 'generation.worker.StudioWorker' (built on rq's "
                "SimpleWorker), one process per GPU.",
                id="studio.E001",
            )
        ]
    return []


# --- Redis --------------------------------------------------------------------


def check_redis_reachable(**kwargs: Any) -> list[checks.CheckMessage]:
    """Every Redis server the RQ queues use answers a PING within the timeout."""
    import redis
    from django_rq.connection_utils import get_redis_connection

    messages: list[checks.CheckMessage] = []
    seen: set[str] = set()
    for queue, config in sorted(getattr(settings, "RQ_QUEUES", {}).items()):
        key = repr(sorted(config.items()))
        if key in seen:
            continue
        seen.add(key)
        connection = get_redis_connection(config)
        connection.connection_pool.connection_kwargs.update(
            socket_connect_timeout=NETWORK_TIMEOUT_SECONDS,
            socket_timeout=NETWORK_TIMEOUT_SECONDS,
        )
        try:
            connection.ping()
        except redis.RedisError as error:
            messages.append(_redis_down(queue, error))
        finally:
            connection.close()
    return messages


def _redis_down(queue: str, error: Exception) -> checks.CheckMessage:
    if getattr(settings, "STUDIO_EMBEDDED_REDIS", False):
        return checks.Warning(
            f"The studio's embedded Redis (queue {queue!r}) is not running: "
            f"{_reason(error)}",
            hint="`make run` (or `manage.py studio_run`) starts it; "
            "or set REDIS_URL to a running Redis.",
            id="studio.W010",
        )
    return checks.Error(
        f"Redis for queue {queue!r} does not answer: {_reason(error)}",
        hint="Check REDIS_URL (redis://host:6379/0), that the server runs and "
        "that this host may reach it; workers and web servers share one Redis.",
        id="studio.E010",
    )


# --- Storage --------------------------------------------------------------------


def _default_storage() -> Storage:
    """A fresh instance of the configured default storage (no network yet)."""
    return storages.create_storage(settings.STORAGES["default"])


def _s3_storage_class() -> type | None:
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:
        return None
    return S3Storage


def check_storage(**kwargs: Any) -> list[checks.CheckMessage]:
    """The default storage can be built, and what it needs is set and writable."""
    try:
        storage = _default_storage()
    except (ImproperlyConfigured, ImportError, TypeError) as error:
        return [
            checks.Error(
                f"The default storage cannot be created: {_reason(error)}",
                hint="See the storage variables in docs/settings.md.",
                id="studio.E030",
            )
        ]
    if isinstance(storage, FileSystemStorage):
        return _check_media_root_writable(Path(storage.location))
    s3_class = _s3_storage_class()
    if s3_class is not None and isinstance(storage, s3_class):
        return _check_s3_settings(storage)
    return []


def _check_media_root_writable(location: Path) -> list[checks.CheckMessage]:
    existing = location
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return []
    what = "is not writable" if existing == location else "cannot be created"
    return [
        checks.Error(
            f"MEDIA_ROOT {location} {what}: uploads and outputs would fail.",
            hint="Set MEDIA_ROOT to a folder this user can write, or use S3 "
            "storage (AWS_STORAGE_BUCKET_NAME) when several hosts share media.",
            id="studio.E034",
        )
    ]


def _check_s3_settings(storage: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    if not storage.bucket_name:
        messages.append(
            checks.Error(
                "S3 storage is configured without a bucket name.",
                hint="Set AWS_STORAGE_BUCKET_NAME.",
                id="studio.E031",
            )
        )
    if bool(storage.access_key) != bool(storage.secret_key):
        messages.append(
            checks.Error(
                "S3 storage has an access key without its secret, or a secret "
                "without its access key.",
                hint="Set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                "neither to use the host's role or AWS profile.",
                id="studio.E032",
            )
        )
    endpoint = storage.endpoint_url
    if endpoint and not endpoint.startswith(("http://", "https://")):
        messages.append(
            checks.Error(
                f"AWS_S3_ENDPOINT_URL {endpoint!r} is not an http(s) URL.",
                hint="Give the full URL of the S3-compatible server, for example "
                "https://minio.internal:9000.",
                id="studio.E033",
            )
        )
    return messages


def check_storage_reachable(**kwargs: Any) -> list[checks.CheckMessage]:
    """The S3 bucket answers with the configured credentials and endpoint."""
    s3_class = _s3_storage_class()
    try:
        storage = _default_storage()
    except (ImproperlyConfigured, ImportError, TypeError):
        return []  # check_storage reports it.
    if s3_class is None or not isinstance(storage, s3_class) or not storage.bucket_name:
        return []
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    storage.client_config = storage.client_config.merge(
        Config(
            connect_timeout=NETWORK_TIMEOUT_SECONDS,
            read_timeout=NETWORK_TIMEOUT_SECONDS,
            retries={"total_max_attempts": 1},
        )
    )
    where = storage.endpoint_url or "AWS S3"
    try:
        storage.connection.meta.client.head_bucket(Bucket=storage.bucket_name)
    except NoCredentialsError:
        return [
            checks.Error(
                f"No credentials for S3 bucket {storage.bucket_name!r}.",
                hint="Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give "
                "the host an instance role or AWS profile.",
                id="studio.E035",
            )
        ]
    except (BotoCoreError, ClientError) as error:
        return [
            checks.Error(
                f"S3 bucket {storage.bucket_name!r} at {where} cannot be reached: "
                f"{_reason(error)}",
                hint="Check that the bucket exists and that the credentials may "
                "use it; for an S3-compatible server (MinIO, Ceph, ...) set "
                "AWS_S3_ENDPOINT_URL.",
                id="studio.E036",
            )
        ]
    return []


# --- Media must stay private (DESIGN.md decision 6) ------------------------------


def check_media_not_public(**kwargs: Any) -> list[checks.CheckMessage]:
    """No URL, bucket setting or media host hands generated images to anyone."""
    messages = [
        checks.Error(
            f"URL pattern {route!r} serves MEDIA_ROOT with "
            "django.views.static.serve, to anyone who knows a file name.",
            hint="Remove it: the studio serves media to staff only at "
            "studio.media.serve_media.",
            id="studio.E040",
        )
        for route in _static_media_routes()
    ]
    if settings.MEDIA_URL.startswith(("http://", "https://", "//")):
        messages.append(
            checks.Warning(
                f"MEDIA_URL {settings.MEDIA_URL!r} points at another server, which "
                "serves media without the studio's staff check.",
                hint="Keep MEDIA_URL = '/media/' so media goes through the "
                "studio's staff-only view.",
                id="studio.W040",
            )
        )
    try:
        storage = _default_storage()
    except (ImproperlyConfigured, ImportError, TypeError):
        return messages  # check_storage reports it.
    s3_class = _s3_storage_class()
    if s3_class is not None and isinstance(storage, s3_class):
        messages.extend(_public_s3_settings(storage))
    return messages


def _public_s3_settings(storage: Any) -> Iterator[checks.CheckMessage]:
    if storage.default_acl in PUBLIC_ACLS:
        yield checks.Error(
            f"S3 objects are written with the {storage.default_acl!r} ACL: every "
            "reference and output can be read without the studio.",
            hint="Use default_acl 'private' (AWS_DEFAULT_ACL) and keep the bucket "
            "private.",
            id="studio.E041",
        )
    if not storage.querystring_auth:
        yield checks.Error(
            "S3 querystring_auth is off: media URLs are unsigned, so they only "
            "work when the objects are public.",
            hint="Leave AWS_QUERYSTRING_AUTH on (the default).",
            id="studio.E042",
        )
    if storage.custom_domain and not storage.cloudfront_signer:
        yield checks.Error(
            f"AWS_S3_CUSTOM_DOMAIN {storage.custom_domain!r} without CloudFront "
            "signing gives unsigned, public media URLs.",
            hint="Unset AWS_S3_CUSTOM_DOMAIN, or set AWS_CLOUDFRONT_KEY_ID and "
            "AWS_CLOUDFRONT_KEY so that URLs are signed.",
            id="studio.E043",
        )


def _static_media_routes() -> Iterator[str]:
    """Routes whose view is ``django.views.static.serve`` under MEDIA_ROOT."""
    from django.views.static import serve

    media_root = Path(settings.MEDIA_ROOT).resolve()
    for route, pattern in _walk_patterns(get_resolver().url_patterns, ""):
        if pattern.callback is not serve:
            continue
        document_root = pattern.default_args.get("document_root")
        if document_root is None:
            continue
        served = Path(document_root).resolve()
        if served == media_root or media_root in served.parents:
            yield route


def _walk_patterns(
    patterns: list[URLPattern | URLResolver], prefix: str
) -> Iterator[tuple[str, URLPattern]]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _walk_patterns(pattern.url_patterns, route)
        else:
            yield route, pattern


# --- Production basics -------------------------------------------------------------


def check_production_basics(**kwargs: Any) -> list[checks.CheckMessage]:
    """With DEBUG off, a secret key and the served host names must be set."""
    if settings.DEBUG:
        return []
    messages: list[checks.CheckMessage] = []
    try:
        secret_key = settings.SECRET_KEY
    except ImproperlyConfigured:
        secret_key = ""
    if not secret_key:
        messages.append(
            checks.Error(
                "SECRET_KEY is empty while DEBUG is off.",
                hint="Set the SECRET_KEY environment variable to a long random "
                "value, e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(50))'`, the same on every web host.",
                id="studio.E050",
            )
        )
    if not [host for host in settings.ALLOWED_HOSTS if host]:
        messages.append(
            checks.Error(
                "ALLOWED_HOSTS is empty while DEBUG is off: every request would "
                "be refused.",
                hint="Set ALLOWED_HOSTS to the studio's host names, comma "
                "separated (studio.example.com,10.0.0.5).",
                id="studio.E051",
            )
        )
    return messages


# --- Models (DESIGN.md decision 5) ------------------------------------------------


def check_models_available(**kwargs: Any) -> list[checks.CheckMessage]:
    """Every configured model, ControlNet and IP-Adapter can be found offline."""
    from generation.engine.errors import EngineError
    from generation.engine_settings import (
        engine_config,
        tiny_model_dir,
        tiny_model_written,
        uses_tiny_model,
    )

    if uses_tiny_model() and not tiny_model_written():
        return [
            checks.Warning(
                f"No model is configured and the built-in tiny model is not "
                f"written yet in {tiny_model_dir()}.",
                hint="Run `manage.py studio_tiny_model` (`make run` does it), or "
                "configure real models with STUDIO_MODELS (docs/models.md).",
                id="studio.W020",
            )
        ]
    try:
        config = engine_config()
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        return [
            checks.Error(
                f"The model settings cannot be read: {error!r}.",
                hint="Compare STUDIO_MODELS, STUDIO_CONTROLNETS and "
                "STUDIO_IP_ADAPTER with the JSON examples in docs/models.md.",
                id="studio.E022",
            )
        ]
    messages: list[checks.CheckMessage] = []
    for what, resolve in _configured_sources(config):
        try:
            resolve()
        except EngineError as error:
            messages.append(
                checks.Error(
                    f"{what} cannot be loaded: {_reason(error)}",
                    hint="Download it, fix its path or its entry; docs/models.md "
                    "shows each layout and the offline set-up.",
                    id="studio.E020",
                )
            )
    annotators_dir = settings.STUDIO_ANNOTATORS_DIR
    if annotators_dir and not Path(annotators_dir).is_dir():
        messages.append(
            checks.Error(
                f"STUDIO_ANNOTATORS_DIR {annotators_dir} is not a folder.",
                hint="Download lllyasviel/Annotators into it (docs/models.md), or "
                "unset it to use the Hugging Face cache.",
                id="studio.E021",
            )
        )
    return messages


def _configured_sources(
    config: EngineConfig,
) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(what, resolve) for each model the configuration names, resolved lazily."""
    from generation.engine.sources import MODEL_CONFIG_FILE, resolve_source

    for key, spec in config.models.items():
        yield (
            f"Model {key!r} ({spec.source})",
            partial(
                resolve_source,
                spec.source,
                config,
                revision=spec.revision,
                single_file=True,
                single_file_config=spec.config,
            ),
        )
    for control_type, source in sorted(config.controlnets.items()):
        yield (
            f"ControlNet {control_type!r} ({source})",
            partial(resolve_source, source, config, required_file=MODEL_CONFIG_FILE),
        )
    adapter = config.ip_adapter
    if adapter is not None:
        for required_file in (
            f"{adapter.subfolder}/{adapter.weight_name}",
            f"{adapter.subfolder}/{adapter.face_weight_name}",
            f"{adapter.image_encoder_folder}/{MODEL_CONFIG_FILE}",
        ):
            yield (
                f"IP-Adapter {required_file} ({adapter.source})",
                partial(
                    resolve_source, adapter.source, config, required_file=required_file
                ),
            )

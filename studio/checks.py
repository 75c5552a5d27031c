"""The project's system checks (``python manage.py check``): storage, private
media, production basics. ``StudioConfig.ready()`` registers them; the checks
that concern generation (worker class, Redis, models) live in
``generation/checks.py`` and are registered by generation's ``AppConfig``.

Each misconfiguration that would otherwise show up as lost media or a leaked
image gets an id and a hint, in three groups:

- configuration checks run on every ``manage.py`` command: they only read
  settings and the local file system;
- deployment checks (``check --deploy``) look for media served publicly;
- runtime checks (``check --deploy``, or only them with
  ``check --deploy --tag studio_runtime``) talk to S3 (and, in generation's
  checks, to Redis and the model folders) with short timeouts.

The ids and what they mean are listed in docs/deployment.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.urls import URLPattern, URLResolver, get_resolver

RUNTIME_TAG = "studio_runtime"
"""Tag of the checks that reach Redis, S3 and the model folders (these checks and
generation's)."""

NETWORK_TIMEOUT_SECONDS = 2.0
"""How long a runtime check waits for Redis or S3 before it reports them down."""

PUBLIC_ACLS = ("public-read", "public-read-write", "authenticated-read")


def error_reason(error: BaseException) -> str:
    """An exception as the end of a sentence in a check message."""
    return str(error).rstrip(". ") + "."


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
                f"The default storage cannot be created: {error_reason(error)}",
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
                f"{error_reason(error)}",
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

"""The project's system checks (storage, private media, production basics): each
one fails on its misconfiguration and passes on a good configuration, through
``manage.py check`` and by calling it. Generation's checks are tested in
tests/generation/test_checks.py."""

from __future__ import annotations

import os
from io import StringIO
from types import ModuleType

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings
from django.urls import re_path
from django.views.static import serve

from studio import checks
from studio.media import serve_media

S3_BACKEND = "storages.backends.s3.S3Storage"


def ids(messages) -> list[str]:
    return [message.id for message in messages]


def s3_storages(**options) -> dict:
    """STORAGES with S3 as default storage: private, signed, as settings set it."""
    defaults = {
        "bucket_name": "studio-media",
        "endpoint_url": "http://127.0.0.1:9",
        "access_key": "studio",
        "secret_key": "studio-secret",
        "default_acl": "private",
        "querystring_auth": True,
    }
    return {
        "default": {"BACKEND": S3_BACKEND, "OPTIONS": {**defaults, **options}},
        "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        },
    }


# --- storage ---------------------------------------------------------------------


def test_a_writable_media_root_passes(media_root):
    assert checks.check_storage() == []


def test_a_media_root_that_cannot_be_created_is_an_error(settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    settings.MEDIA_ROOT = blocker / "media"
    messages = checks.check_storage()
    assert ids(messages) == ["studio.E034"]
    assert "cannot be created" in messages[0].msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes everywhere")
def test_a_read_only_media_root_is_an_error(media_root):
    media_root.chmod(0o500)
    try:
        messages = checks.check_storage()
    finally:
        media_root.chmod(0o700)
    assert ids(messages) == ["studio.E034"]
    assert "not writable" in messages[0].msg


def test_a_complete_s3_configuration_passes():
    with override_settings(STORAGES=s3_storages()):
        assert checks.check_storage() == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"bucket_name": ""}, ["studio.E031"]),
        ({"secret_key": None}, ["studio.E032"]),
        ({"access_key": None}, ["studio.E032"]),
        ({"endpoint_url": "minio.internal:9000"}, ["studio.E033"]),
        ({"no_such_option": 1}, ["studio.E030"]),
    ],
)
def test_a_broken_s3_configuration_is_an_error(options, expected):
    with override_settings(STORAGES=s3_storages(**options)):
        assert ids(checks.check_storage()) == expected


def test_an_s3_configuration_without_keys_may_use_the_hosts_role():
    with override_settings(STORAGES=s3_storages(access_key=None, secret_key=None)):
        assert checks.check_storage() == []


# --- media must stay private --------------------------------------------------


def test_the_default_configuration_serves_media_privately():
    assert checks.check_media_not_public() == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"default_acl": "public-read"}, ["studio.E041"]),
        ({"querystring_auth": False}, ["studio.E042"]),
        ({"custom_domain": "cdn.example.com"}, ["studio.E043"]),
    ],
)
def test_public_s3_settings_are_errors(options, expected):
    with override_settings(STORAGES=s3_storages(**options)):
        assert ids(checks.check_media_not_public()) == expected


def test_private_s3_settings_pass():
    with override_settings(STORAGES=s3_storages()):
        assert checks.check_media_not_public() == []


def test_a_media_url_on_another_host_is_a_warning():
    with override_settings(MEDIA_URL="https://media.example.com/"):
        assert ids(checks.check_media_not_public()) == ["studio.W040"]


def test_media_served_by_django_static_serve_is_an_error(settings, media_root):
    urlconf = ModuleType("urlconf_serving_media")
    urlconf.urlpatterns = [
        re_path(r"^media/(?P<path>.*)$", serve, {"document_root": media_root}),
        re_path(
            r"^docs/(?P<path>.*)$",
            serve,
            {"document_root": media_root.parent / "docs"},
        ),
        re_path(r"^files/(?P<path>.+)$", serve_media),
    ]
    settings.ROOT_URLCONF = urlconf
    messages = checks.check_media_not_public()
    assert ids(messages) == ["studio.E040"]
    assert "^media/" in messages[0].msg


def test_the_studios_own_urls_serve_media_to_staff_only():
    assert list(checks._static_media_routes()) == []


def test_media_checks_run_with_deploy():
    with override_settings(STORAGES=s3_storages(default_acl="public-read")):
        call_command("check", stdout=StringIO(), stderr=StringIO())
        with pytest.raises(SystemCheckError, match="studio.E041"):
            call_command(
                "check",
                deploy=True,
                tags=["security"],
                stdout=StringIO(),
                stderr=StringIO(),
            )


# --- production basics --------------------------------------------------------


def test_debug_off_needs_a_secret_key():
    with override_settings(DEBUG=False, SECRET_KEY=""):
        messages = checks.check_production_basics()
    assert ids(messages) == ["studio.E050"]
    assert "SECRET_KEY" in messages[0].hint


@pytest.mark.parametrize("hosts", [[], [""]])
def test_debug_off_needs_allowed_hosts(hosts):
    with override_settings(DEBUG=False, ALLOWED_HOSTS=hosts):
        assert ids(checks.check_production_basics()) == ["studio.E051"]


def test_debug_on_needs_neither():
    with override_settings(DEBUG=True, SECRET_KEY="", ALLOWED_HOSTS=[]):
        assert checks.check_production_basics() == []


def test_a_configured_production_passes():
    with override_settings(
        DEBUG=False, SECRET_KEY="k" * 50, ALLOWED_HOSTS=["studio.example.com"]
    ):
        assert checks.check_production_basics() == []

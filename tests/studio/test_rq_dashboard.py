"""The RQ dashboard and its statistics: superusers only, and a page when Redis
is down (studio/urls.py)."""

from __future__ import annotations

import socket

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

pytestmark = pytest.mark.finding


def client_for(*, superuser: bool) -> Client:
    model = get_user_model()
    user = (
        model.objects.create_superuser("root", "root@example.com", "pw")
        if superuser
        else model.objects.create_user("staff", is_staff=True)
    )
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.fixture
def redis_down(settings):
    """Queues on a loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.RQ_QUEUES = {
        name: {"URL": f"redis://127.0.0.1:{port}/0", "SOCKET_CONNECT_TIMEOUT": 1}
        for name in settings.RQ_QUEUES
    }


@pytest.mark.parametrize("url", ["/admin/rq/stats.json", "/admin/rq/stats.json/"])
def test_staff_who_may_not_see_the_dashboard_get_no_statistics(
    studio_settings, db, url
):
    response = client_for(superuser=False).get(url)

    assert response.status_code == 401
    body = response.content.decode()
    assert "port" not in body and studio_settings.STUDIO_DEFAULT_QUEUE not in body


def test_superusers_get_the_statistics(studio_settings, db):
    response = client_for(superuser=True).get("/admin/rq/stats.json")

    assert response.status_code == 200
    names = [queue["name"] for queue in response.json()["queues"]]
    assert studio_settings.STUDIO_DEFAULT_QUEUE in names


def test_the_api_token_still_opens_the_statistics(studio_settings, db):
    studio_settings.RQ_API_TOKEN = "monitoring0token"

    response = Client().get(
        "/admin/rq/stats.json", headers={"Authorization": "Bearer monitoring0token"}
    )

    assert response.status_code == 200


@pytest.mark.parametrize("url", ["/admin/rq/", "/admin/rq/queues/0/"])
def test_the_dashboard_says_redis_is_down_instead_of_failing(redis_down, db, url):
    response = client_for(superuser=True).get(url)

    assert response.status_code == 503
    page = response.content.decode()
    assert "cannot reach Redis" in page and "REDIS_URL" in page


def test_the_statistics_say_redis_is_down_instead_of_failing(redis_down, db):
    response = client_for(superuser=True).get("/admin/rq/stats.json")

    assert response.status_code == 503


def test_the_dashboard_is_still_closed_to_staff_while_redis_is_down(redis_down, db):
    response = client_for(superuser=False).get("/admin/rq/")

    assert response.status_code == 302
    assert "/login/" in response["Location"]

"""No favicon 404: /favicon.ico, which browsers ask for on a page naming no
icon, leads to the icon every studio page names."""

from __future__ import annotations

from django.contrib.staticfiles import finders
from django.templatetags.static import static


def test_favicon_ico_redirects_to_the_studio_icon(client, db):
    response = client.get("/favicon.ico")

    assert response.status_code == 301
    assert response["Location"] == static("gallery/favicon.svg")
    assert finders.find("gallery/favicon.svg")


def test_the_admin_pages_name_the_same_icon(client, db):
    page = client.get("/admin/login/").content.decode()

    assert f'<link rel="icon" href="{static("gallery/favicon.svg")}"' in page

"""URLs: the admin, staff-only media, the gallery and the RQ dashboard."""

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from studio.media import serve_media

admin.site.site_header = "Persona Studio"
admin.site.site_title = "Persona Studio"
admin.site.index_title = "Personas and generations"
admin.site.site_url = None  # "/" only redirects back to the admin

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
    path("gallery/", include("generation.urls")),
    re_path(r"^media/(?P<path>.+)$", serve_media, name="studio-media"),
]

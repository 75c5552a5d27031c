"""URLs: the admin, staff-only media, the gallery and the RQ dashboard."""

from django.contrib import admin
from django.contrib.auth.decorators import user_passes_test
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from django_rq.urls import get_admin_urlpatterns, get_api_urlpatterns

from studio.media import serve_media

admin.site.site_header = "Persona Studio"
admin.site.site_title = "Persona Studio"
admin.site.index_title = "Personas and generations"
admin.site.site_url = None  # "/" only redirects back to the admin

# The queue dashboard lists every job and can empty queues and stop jobs: it is
# for superusers only (others get the admin login page), like its header link.
superuser_required = user_passes_test(
    lambda user: user.is_active and user.is_staff and user.is_superuser
)
rq_urls = get_api_urlpatterns() + get_admin_urlpatterns(view_wrapper=superuser_required)

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/rq/", include((rq_urls, "django_rq"))),
    path("admin/", admin.site.urls),
    path("gallery/", include("generation.gallery.urls")),
    re_path(r"^media/(?P<path>.+)$", serve_media, name="studio-media"),
]

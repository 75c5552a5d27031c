"""URLs: the admin, staff-only media, the gallery and the RQ dashboard."""

from collections.abc import Callable
from functools import wraps

from django.contrib import admin
from django.contrib.auth.decorators import user_passes_test
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.template.response import TemplateResponse
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from django_rq import stats_views
from django_rq.urls import get_admin_urlpatterns, get_api_urlpatterns
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from studio.media import serve_media

admin.site.site_header = "Persona Studio"
admin.site.site_title = "Persona Studio"
admin.site.index_title = "Personas and generations"
admin.site.site_url = None  # "/" only redirects back to the admin


def may_see_queue_dashboard(user) -> bool:
    """The queue dashboard lists every job and can empty queues and stop jobs:
    it is for superusers only (others get the admin login page), like its
    header link."""
    return user.is_active and user.is_staff and user.is_superuser


def answers_while_redis_is_down(view: Callable) -> Callable:
    """A dashboard page says Redis cannot be reached (503), never a 500."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as error:
            return TemplateResponse(
                request,
                "admin/rq_unavailable.html",
                {
                    **admin.site.each_context(request),
                    "title": "Queues unavailable",
                    "error": error,
                },
                status=503,
            ).render()

    return wrapper


def dashboard_view(view: Callable) -> Callable:
    return user_passes_test(may_see_queue_dashboard)(answers_while_redis_is_down(view))


@answers_while_redis_is_down
def queue_statistics_json(request: HttpRequest, token: str | None = None):
    """django-rq's statistics (host, port, queue names) for dashboard users;
    anyone else needs django-rq's API token (RQ_API_TOKEN)."""
    if not may_see_queue_dashboard(request.user):
        # django-rq lets any staff user in; only the token opens it now.
        request.user = AnonymousUser()
    return stats_views.stats_json(request, token)


def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on any page that names no icon (a JSON or
    media URL opened in a tab, a third-party admin page): the studio's icon,
    never a 404 in the log."""
    return HttpResponsePermanentRedirect(static("gallery/favicon.svg"))


rq_urls = [
    re_path(r"^stats.json/?$", queue_statistics_json, name="home_json"),
    re_path(
        r"^stats.json/(?P<token>[\w]+)?/?$", queue_statistics_json, name="home_json"
    ),
    # Other API views (the Prometheus metrics, when installed) keep their token.
    *(pattern for pattern in get_api_urlpatterns() if pattern.name != "home_json"),
    *get_admin_urlpatterns(view_wrapper=dashboard_view),
]

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("favicon.ico", favicon, name="favicon"),
    path("admin/rq/", include((rq_urls, "django_rq"))),
    path("admin/", admin.site.urls),
    path("gallery/", include("generation.gallery.urls")),
    re_path(r"^media/(?P<path>.+)$", serve_media, name="studio-media"),
]

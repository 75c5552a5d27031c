"""Rendered gallery pages, kept while nothing they show has changed.

The gallery index, a persona's grid and a content's page cost tens to
hundreds of milliseconds to render with thousands of outputs (mostly their
templates); the same page for the same person is asked for again and again
while nothing changes. ``cached_page`` keeps a page's HTML in Django's cache
(``default``) under a key made of:

- the **gallery's version**: a random token in the studio's Redis, replaced
  whenever a row that these pages show is written (below), so that a change
  by any process on any host (a worker storing an output, a scorer, the admin)
  makes every kept page unreachable at once;
- **who asks**: the user's id, names, staff and superuser flags and
  permissions (what the page shows and offers depends on them), and the CSRF
  secret of the browser (the page's forms carry a token of it);
- the page's path and query string.

So one person's page is never served to another, nor to the same person in
another browser, nor after a permission changes. A page is neither kept nor
served when the request carries messages to show, has no CSRF cookie yet, or
when Redis cannot be reached (then every page is rendered, as without the
cache); only a plain 200 that sets no cookie is kept.

**What changes the version.** Every ``INSERT``, ``UPDATE`` or ``DELETE`` that
Django sends on the tables of ``watched_tables()``, through the database
instrumentation hook (``connection.execute_wrappers``, installed on every new
connection by ``install``): saves, ``QuerySet.update()``, bulk writes,
cascades and raw SQL through Django's connection alike. The token is replaced
right after the statement and again when its transaction commits: a page
rendered in between from the data of before is kept under a token that the
commit then retires. Writes that bypass Django (SQL typed into ``psql``) are
not seen: ``STUDIO_GALLERY_PAGE_CACHE_SECONDS`` bounds how long a kept page
can outlive them. 0 turns the cache off: a process with 0 neither keeps pages
nor marks changes, so every host of a studio must have the same value.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.db import transaction
from django.db.transaction import TransactionManagementError
from django.http import HttpRequest, HttpResponse

from generation.models import Batch, Content, ContentControlImage
from personas.models import Persona, ReferenceImage

logger = logging.getLogger(__name__)

VERSION_KEY = "studio:gallery:version"
_KEY_PREFIX = "studio:gallery:page:"
# "INSERT INTO t", "UPDATE t", "DELETE FROM t", the table quoted or not.
_WRITE = re.compile(
    r'^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+[`"]?(\w+)', re.IGNORECASE
)


def watched_tables() -> frozenset[str]:
    """The tables of what the cached pages show: outputs, their control
    images and references, batches, personas, references and users (names in
    the header and on reviews)."""
    models = (
        Content,
        ContentControlImage,
        Batch,
        Persona,
        ReferenceImage,
        get_user_model(),
    )
    tables = {model._meta.db_table for model in models}
    tables.add(Content.references.through._meta.db_table)
    return frozenset(tables)


# --- The version ------------------------------------------------------------------


_clients: dict[str, Any] = {}


def _redis() -> Any:
    """The studio's Redis (the queues'), one client per process and address:
    a new client per request would open a new connection each time."""
    from generation.queues import redis_connection

    address = repr(settings.RQ_QUEUES.get(settings.STUDIO_DEFAULT_QUEUE))
    if address not in _clients:
        _clients[address] = redis_connection()
    return _clients[address]


def gallery_version() -> str | None:
    """The gallery's current version, or None when Redis cannot be reached
    (nothing is then served from the cache, nor kept)."""
    from redis.exceptions import RedisError

    try:
        connection = _redis()
        version = connection.get(VERSION_KEY)
        if version is None:
            # A new or flushed Redis: a fresh token, never one used before.
            connection.set(VERSION_KEY, secrets.token_hex(8), nx=True)
            version = connection.get(VERSION_KEY)
    except RedisError:
        logger.warning("Gallery pages are not cached: Redis cannot be reached.")
        return None
    return version.decode() if isinstance(version, bytes) else version


def gallery_changed() -> None:
    """Retire every kept page (a new random version)."""
    from redis.exceptions import RedisError

    try:
        _redis().set(VERSION_KEY, secrets.token_hex(8))
    except RedisError:
        # Nothing is kept while Redis is down (gallery_version says so, once a
        # page is asked for); a host cut off from a Redis others still reach
        # leaves kept pages for at most STUDIO_GALLERY_PAGE_CACHE_SECONDS.
        logger.debug("Could not mark the gallery changed: Redis cannot be reached.")


def _watch_writes(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict
) -> Any:
    """An execute wrapper: after a write on a watched table, a new version now
    and another one when the transaction commits."""
    result = execute(sql, params, many, context)
    found = _WRITE.match(sql) if isinstance(sql, str) else None
    if (
        found
        and found.group(1).lower() in _tables()
        and settings.STUDIO_GALLERY_PAGE_CACHE_SECONDS > 0
    ):
        gallery_changed()
        try:
            transaction.on_commit(gallery_changed, using=context["connection"].alias)
        except TransactionManagementError:
            pass  # manual transaction management: the change is marked already
    return result


_watched: frozenset[str] | None = None


def _tables() -> frozenset[str]:
    global _watched
    if _watched is None:
        _watched = frozenset(name.lower() for name in watched_tables())
    return _watched


def install(sender: Any, connection: Any, **kwargs: Any) -> None:
    """``connection_created`` receiver: watch the new connection's writes."""
    if _watch_writes not in connection.execute_wrappers:
        connection.execute_wrappers.append(_watch_writes)


# --- Pages ------------------------------------------------------------------------


def _asker(request: HttpRequest) -> str | None:
    """Who asks, as the page depends on it; None when the page must not be
    cached (no CSRF secret yet, or messages waiting to be shown)."""
    secret = request.META.get("CSRF_COOKIE")
    if not secret or len(get_messages(request)):
        return None
    user = request.user
    permissions = (
        "*" if user.is_superuser else ",".join(sorted(user.get_all_permissions()))
    )
    return "\n".join(
        [
            str(user.pk),
            user.get_username(),
            user.first_name,
            user.last_name,
            str(user.is_staff),
            str(user.is_superuser),
            permissions,
            secret,
        ]
    )


def page_key(request: HttpRequest, version: str) -> str | None:
    asker = _asker(request)
    if asker is None:
        return None
    digest = hashlib.sha256(
        "\n".join([version, request.get_full_path(), asker]).encode()
    ).hexdigest()
    return _KEY_PREFIX + digest


def cached_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Serve ``view``'s page from the cache while nothing it shows has changed
    (see the module docstring). Goes inside the permission checks."""

    @wraps(view)
    def cached(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        seconds = settings.STUDIO_GALLERY_PAGE_CACHE_SECONDS
        version = gallery_version() if seconds > 0 else None
        key = page_key(request, version) if version else None
        if key is None:
            response = view(request, *args, **kwargs)
            response["X-Gallery-Cache"] = "skip"
            return response
        kept = cache.get(key)
        if kept is not None:
            content, content_type = kept
            response = HttpResponse(content, content_type=content_type)
            response["X-Gallery-Cache"] = "hit"
            return response
        response = view(request, *args, **kwargs)
        if hasattr(response, "render") and not response.is_rendered:
            response.render()
        # Messages the view added are shown once, never kept.
        if (
            response.status_code == 200
            and not response.cookies
            and not len(get_messages(request))
        ):
            cache.set(
                key, (response.content, response["Content-Type"]), timeout=seconds
            )
        response["X-Gallery-Cache"] = "miss"
        return response

    return cached

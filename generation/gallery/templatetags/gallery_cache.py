"""``{% load gallery_cache %}``: what a grid card's cached fragment is kept by.

A card (``gallery/_content_card.html``) is wrapped in Django's ``{% cache %}``
tag, varying on ``content|card_fingerprint``: a digest of every column and
annotation its row was read with, and of the card's templates. Any change to
the row (its status, a progress step, a score, a review) or to the templates
gives another key, so a kept card is never stale and needs no invalidation;
only the cards that changed are rendered again when a page is.
"""

from __future__ import annotations

import hashlib
from functools import cache

from django import template
from django.conf import settings
from django.template.loader import get_template

from generation.models import Content

register = template.Library()

CARD_TEMPLATES = (
    "gallery/_content_card.html",
    "gallery/_progress.html",
    "admin/generation/content/identity.html",
)


@cache
def _templates_digest() -> str:
    sources = (get_template(name).template.source for name in CARD_TEMPLATES)
    return hashlib.sha256("\0".join(sources).encode()).hexdigest()


@register.filter
def card_fingerprint(content: Content) -> str:
    """A digest of what the card of ``content`` shows (see the module doc):
    its columns and annotations as read (their order is the query's: another
    order only misses the cache), without Django's private state."""
    values = [(name, value) for name, value in vars(content).items() if name[0] != "_"]
    return hashlib.sha256(f"{_templates_digest()}{values!r}".encode()).hexdigest()


@register.simple_tag
def card_cache_seconds() -> int:
    """How long a card's fragment is kept (``STUDIO_GALLERY_PAGE_CACHE_SECONDS``)."""
    return settings.STUDIO_GALLERY_PAGE_CACHE_SECONDS

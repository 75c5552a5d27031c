"""Queue routing: which RQ queue serves a model.

Every generation goes to ``STUDIO_DEFAULT_QUEUE`` (``gpu``) unless
``STUDIO_QUEUE_ROUTES`` sends its model to another queue (one per model family,
say), so that GPU workers listen only on the queues of the models they serve.
"""

from __future__ import annotations

import django_rq
from django.conf import settings
from redis import Redis
from rq import Queue


def queue_name_for_model(model_key: str) -> str:
    """The queue that serves ``model_key``."""
    return settings.STUDIO_QUEUE_ROUTES.get(
        model_key, settings.STUDIO_DEFAULT_QUEUE
    )


def all_queue_names() -> list[str]:
    """Every queue a generation can be routed to, the default first."""
    default = settings.STUDIO_DEFAULT_QUEUE
    routed = sorted(set(settings.STUDIO_QUEUE_ROUTES.values()) - {default})
    return [default, *routed]


def get_queue(name: str) -> Queue:
    """The RQ queue ``name`` from ``RQ_QUEUES``, enqueueing at once when called.

    Callers decide when to enqueue (``transaction.on_commit`` in the services), so
    the queue does not defer by itself.
    """
    return django_rq.get_queue(name, commit_mode="auto")


def redis_connection() -> Redis:
    """A connection to the Redis that holds the generation queues."""
    return django_rq.get_connection(settings.STUDIO_DEFAULT_QUEUE)

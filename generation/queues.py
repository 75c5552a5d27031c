"""Queue routing: which RQ queue serves a model.

Every generation goes to ``STUDIO_DEFAULT_QUEUE`` (``gpu``) unless
``STUDIO_QUEUE_ROUTES`` sends its model to another queue (one per model family,
say), so that GPU workers listen only on the queues of the models they serve.
"""

from __future__ import annotations

import json
import threading

import django_rq
from django.conf import settings
from redis import Redis
from rq import Queue


def queue_name_for_model(model_key: str) -> str:
    """The queue that serves ``model_key``."""
    return settings.STUDIO_QUEUE_ROUTES.get(model_key, settings.STUDIO_DEFAULT_QUEUE)


def all_queue_names() -> list[str]:
    """Every queue a generation can be routed to, the default first."""
    default = settings.STUDIO_DEFAULT_QUEUE
    routed = sorted(set(settings.STUDIO_QUEUE_ROUTES.values()) - {default})
    return [default, *routed]


def get_queue(name: str) -> Queue:
    """The RQ queue ``name`` from ``RQ_QUEUES``, enqueueing at once when called,
    on this process's client for its Redis (``queue_connection``).

    Callers decide when to enqueue (``transaction.on_commit`` in the services), so
    the queue does not defer by itself.
    """
    return django_rq.get_queue(
        name, commit_mode="auto", connection=queue_connection(name)
    )


def redis_connection() -> Redis:
    """A connection to the Redis that holds the generation queues."""
    return queue_connection(settings.STUDIO_DEFAULT_QUEUE)


def queue_connection(name: str) -> Redis:
    """This process's client for the Redis of queue ``name``: one per connection
    setting, kept, so that its pool's connections serve every enqueue.

    ``django_rq.get_connection`` makes a new client, with a new pool, on every
    call: each enqueue opened new connections (three, with redis-py's
    handshake on each) and left them for the garbage collector. redis-py's
    client is thread-safe, its pool starts afresh in a forked child, and a
    connection that Redis dropped (a restart) is replaced on the next command.
    """
    config = settings.RQ_QUEUES[name]
    # What makes the connection (not the queue's job timeout) is the key.
    key = json.dumps(
        {
            option: value
            for option, value in config.items()
            if option != "DEFAULT_TIMEOUT"
        },
        sort_keys=True,
        default=str,
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = django_rq.get_connection(name)
        return client


_clients: dict[str, Redis] = {}
_clients_lock = threading.Lock()

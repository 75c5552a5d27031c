"""Image embeddings of references, cached by content hash.

A persona's references come back job after job: the consistency score's CLIP
embedding of the before reference, the IP-Adapter's image embeddings of its
references. ``EmbeddingCache`` keeps what an encoder made of an image under the
hash of the pixels the encoder was given (``snapshot.image_sha256`` of the
fitted image), so an unchanged reference is encoded once per process and a
changed one (other pixels, another hash) is encoded afresh: the key is the
content, there is nothing to invalidate by hand.

Entries are kept per encoder object (weakly: an encoder the registry evicts
takes its entries with it), least recently used first out past ``capacity``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

T = TypeVar("T")

DEFAULT_CAPACITY = 256
"""Entries kept per encoder: a CLIP ViT-H embedding is 4 KB, an IP-Adapter
plus model's hidden states about 0.7 MB in float16."""


class EmbeddingCache:
    """What an encoder made of an input, by a content key (see the module)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._entries: WeakKeyDictionary[Any, OrderedDict[Hashable, Any]] = (
            WeakKeyDictionary()
        )

    def get(self, encoder: Any, key: Hashable, compute: Callable[[], T]) -> T:
        """The value stored for ``key`` with ``encoder``, or ``compute()``'s,
        stored."""
        with self._lock:
            entries = self._entries.setdefault(encoder, OrderedDict())
            if key in entries:
                entries.move_to_end(key)
                self.hits += 1
                return entries[key]
        value = compute()
        with self._lock:
            self.misses += 1
            entries[key] = value
            while len(entries) > self.capacity:
                entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "entries": sum(len(entries) for entries in self._entries.values()),
            }

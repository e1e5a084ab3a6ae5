"""A small bounded least-recently-used cache, shared by the GUI's pixmap, sprite and page caches.

``functools.lru_cache`` memoises a function, but these caches are filled from outside (a thumbnail
arrives from a thread, a page is read from the project) and must be cleared when the project, the
palette or the filter changes, so they need a plain mapping that forgets its oldest entry.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most ``capacity`` values; ``get`` and ``put`` mark a key as recently used.

    Example::

        cache: LruCache[int, QPixmap] = LruCache(300)
        pixmap = cache.get(image_id)
        if pixmap is None:
            pixmap = cache.put(image_id, make_pixmap(image_id))
    """

    __slots__ = ("capacity", "_items")

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"an LRU cache needs room for at least one entry, not {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The cached value (now the most recently used), or None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> V:
        """Store ``value`` as the most recently used, forgetting the oldest beyond capacity; returns it."""
        items = self._items
        items[key] = value
        items.move_to_end(key)
        while len(items) > self.capacity:
            items.popitem(last=False)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

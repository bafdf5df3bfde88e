"""A small least-recently-used map, for per-process caches that must not grow with the population.

A simulation worker plays many virtual clients in turn; what it caches per client (a
client's encoded partition) must stay bounded however many clients exist, or memory grows
with the federation instead of with the clients that run at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRU", "PARTITION_CACHE"]

PARTITION_CACHE = 64  # encoded client partitions one process keeps (the clients it played last)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``capacity`` entries; the least recently used one is dropped first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        """The value of ``key``, built (and kept) if absent.

        A full cache drops its least recently used entry *before* building, so a large value
        (a model) is never held twice.
        """
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        while len(self._items) >= self.capacity:
            self._items.popitem(last=False)
        value = self._items[key] = build()
        return value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

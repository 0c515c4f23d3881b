"""A small bounded cache for compiled statements and what the node learnt about query shapes."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most `limit` entries. When full, the next insert starts it afresh: the shapes in use
    come back within a query each, and no bookkeeping is paid on the hot path of a hit."""

    def __init__(self, limit: int = 256) -> None:
        self._entries: dict[K, V] = {}
        self._limit = limit

    def get(self, key: K) -> V | None:
        """The entry for `key`, or None."""
        return self._entries.get(key)

    def put(self, key: K, value: V) -> V:
        """Keep `value` for `key` (emptying the cache first if it is full); returns `value`."""
        if len(self._entries) >= self._limit and key not in self._entries:
            self._entries.clear()
        self._entries[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

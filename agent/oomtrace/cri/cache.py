"""A bounded id -> value map that keeps values for a while after the runtime forgot them.

The kubelet removes an OOM-killed container soon after restarting it, often before a slow
consumer looks the event up; keeping removed entries for ``stale_ttl`` lets those events
still be named. Not thread-safe: the resolver holds its lock around every call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["StaleCache"]

V = TypeVar("V")


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    seen: float  # last time the runtime listed or returned it
    removed: float | None = None  # when a full list first lacked it


class StaleCache(Generic[V]):
    def __init__(
        self,
        *,
        stale_ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stale_ttl = stale_ttl
        self._max_entries = max(1, max_entries)
        self._clock = clock
        self._entries: dict[str, _Entry[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.value

    def is_removed(self, key: str) -> bool:
        entry = self._entries.get(key)
        return entry is not None and entry.removed is not None

    def values(self) -> Iterator[V]:
        return (entry.value for entry in self._entries.values())

    def put(self, key: str, value: V) -> None:
        """One value the runtime just returned (a status call): live again."""
        self._entries[key] = _Entry(value, self._clock())
        self._bound()

    def sync(self, live: Mapping[str, V]) -> None:
        """A full list from the runtime: everything in it is live, everything else removed."""
        now = self._clock()
        for key, entry in self._entries.items():
            if key not in live and entry.removed is None:
                entry.removed = now
        for key, value in live.items():
            self._entries[key] = _Entry(value, now)
        expired = [
            key
            for key, entry in self._entries.items()
            if entry.removed is not None and now - entry.removed > self._stale_ttl
        ]
        for key in expired:
            del self._entries[key]
        self._bound()

    def _bound(self) -> None:
        if len(self._entries) <= self._max_entries:
            return
        # Trim to 90% so a full cache does not sort itself again on every following put.
        excess = len(self._entries) - self._max_entries * 9 // 10
        # Removed entries go first (oldest removal first), then the least recently seen.
        order = sorted(self._entries.items(), key=lambda item: _age_key(item[1]))
        for key, _entry in order[:excess]:
            del self._entries[key]


def _age_key(entry: _Entry[V]) -> tuple[bool, float]:
    if entry.removed is not None:
        return (False, entry.removed)
    return (True, entry.seen)

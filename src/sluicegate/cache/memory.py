"""The in-process tier: a byte-bounded LRU in each worker, and the tier interface all tiers share."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from .entry import Entry

__all__ = ["MemoryTier", "Tier"]


class Tier(Protocol):
    """Where entries are kept: get, set, delete and touch, keyed by the full cache key."""

    name: str

    async def get(self, key: str) -> Entry | None:
        """The entry under ``key``, fresh or stale; None when there is none."""
        ...

    async def set(self, key: str, entry: Entry, keep_s: float) -> None:
        """Keep ``entry`` under ``key`` for ``keep_s`` seconds (its TTL plus any stale grace)."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        ...

    async def touch(self, key: str, hits: int) -> None:
        """Count ``hits`` more hits on ``key``."""
        ...


class MemoryTier:
    """A least-recently-used map bounded by the bytes of its entries; ``bytes`` is its current size.

    Entries are kept until ``keep_s`` has passed (their TTL plus stale grace) or until the
    budget needs the room; the least recently used go first.
    """

    name = "memory"

    def __init__(self, max_bytes: int, clock: Callable[[], float]) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Entry, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: str) -> Entry | None:
        """The entry under ``key`` without awaiting: the hot path of a hit."""
        item = self._entries.get(key)
        if item is None:
            return None
        entry, keep_until = item
        if keep_until <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry, keep_s: float, now: float | None = None) -> None:
        """Keep ``entry`` for ``keep_s`` from ``now`` (the clock's by default)."""
        self.keep(key, entry, (self._clock() if now is None else now) + keep_s)

    def keep(self, key: str, entry: Entry, until: float) -> None:
        """Keep ``entry`` until the clock reads ``until``, evicting the least recently used
        entries to stay within the budget."""
        entries = self._entries
        size = entry.size
        if key in entries:
            self._remove(key)  # even when the new entry is too big: the old one is outdated
        if size > self.max_bytes:
            return
        entries[key] = (entry, until)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._remove(next(iter(entries)))

    def _remove(self, key: str) -> None:
        entry, _ = self._entries.pop(key)
        self.bytes -= entry.size

    def forget(self, key: str) -> None:
        """Forget ``key``'s entry, if there is one."""
        if key in self._entries:
            self._remove(key)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self.bytes = 0

    def entries(self) -> list[Entry]:
        """The entries held, least recently used first."""
        return [entry for entry, _ in self._entries.values()]

    def delete_where(self, match: Callable[[str, Entry], bool]) -> int:
        """Forget every entry ``match`` selects; how many went."""
        doomed = [key for key, (entry, _) in self._entries.items() if match(key, entry)]
        for key in doomed:
            self._remove(key)
        return len(doomed)

    async def get(self, key: str) -> Entry | None:
        return self.peek(key)

    async def set(self, key: str, entry: Entry, keep_s: float) -> None:
        self.put(key, entry, keep_s)

    async def delete(self, key: str) -> None:
        self.forget(key)

    async def touch(self, key: str, hits: int) -> None:
        item = self._entries.get(key)
        if item is not None:
            item[0].hits += hits

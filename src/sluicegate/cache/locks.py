"""Single-flight locks a stalled Redis may have taken after their lookup gave up.

A lookup that failed or timed out may still be run by a stalled Redis once it resumes: it then
takes the key's lock for its whole lease, with no one to release it, and every identical
request on every replica waits for it. The process that sent such a lookup keeps its lock and
token, and releases the lock (only if that token holds it) once Redis answers again: tried
every second, and at once when another lookup is answered.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

from ..background import spawn

__all__ = ["AbandonedLocks"]

Unlock = Callable[[str, str], Awaitable[None]]  # (lock, token)


class AbandonedLocks:
    """The locks of this process's lookups that Redis did not answer (the latest 10,000)."""

    def __init__(self, unlock: Unlock, timeout_s: float, tasks: set[asyncio.Task[Any]]) -> None:
        self._unlock = unlock
        self._timeout = timeout_s
        self._tasks = tasks
        self._locks: collections.deque[tuple[str, str]] = collections.deque(maxlen=10_000)
        self._releasing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, lock: str, token: str) -> None:
        """A lookup that took ``lock`` with ``token`` (if Redis ran it) was not answered."""
        self._locks.append((lock, token))
        self._release_soon(1.0)

    def answered(self) -> None:
        """Redis answered a lookup: release at once, after any late lookup of a stalled one."""
        if self._locks:
            self._release_soon(0.0)

    def close(self) -> None:
        """Stop trying: the locks still held are freed by their leases."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _release_soon(self, delay_s: float) -> None:
        if self._timer is not None:
            if delay_s > 0:
                return
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._start)

    def _start(self) -> None:
        self._timer = None
        if self._releasing is None or self._releasing.done():
            self._releasing = spawn(self._tasks, self._release())

    async def _release(self) -> None:
        while self._locks:
            lock, token = self._locks[0]
            try:
                async with asyncio.timeout(self._timeout):
                    await self._unlock(lock, token)
            except Exception:  # Redis still fails: again in a second
                self._release_soon(1.0)
                return
            self._locks.popleft()

"""Micro-batching: the calls made in one turn of the event loop go to a store as one round trip.

Under load many requests look up or store entries at the same moment. Each SQL query costs the
gateway tens of microseconds of Python on top of the round trip, so the calls made before the
loop next runs its callbacks are collected and sent together, as one ``SELECT … WHERE key IN
(…)`` or one transaction. A lone call waits for nothing: it is flushed on the very next turn of
the loop. (Redis commands need no batcher: `store.redis_wire` writes a turn's commands at once.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from ..background import spawn

__all__ = ["Batcher"]

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Runs ``run(items)`` once per loop turn for every ``await batcher(item)`` made during it.

    ``run`` returns one result per item, in order; if it raises, or takes longer than
    ``timeout_s``, every caller of the batch gets the exception (`TimeoutError`).
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        max_batch: int = 256,
        timeout_s: float | None = None,
    ) -> None:
        self._run = run
        self._timeout = timeout_s
        self._max = max_batch
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()

    def __call__(self, item: T) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._futures.append(future)
        if len(self._items) >= self._max:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        if not self._items:
            return
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        spawn(self._tasks, self._execute(items, futures))

    async def _execute(self, items: list[T], futures: list[asyncio.Future[R]]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                results = await self._run(items)
        except BaseException as exc:  # every waiter of the batch learns of the failure
            for future in futures:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
                    future.exception()  # retrieved, even if its caller has given up
            if not isinstance(exc, Exception):
                raise
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)

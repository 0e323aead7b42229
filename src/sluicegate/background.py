"""Background tasks: how a component starts one it does not wait for, and how it stops one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

__all__ = ["cancel_and_wait", "spawn", "stop_between"]


def spawn(tasks: set[asyncio.Task[Any]], coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run ``coroutine`` as a task kept in ``tasks`` until it ends (the loop holds tasks only
    weakly: an unreferenced one may vanish mid-way)."""
    task = asyncio.get_running_loop().create_task(coroutine)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any, and not done) and wait until it has ended."""
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def stop_between(
    task: asyncio.Task[Any] | None, lock: asyncio.Lock, wait_s: float | None = None
) -> None:
    """Cancel ``task`` between two of its writes, never in one: the task holds ``lock`` while it
    writes. A database write cancelled midway can leave its SQLite connection holding the
    database's write lock, so that every later writer waits out the busy timeout and fails.
    With ``wait_s``, a write still going after that long is cancelled all the same."""
    try:
        async with asyncio.timeout(wait_s):
            await lock.acquire()
    except TimeoutError:
        await cancel_and_wait(task)
        return
    try:
        await cancel_and_wait(task)
    finally:
        lock.release()

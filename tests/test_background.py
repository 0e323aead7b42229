"""Background tasks: kept while they run, cancelled and awaited, stopped between two writes."""

from __future__ import annotations

import asyncio
from typing import Any

from sluicegate.background import cancel_and_wait, spawn, stop_between


async def test_spawned_tasks_are_kept_until_they_end() -> None:
    tasks: set[asyncio.Task[Any]] = set()
    done = asyncio.Event()
    task = spawn(tasks, done.wait())
    assert task in tasks
    done.set()
    await task
    await asyncio.sleep(0)
    assert not tasks


async def test_cancel_and_wait_ends_the_task_and_takes_none() -> None:
    task = asyncio.get_running_loop().create_task(asyncio.sleep(10))
    await cancel_and_wait(task)
    assert task.cancelled()
    await cancel_and_wait(None)
    await cancel_and_wait(task)  # already done: nothing to do


async def test_stop_between_never_cuts_the_work_held_under_the_lock() -> None:
    """A task stopped while it writes (holding the lock) finishes that write first, and is
    cancelled before it starts another."""
    lock = asyncio.Lock()
    steps: list[str] = []

    async def writer() -> None:
        while True:
            async with lock:
                steps.append("begin")
                await asyncio.sleep(0.05)
                steps.append("end")
            await asyncio.sleep(0.01)

    task = asyncio.get_running_loop().create_task(writer())
    await asyncio.sleep(0.02)  # in the middle of the first write
    await stop_between(task, lock)
    assert task.cancelled()
    assert steps == ["begin", "end"]


async def test_stop_between_cancels_a_write_that_outlasts_its_wait() -> None:
    """With ``wait_s``, a write still going after that long is cancelled all the same."""
    lock = asyncio.Lock()
    steps: list[str] = []

    async def writer() -> None:
        async with lock:
            steps.append("begin")
            await asyncio.sleep(10)
            steps.append("end")

    loop = asyncio.get_running_loop()
    task = loop.create_task(writer())
    await asyncio.sleep(0.01)
    started = loop.time()
    await stop_between(task, lock, wait_s=0.05)
    assert task.cancelled() and steps == ["begin"]
    assert loop.time() - started < 1
    assert not lock.locked()

"""Telling every gateway process that cached entries changed: namespace bumps and deletions.

The namespace versions live in SQL (``cache_namespaces``); each process keeps a copy that is
read on every request. An invalidation reaches the other processes through a bus:

- with Redis, a pub/sub channel. Each process applies an event (reload the versions, empty its
  in-process tier) and then acknowledges it, and the sender waits for every subscriber's
  acknowledgement, so when a bump or a delete returns, every process has applied it;
- without Redis, an 8-byte epoch in a memory-mapped file under the data folder, shared by the
  workers of one machine. Every request compares it with the epoch last seen (a memory read),
  and a process that sees it move applies the change before it computes a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import secrets
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from redis.asyncio import ConnectionPool, Redis

from ..background import cancel_and_wait

__all__ = ["Bus", "FileBus", "RedisBus"]

logger = logging.getLogger("sluicegate.cache")
CHANNEL = "sg:cache:events"
_EPOCH = struct.Struct("<Q")
Apply = Callable[[], Awaitable[None]]


class Bus:
    """Announces invalidations; ``pending`` is True when this process must apply one first."""

    pending = False

    async def start(self, apply: Apply) -> None:
        """Start listening; ``apply`` reloads the versions and empties the in-process tier."""

    async def announce(self) -> int:
        """Tell every process; returns how many acknowledged (this one included)."""
        return 1

    def check(self) -> bool:
        """Whether an invalidation arrived since the last check (cheap: the hot path calls it)."""
        return False

    async def stop(self) -> None:
        """Stop listening."""


class FileBus(Bus):
    """The epoch file shared by the workers of one machine."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _EPOCH.size:
                os.ftruncate(fd, _EPOCH.size)
            self._map = mmap.mmap(fd, _EPOCH.size)
        finally:
            os.close(fd)
        self._path = path
        self._seen = self._map[:8]

    def check(self) -> bool:
        current = self._map[:8]
        if current == self._seen:
            return False
        self._seen = current
        return True

    async def announce(self) -> int:
        with self._path.open("r+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            (epoch,) = _EPOCH.unpack(self._map[:8])
            self._map[:8] = _EPOCH.pack(epoch + 1)
            self._seen = self._map[:8]  # this process applies it itself, as it announces it
            fcntl.flock(handle, fcntl.LOCK_UN)
        return 1

    async def stop(self) -> None:
        self._map.close()


class RedisBus(Bus):
    """Pub/sub with acknowledgements; also re-applies after Redis comes back, in case it missed one."""

    def __init__(self, redis: Redis, ack_timeout_s: float = 2.0) -> None:
        self._redis = redis
        # The listener waits on its socket for as long as nothing is announced: it needs a
        # connection without the command timeout of the shared pool, which would cut it every
        # few seconds (and miss what is announced meanwhile).
        pool = redis.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": None, "health_check_interval": 15}
        # Pub/sub channels are shared by every database of a server: name the database.
        self._channel = f"{CHANNEL}:{kwargs.get('db', 0)}"
        self._listener = Redis(
            connection_pool=ConnectionPool(
                connection_class=pool.connection_class, max_connections=2, **kwargs
            )
        )
        self._ack_timeout = ack_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._apply: Apply | None = None
        self._subscribed = asyncio.Event()

    async def start(self, apply: Apply) -> None:
        self._apply = apply
        self._task = asyncio.get_running_loop().create_task(self._listen())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._subscribed.wait()

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                async with self._listener.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    if failures:
                        await self._run_apply()  # events may have been missed while Redis was away
                    failures = 0
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self._handle(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: retry with backoff, forever
                failures += 1
                if failures in (1, 10, 100):
                    logger.warning("cache: the invalidation channel is down (%s); retrying", exc)
                await asyncio.sleep(min(5.0, 0.1 * 2**failures))

    async def _run_apply(self) -> None:
        if self._apply is not None:
            await self._apply()

    async def _handle(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        await self._run_apply()
        if isinstance(event, dict) and isinstance(event.get("id"), str):
            ack = f"sg:ack:{event['id']}"
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(ack)
                pipe.expire(ack, 60)
                await pipe.execute()

    async def announce(self) -> int:
        event_id = secrets.token_hex(8)
        receivers = int(await self._redis.publish(self._channel, orjson.dumps({"id": event_id})))
        ack = f"sg:ack:{event_id}"
        acknowledged = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._ack_timeout):
                while True:
                    acknowledged = int(await self._redis.get(ack) or 0)
                    if acknowledged >= receivers:
                        break
                    await asyncio.sleep(0.005)
        if acknowledged < receivers:
            logger.warning("cache: %d of %d processes acknowledged an invalidation", acknowledged, receivers)
        return acknowledged

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._listener.aclose(close_connection_pool=True)

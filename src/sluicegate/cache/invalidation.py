"""Telling every gateway process that cached entries changed: namespace bumps and deletions.

The namespace versions live in SQL (``cache_namespaces``); each process keeps a copy that is
read on every request. An invalidation reaches the other processes through a bus:

- with Redis, a pub/sub channel. Each process applies an event (reload the versions, empty its
  in-process tier) and then acknowledges it, and the sender waits for every subscriber's
  acknowledgement, so when a bump or a delete returns, every process has applied it;
- without Redis, an 8-byte epoch in a memory-mapped file under the data folder, shared by the
  workers of one machine. Every request compares it with the epoch last seen (a memory read),
  and a process that sees it move applies the change before it computes a key.

A forced refresh (``Cache-Control: no-cache``, warming) or a background refresh replaces one
entry: the other processes drop their in-process copy of that key and, from then on, serve no
entry of it made before the new one, from any tier (`Bus.replaced`; a shared tier the writer
could not reach, or a write still queued, may hold the old one for a while). With Redis it is a
message on the same channel, not acknowledged; without, a ring of the last 64 replaced keys in
the same file, after the epoch (a process that missed more than 64 empties its in-process tier).
"""

from __future__ import annotations

import asyncio
import collections
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

__all__ = ["Bus", "FileBus", "RedisBus", "Replacements"]

logger = logging.getLogger("sluicegate.cache")
CHANNEL = "sg:cache:events"
_EPOCH = struct.Struct("<Q")
# The ring of replaced keys: a slot is the writer's id, the key's length, the new entry's
# creation time, then the key.
_SLOTS, _SLOT = 64, 1024
_SLOT_HEAD = struct.Struct("<iHd")
_RING = 2 * _EPOCH.size  # the epoch, the count of keys replaced, then the ring
_SIZE = _RING + _SLOTS * _SLOT
Apply = Callable[[], Awaitable[None]]
# A key was replaced by an entry made at the given time (None: too many were replaced to tell
# which: every in-process copy goes).
Drop = Callable[[str | None, float], None]


class Replacements:
    """The keys other processes replaced, with when each replacing entry was made: an entry of
    such a key made before is outdated, in any tier. The latest ``kept`` keys are remembered."""

    def __init__(self, kept: int = 10_000) -> None:
        self._kept = kept
        self._since: dict[str, float] = {}

    def note(self, key: str, since: float) -> None:
        """``key``'s entry was replaced by one made at ``since``."""
        known = self._since
        if since > known.get(key, 0.0):
            known.pop(key, None)  # to the end: the oldest go first
            known[key] = since
            if len(known) > self._kept:
                del known[next(iter(known))]

    def outdated(self, key: str, created_at: float) -> bool:
        """Whether an entry of ``key`` made at ``created_at`` was replaced since (hot path)."""
        known = self._since
        return bool(known) and created_at < known.get(key, 0.0)


class Bus:
    """Announces invalidations; ``pending`` is True when this process must apply one first."""

    pending = False

    async def start(self, apply: Apply, drop: Drop | None = None) -> None:
        """Start listening; ``apply`` reloads the versions and empties the in-process tier,
        ``drop`` forgets a key another process replaced."""

    def replaced(self, key: str, since: float) -> None:
        """Tell the other processes that ``key``'s entry was replaced by one made at ``since``:
        they drop their copy, and serve none made before."""

    def drops(self) -> None:
        """Apply the replacements announced since the last call (hot path: the file bus is
        polled here; Redis's messages are applied as they come)."""

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
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        self._path = path
        self._seen = self._map[:8]
        self._drops_seen = self._map[8:16]
        self._drop: Drop | None = None
        # Not the pid: processes in containers sharing the folder may have the same one.
        self._id = secrets.randbits(31)

    async def start(self, apply: Apply, drop: Drop | None = None) -> None:
        self._drop = drop

    def check(self) -> bool:
        current = self._map[:8]
        if current == self._seen:
            return False
        self._seen = current
        return True

    def replaced(self, key: str, since: float) -> None:
        data = key.encode()
        if len(data) > _SLOT - _SLOT_HEAD.size:  # too long for a slot: every process empties its tier
            data = b""
        with self._path.open("r+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            (count,) = _EPOCH.unpack(self._map[8:16])
            at = _RING + (count % _SLOTS) * _SLOT
            head = _SLOT_HEAD.pack(self._id, len(data), since)
            self._map[at : at + _SLOT_HEAD.size + len(data)] = head + data
            self._map[8:16] = _EPOCH.pack(count + 1)  # after the slot: a reader never sees it half made
            fcntl.flock(handle, fcntl.LOCK_UN)

    def drops(self) -> None:
        current = self._map[8:16]
        if current == self._drops_seen:
            return
        (seen,) = _EPOCH.unpack(self._drops_seen)
        (count,) = _EPOCH.unpack(current)
        self._drops_seen = current
        drop = self._drop
        if drop is None:
            return
        keys: list[tuple[str | None, float]] = []
        for number in range(max(seen, count - _SLOTS), count):
            at = _RING + (number % _SLOTS) * _SLOT
            writer, length, since = _SLOT_HEAD.unpack(self._map[at : at + _SLOT_HEAD.size])
            if writer != self._id:
                data = self._map[at + _SLOT_HEAD.size : at + _SLOT_HEAD.size + length]
                keys.append((data.decode(errors="replace") or None, since))  # a torn slot: see below
        (now,) = _EPOCH.unpack(self._map[8:16])
        if now - seen > _SLOTS:  # some were overwritten before they were read (now >= count)
            keys = [(None, 0.0)]
        for key, since in keys:
            drop(key, since)

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
        self._drop: Drop | None = None
        self._me = secrets.token_hex(8)  # this process, in the replacements it sends
        self._sending: asyncio.Task[None] | None = None  # publishing `_unsent`
        self._unsent: collections.deque[bytes] = collections.deque(maxlen=1000)
        self._subscribed = asyncio.Event()

    async def start(self, apply: Apply, drop: Drop | None = None) -> None:
        self._apply = apply
        self._drop = drop
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
                        if self._unsent:  # and replacements this process could not announce
                            self._send_unsent()
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
        if isinstance(event, dict) and isinstance(event.get("drop"), str):  # one key replaced
            since = event.get("since")
            if event.get("from") != self._me and self._drop is not None and isinstance(since, float | int):
                self._drop(event["drop"], float(since))
            return
        await self._run_apply()
        if isinstance(event, dict) and isinstance(event.get("id"), str):
            ack = f"sg:ack:{event['id']}"
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(ack)
                pipe.expire(ack, 60)
                await pipe.execute()

    def replaced(self, key: str, since: float) -> None:
        self._unsent.append(orjson.dumps({"drop": key, "since": since, "from": self._me}))
        self._send_unsent()

    def _send_unsent(self) -> None:
        """Publish the replacements not sent yet, in order, by one task at a time (kept, the
        latest 1,000, while Redis takes none: sent with the next one, or on reconnecting)."""
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._publish_unsent())

    async def _publish_unsent(self) -> None:
        try:
            while self._unsent:
                await self._redis.publish(self._channel, self._unsent[0])
                self._unsent.popleft()
        except Exception as exc:  # Redis is down
            logger.debug("cache: %d replaced keys not announced yet (%s)", len(self._unsent), exc)

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
        await cancel_and_wait(self._sending)
        await cancel_and_wait(self._task)
        self._task = None
        await self._listener.aclose(close_connection_pool=True)

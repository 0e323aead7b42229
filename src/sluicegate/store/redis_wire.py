"""One pipelined Redis connection for the request path's scripts: hiredis packs and parses.

redis-py's asyncio pipeline costs a request far more than the round trip: a pool checkout
under a condition, a task for the write's timeout, a timeout per reply, and command packing in
Python. The scripts of the rate limits, token limits, budgets and cache tier instead go through
`Wire`: one connection per client and event loop; every command made in one loop turn leaves
in one ``write``; each command gets a future of its own, resolved in order as the replies
arrive (Redis answers in order). No task, lock, timer or timeout context is made per command
or per write: the deadlines of every command and write wait in two queues, each served by at
most one timer at a time. Everything else (administration, pub/sub, SCAN) stays on redis-py.

An error reply is the future's *result*, as a redis-py exception instance (``NoScriptError`` for
NOSCRIPT), not raised: the caller decides. A command past its ``timeout_s`` fails with
`TimeoutError`; its reply, when it comes, is dropped. When the connection drops, or a turn's
commands are still unanswered ``timeout_s`` (the wire's own, 2 s by default) after they were
written, every waiting command fails with redis-py's ``ConnectionError`` and the next command
opens a new connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["Wire"]

_NOTHING = object()
Future = asyncio.Future[Any]


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: Wire) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(notEnoughData=_NOTHING)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        owner = self.owner
        waiting = owner.waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                owner.fail(RedisConnectionError(f"Redis sent a reply that cannot be parsed: {exc}"))
                return
            if reply is _NOTHING:
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                owner.fail(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            owner.received += 1
            future = waiting.popleft()
            if not future.done():  # it may have timed out
                future.set_result(_error(reply) if isinstance(reply, hiredis.ReplyError) else reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.lost(self, exc)


class Wire:
    """A lazily opened, pipelined connection to the Redis of ``connection_kwargs`` (redis-py's)."""

    def __init__(self, connection_kwargs: dict[str, Any], timeout_s: float = 2.0) -> None:
        self._kwargs = connection_kwargs
        self._timeout = timeout_s
        self.waiting: collections.deque[Future] = collections.deque()  # written, in order
        self.received = 0  # replies read on the current connection
        self._written = 0  # commands written on the current connection
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._out: list[bytes] = []  # this turn's commands, packed, not yet written
        self._queued: list[Future] = []  # their futures
        # Commands with a timeout, not yet expired or seen answered; the timer armed for them.
        self._deadlines: list[tuple[Future, float]] = []
        # (uvloop gives a plain Handle, without when(), for a time less than 1 ms away: the
        # time the timer was armed for is kept beside it.)
        self._deadline_timer: asyncio.Handle | None = None
        self._deadline_at = 0.0
        # Each write's check (when, which connection, how many commands by then), in order.
        self._checks: collections.deque[tuple[float, _Protocol, int]] = collections.deque()
        self._check_timer: asyncio.Handle | None = None
        self._flush_scheduled = False

    def call(self, command: Sequence[Any], timeout_s: float | None = None) -> Future:
        """Send ``command`` with this loop turn's others; its future gets the reply (see above)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._move_to(loop)
        future: Future = loop.create_future()
        self._out.append(hiredis.pack_command(command if type(command) is tuple else tuple(command)))
        self._queued.append(future)
        if timeout_s is not None:
            deadline = loop.time() + timeout_s
            self._deadlines.append((future, deadline))
            if self._deadline_timer is None or deadline < self._deadline_at:
                self._arm_deadlines(loop, deadline)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        loop = self._loop
        assert loop is not None
        protocol = self._protocol
        if protocol is None:
            if self._connecting is None:
                self._connecting = loop.create_task(self._open(loop))
            return  # written once connected
        self._write(protocol)

    def _write(self, protocol: _Protocol) -> None:
        if not self._out:
            return
        out, self._out = self._out, []
        queued, self._queued = self._queued, []
        self.waiting.extend(queued)
        self._written += len(queued)
        assert protocol.transport is not None
        assert self._loop is not None
        protocol.transport.write(b"".join(out))
        # Still unanswered after the wire's timeout: Redis is stopped or cut off.
        loop = self._loop
        self._checks.append((loop.time() + self._timeout, protocol, self._written))
        if self._check_timer is None:
            self._check_timer = loop.call_at(self._checks[0][0], self._check)

    def _arm_deadlines(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_timer = loop.call_at(when, self._expire)
        self._deadline_at = when

    def _expire(self) -> None:
        self._deadline_timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        later = []
        for future, deadline in self._deadlines:
            if future.done():
                continue
            if deadline <= now:
                future.set_exception(TimeoutError("Redis did not answer in time"))
                future.exception()  # retrieved: `send_all` stops at the first of a batch
            else:
                later.append((future, deadline))
        self._deadlines = later
        if later:
            self._arm_deadlines(loop, min(d for _, d in later))

    def _check(self) -> None:
        self._check_timer = None
        loop = self._loop
        assert loop is not None
        now, checks = loop.time(), self._checks
        while checks and checks[0][0] <= now:
            _, protocol, written = checks.popleft()
            if protocol is self._protocol and self.received < written:
                self.fail(RedisConnectionError(f"Redis did not answer within {self._timeout:g} s"))
                return
        if checks:
            self._check_timer = loop.call_at(checks[0][0], self._check)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        kwargs = self._kwargs
        try:
            async with asyncio.timeout(kwargs.get("socket_connect_timeout") or self._timeout):
                if kwargs.get("path"):
                    _, protocol = await loop.create_unix_connection(lambda: _Protocol(self), kwargs["path"])
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self), kwargs.get("host", "localhost"), kwargs.get("port", 6379)
                    )
                self._protocol, self.received, self._written = protocol, 0, 0
                hello: list[tuple[Any, ...]] = []
                password, username = kwargs.get("password"), kwargs.get("username")
                if password:
                    hello.append(("AUTH", username, password) if username else ("AUTH", password))
                if kwargs.get("db"):
                    hello.append(("SELECT", kwargs["db"]))
                if hello:
                    futures = [loop.create_future() for _ in hello]
                    self.waiting.extend(futures)
                    self._written += len(futures)
                    assert protocol.transport is not None
                    protocol.transport.write(b"".join(hiredis.pack_command(c) for c in hello))
                    for reply in await asyncio.gather(*futures):
                        if isinstance(reply, Exception):
                            raise reply
        except (OSError, TimeoutError, ResponseError) as exc:
            self.fail(RedisConnectionError(f"could not connect to Redis: {exc}"))
        except BaseException as exc:
            self.fail(RedisConnectionError(f"could not connect to Redis: {exc!r}"))
            raise
        else:
            self._write(protocol)
        finally:
            self._connecting = None

    def lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            self.fail(RedisConnectionError(f"the Redis connection was lost ({exc or 'closed'})"))

    def fail(self, error: Exception) -> None:
        """Drop the connection and fail every command waiting or queued with ``error``."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        waiting, self.waiting = self.waiting, collections.deque()
        queued, self._queued, self._out = self._queued, [], []
        self._checks.clear()  # they were all of this connection
        if self._check_timer is not None:
            self._check_timer.cancel()
            self._check_timer = None
        for future in (*waiting, *queued):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved, even if its caller has given up

    def _move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        """Used from a new event loop: the old connection and its waiters belong to a dead one."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None and not protocol.transport.is_closing():
            with contextlib.suppress(RuntimeError):  # its loop is closed
                protocol.transport.abort()
        self.waiting = collections.deque()
        self._out, self._queued, self._deadlines = [], [], []
        self._checks.clear()
        self._check_timer = self._deadline_timer = None  # the old loop's
        self._connecting = None
        self._flush_scheduled = False
        self._loop = loop

    async def aclose(self) -> None:
        """Wait, up to the wire's timeout, for the commands already made (a budget settlement or
        a cache store sent without waiting, say), then close the connection (what is still
        unanswered fails) and let the loop release its socket."""
        if self._loop is asyncio.get_running_loop():
            pending = [future for future in (*self.waiting, *self._queued) if not future.done()]
            if pending:
                await asyncio.wait(pending, timeout=self._timeout)
            self.fail(RedisConnectionError("the Redis client was closed"))
            await asyncio.sleep(0)

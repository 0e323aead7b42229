"""The Redis client: redis-py asyncio with hiredis and a blocking connection pool, plus a lean
pipelined connection (`redis_wire.Wire`) for the commands on the request path."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import NoScriptError

from ..background import spawn
from .redis_wire import Wire

__all__ = ["Done", "GatewayRedis", "LuaScript", "create_redis", "send_all"]

# What `LuaScript.send` calls with the script's result, or with the error instead.
Done = Callable[[Any, BaseException | None], None]


class GatewayRedis(Redis):
    """redis-py's client, carrying the `Wire` that sends the request path's commands."""

    wire: Wire | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the wire and, unless told otherwise, the pool (the client made it)."""
        if self.wire is not None:
            await self.wire.aclose()
        await super().aclose(True if close_connection_pool is None else close_connection_pool)


def create_redis(url: str, *, max_connections: int = 64, timeout: float = 2.0) -> Redis:
    """A client for ``url`` whose pool waits up to ``timeout`` seconds for a free connection."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )
    client = GatewayRedis(connection_pool=pool)
    # TLS (rediss://) and anything else unusual stays on redis-py's own pipeline.
    if pool.connection_class in (Connection, UnixDomainSocketConnection):
        client.wire = Wire(dict(pool.connection_kwargs), timeout)
    return client


def _wire(redis: Redis) -> Wire | None:
    wire: Wire | None = getattr(redis, "wire", None)
    return wire


class LuaScript:
    """A Lua script run by EVALSHA, loaded again when Redis lost it (NOSCRIPT, after a restart
    or a SCRIPT FLUSH). On the client's `Wire` when it has one (the calls of one loop turn share
    one write), else through redis-py. An error reply is raised; past ``timeout_s``,
    `TimeoutError`."""

    def __init__(self, redis: Redis, source: str, timeout_s: float | None = None) -> None:
        self.redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._timeout = timeout_s
        self._fallback = redis.register_script(source)
        self._wire = _wire(redis)  # set once, when the client is made
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        wire = self._wire
        if wire is None:
            async with asyncio.timeout(self._timeout):
                return await self._fallback(keys=list(keys), args=list(args))
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        result = await wire.call(command, self._timeout)
        if isinstance(result, NoScriptError):
            await self.redis.script_load(self.source)
            result = await wire.call(command, self._timeout)
        if isinstance(result, Exception):
            raise result
        return result

    def soon(self, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """The script run now, with this loop turn's other commands (`send`), and a future of its
        result (or error) to read later; cancel it to drop the result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if future.done():  # cancelled: nobody reads it
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.send(keys, args, done)
        return future

    def send(self, keys: Sequence[Any], args: Sequence[Any], done: Done) -> None:
        """Run the script without waiting for it: the command leaves with this loop turn's
        others, and ``done(result, None)`` or ``done(None, error)`` runs when its reply comes
        (after loading the script again on NOSCRIPT; that retry leaves after the commands sent
        in between). Nothing is made per call beyond the command's future: no task."""
        wire = self._wire
        if wire is None:
            spawn(self._tasks, self._later(keys, args, done))
            return
        future = wire.call(("EVALSHA", self.sha, len(keys), *keys, *args), self._timeout)
        future.add_done_callback(partial(self._replied, keys, args, done))

    def _replied(
        self, keys: Sequence[Any], args: Sequence[Any], done: Done, future: asyncio.Future[Any]
    ) -> None:
        if future.cancelled():
            done(None, asyncio.CancelledError())
            return
        error = future.exception()
        if error is not None:
            done(None, error)
            return
        result = future.result()
        if isinstance(result, NoScriptError):
            spawn(self._tasks, self._later(keys, args, done))
        elif isinstance(result, Exception):
            done(None, result)
        else:
            done(result, None)

    async def _later(self, keys: Sequence[Any], args: Sequence[Any], done: Done) -> None:
        try:
            result = await self(keys, args)
        except Exception as exc:
            done(None, exc)
        else:
            done(result, None)


async def send_all(
    redis: Redis, commands: Sequence[Sequence[Any]], timeout_s: float | None = None
) -> list[Any]:
    """Every command's reply, sent together; error replies in their place (not raised)."""
    wire = _wire(redis)
    if wire is not None:
        futures = [wire.call(command, timeout_s) for command in commands]
        return [await future for future in futures]
    async with asyncio.timeout(timeout_s):
        async with redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))

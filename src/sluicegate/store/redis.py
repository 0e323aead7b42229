"""The Redis client: redis-py asyncio with hiredis and a blocking connection pool."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import NoScriptError

__all__ = ["create_redis", "run_scripts"]


def create_redis(url: str, *, max_connections: int = 64, timeout: float = 2.0) -> Redis:
    """A client for ``url`` whose pool waits up to ``timeout`` seconds for a free connection."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )
    return Redis(connection_pool=pool)


async def run_scripts(redis: Redis, commands: Sequence[tuple[Any, ...]], sources: Sequence[str]) -> list[Any]:
    """Send ``commands`` (EVALSHA of ``sources``) as one pipeline; if Redis lost the scripts
    (NOSCRIPT, after a restart or a SCRIPT FLUSH), load them and send the batch again. Raises
    the first error a command met."""
    for attempt in (1, 2):
        async with redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            results = await pipe.execute(raise_on_error=False)
        if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
            for source in sources:
                await redis.script_load(source)
            continue
        break
    for result in results:
        if isinstance(result, Exception):
            raise result
    return list(results)

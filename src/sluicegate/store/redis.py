"""The Redis client: redis-py asyncio with hiredis and a blocking connection pool."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

__all__ = ["create_redis"]


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

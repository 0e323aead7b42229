"""Rate limits in Redis: one script checks every limit of a request and logs it in all of them,
atomically, on Redis's own clock (``TIME``), never a replica's.

Each limit is a sliding log: a sorted set of the requests of the last window, scored by their
time in milliseconds. Calls made in one loop turn leave in one write (`store.redis_wire`); a
script Redis lost (NOSCRIPT, after a restart or a SCRIPT FLUSH) is loaded again and retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from ..store.redis import LuaScript
from .limits import Check, Verdict

__all__ = ["RedisLimiter"]

# KEYS: one log per limit. ARGV: the request's member, then (limit, window in ms) per limit.
# Returns {0, index of the refusing limit, ms until it has room} or {1, remaining, ms, ...}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local count = redis.call('ZCARD', KEYS[i])
  if count >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    local wait = window
    if oldest[2] then wait = tonumber(oldest[2]) + window - now end
    return {0, i, wait}
  end
  counts[i] = count
end
local out = {1}
for i = 1, #KEYS do
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], window)
  local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  out[#out + 1] = tonumber(ARGV[2 * i]) - counts[i] - 1
  out[#out + 1] = tonumber(oldest[2]) + window - now
end
return out
"""


class RedisLimiter:
    """Checks requests against their limits in Redis (the calls of one loop turn share one write)."""

    def __init__(self, redis: Redis, timeout_s: float = 0.1) -> None:
        self.redis = redis
        self._admit = LuaScript(redis, ADMIT, timeout_s)

    async def admit(self, checks: Sequence[Check], member: str) -> Verdict:
        """Log the request in every limit if each has room; otherwise refuse and log nothing."""
        args: list[Any] = [member]
        for check in checks:
            args += [check.rule.limit, check.rule.window_s * 1000]
        keys = [check.key for check in checks]
        result = await self._admit(keys, args)
        if int(result[0]) == 0:
            index, wait_ms = int(result[1]) - 1, int(result[2])
            resets = tuple(check.rule.window_s for check in checks)
            zeros = tuple(0 for _ in checks)
            return Verdict(False, zeros, resets, index, -(-wait_ms // 1000))
        values = [int(v) for v in result[1:]]
        remaining = tuple(max(0, v) for v in values[0::2])
        resets = tuple(max(0, -(-ms // 1000)) for ms in values[1::2])
        return Verdict(True, remaining, resets)

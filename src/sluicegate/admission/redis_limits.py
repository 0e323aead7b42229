"""Rate limits in Redis: one script checks every limit of a request and logs it in all of them,
atomically, on Redis's own clock (``TIME``), never a replica's.

Each limit is a sliding log: a sorted set of the requests of the last window, scored by their
time in milliseconds. Calls made in one loop turn leave in one write (`store.redis_wire`); a
script Redis lost (NOSCRIPT, after a restart or a SCRIPT FLUSH) is loaded again and retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from ..store.redis import LuaScript
from .limits import Check, Verdict

__all__ = ["RedisLimiter"]

# KEYS: one log per limit. ARGV: the request's member, then (limit, window in ms) per limit.
# Returns {1 admitted or 0 refused, index of the first refusing limit (0 when admitted), then
# per limit: what it has left, ms until its oldest request leaves the window}. A refused
# request is logged in none of the limits.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local counts, refused = {}, 0
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[2 * i + 1]))
  counts[i] = redis.call('ZCARD', KEYS[i])
  if refused == 0 and counts[i] >= tonumber(ARGV[2 * i]) then refused = i end
end
local out = {refused == 0 and 1 or 0, refused}
for i = 1, #KEYS do
  local window = tonumber(ARGV[2 * i + 1])
  if refused == 0 then
    redis.call('ZADD', KEYS[i], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], window)
    counts[i] = counts[i] + 1
  end
  local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  out[#out + 1] = math.max(0, tonumber(ARGV[2 * i]) - counts[i])
  out[#out + 1] = oldest[2] and (tonumber(oldest[2]) + window - now) or window
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
        return verdict_of(await self._admit(*_script_call(checks, member)))

    def admit_soon(self, checks: Sequence[Check], member: str) -> asyncio.Future[Any]:
        """`admit`'s script sent at once (with this loop turn's other commands): a future of its
        reply, which `verdict_of` reads."""
        return self._admit.soon(*_script_call(checks, member))


def _script_call(checks: Sequence[Check], member: str) -> tuple[list[str], list[Any]]:
    args: list[Any] = [member]
    for check in checks:
        args += (check.rule.limit, check.rule.window_s * 1000)
    return [check.key for check in checks], args


def verdict_of(result: Any) -> Verdict:
    """The verdict in the script's reply (integers, from hiredis)."""
    remaining = tuple([int(left) for left in result[2::2]])
    resets = tuple([max(0, -(-int(ms) // 1000)) for ms in result[3::2]])
    if result[0] == 1:
        return Verdict(True, remaining, resets)
    index = int(result[1]) - 1
    return Verdict(False, remaining, resets, index, max(1, resets[index]))

"""Token limits in Redis: one script takes a call's worst case from every bucket it counts
against, or from none, and one gives back what the call did not use, on Redis's own clock.

Each bucket is a hash (``level``, ``at`` in milliseconds) that expires once it would be full
again. Calls made in one loop turn leave in one write (`store.redis_wire`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from ..store.redis import LuaScript
from .token_bucket import Taken, TokenCheck

__all__ = ["RedisTokens"]

# KEYS: one bucket per limit. ARGV: the cost, then (capacity, tokens per ms) per limit. Returns
# {0, index, ms until it has room, its level} or {1, the tightest level left}.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local levels = {}
local lowest = nil
for i = 1, #KEYS do
  local capacity, rate = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'level', 'at')
  local level = capacity
  if state[1] then
    level = math.min(capacity, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate)
  end
  local need = math.min(cost, capacity)
  if level < need then return {0, i, math.ceil((need - level) / rate), math.floor(level)} end
  levels[i] = level
  if not lowest or level < lowest then lowest = level end
end
for i = 1, #KEYS do
  local capacity, rate = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local left = levels[i] - cost
  redis.call('HSET', KEYS[i], 'level', tostring(left), 'at', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil((capacity - left) / rate) + 1000)
end
return {1, math.floor(lowest - cost)}
"""

# KEYS: as for TAKE. ARGV: the tokens to give back, then (capacity, tokens per ms) per limit.
GIVE_BACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local back = tonumber(ARGV[1])
for i = 1, #KEYS do
  local capacity, rate = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'level', 'at')
  if state[1] then
    local level = tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate
    level = math.min(capacity, level + back)
    redis.call('HSET', KEYS[i], 'level', tostring(level), 'at', now)
    redis.call('PEXPIRE', KEYS[i], math.ceil((capacity - level) / rate) + 1000)
  end
end
return 1
"""


class RedisTokens:
    """Takes and gives back tokens in Redis (the calls of one loop turn share one write)."""

    def __init__(self, redis: Redis, timeout_s: float) -> None:
        self.redis = redis
        self._take = LuaScript(redis, TAKE, timeout_s)
        self._give_back = LuaScript(redis, GIVE_BACK, timeout_s)

    @staticmethod
    def _args(checks: Sequence[TokenCheck], amount: int) -> list[Any]:
        args: list[Any] = [amount]
        for check in checks:
            args += [check.rule.tokens_per_minute, check.rule.tokens_per_minute / 60_000]
        return args

    async def take(self, checks: Sequence[TokenCheck], cost: int) -> Taken:
        """Take ``cost`` from every bucket, or from none."""
        keys = [check.key for check in checks]
        result = await self._take(keys, self._args(checks, cost))
        if int(result[0]) == 0:
            return Taken(False, int(result[1]) - 1, math.ceil(int(result[2]) / 1000), max(0, int(result[3])))
        return Taken(True, remaining=max(0, int(result[1])))

    async def give_back(self, checks: Sequence[TokenCheck], tokens: int) -> None:
        """Return unused tokens to every bucket (never above its capacity)."""
        keys = [check.key for check in checks]
        await self._give_back(keys, self._args(checks, tokens))

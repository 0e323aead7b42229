"""Budgets in Redis: one script reserves a call's worst case under every budget it is under, and
one settles it, atomically, on Redis's own clock (``TIME``) for the leases.

Each budget's period is a hash (``spent``, ``reserved``, and ``r:<id>`` per open reservation,
``x`` once its lease ended) beside a sorted set of lease ends. The keys of one org share a
Redis Cluster hash slot. A reservation whose lease ended is released by the next reservation
under the same budget; a late settlement of it still counts its cost. A period Redis does not
hold (a new period, a restart, an eviction) is refused with a request for its floor: the
caller sums the ledger and sends it, and ``spent`` becomes at least that.

Calls made in one loop turn leave in one write with every other Redis command of that turn
(`store.redis.LuaScript` over `store.redis_wire.Wire`), like the rate limits'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from ..cache.keys import escape
from ..store.redis import LuaScript
from .budget_alerts import Usage
from .budget_math import Decision, Outcome, Throttle
from .budget_scopes import Book, Budget, parse_scope

__all__ = ["Book", "NeedsFloor", "RedisBudgets", "book_key"]

# KEYS: per budget, its period's hash, its leases and its recent admissions. ARGV: id, prompt
# µUSD, output pUSD a token, tokens asked, lease ms, the throttle's share, concurrency cap and
# calls a minute ('' for none), then per budget: limit, when its keys expire (Unix time, s),
# floor ('' for none).
# Returns {-1, i} when budget i's period is unknown and has no floor; {0, i, spent, reserved,
# throttled} when budget i refuses (or the id is already reserved), throttled being 1 when its
# concurrency cap refused, 2 its calls a minute, 0 its limit; {1, tokens, amount, spent,
# reserved, …} with each budget's period after the reservation. Past the share, a budget
# admits only while fewer than the cap of its reservations are open (its calls in flight) and
# fewer than the rate were admitted in the last minute.
_CAPS = {1: "concurrency", 2: "per_minute"}  # RESERVE's throttled
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, prompt, out = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, lease = tonumber(ARGV[4]), tonumber(ARGV[5])
local share, cap, rate = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local n = #KEYS / 3
local spent, reserved = {}, {}
for i = 1, n do
  local book, leases, floor = KEYS[3 * i - 2], KEYS[3 * i - 1], ARGV[3 * i + 8]
  if floor ~= '' then
    redis.call('HSETNX', book, 'spent', 0)
    redis.call('HSETNX', book, 'reserved', 0)
    if tonumber(floor) > tonumber(redis.call('HGET', book, 'spent')) then
      redis.call('HSET', book, 'spent', floor)
    end
    redis.call('EXPIREAT', book, ARGV[3 * i + 7])  -- a period's hash is made here, and only here
  end
  local gone = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, 64)
  for _, old in ipairs(gone) do
    local amount = redis.call('HGET', book, 'r:' .. old)
    if amount and amount ~= 'x' then
      redis.call('HINCRBY', book, 'reserved', -tonumber(amount))
      redis.call('HSET', book, 'r:' .. old, 'x')
    end
    redis.call('ZREM', leases, old)
  end
  local held = redis.call('HMGET', book, 'spent', 'reserved', 'r:' .. rid)
  if not held[1] then return {-1, i} end
  spent[i], reserved[i] = tonumber(held[1]), tonumber(held[2] or '0')
  if held[3] then return {0, i, spent[i], reserved[i], 0} end
  local limit = tonumber(ARGV[3 * i + 6])
  if (cap or rate) and spent[i] + reserved[i] >= share * limit then
    if cap and redis.call('ZCARD', leases) >= cap then return {0, i, spent[i], reserved[i], 1} end
    if rate then
      redis.call('ZREMRANGEBYSCORE', KEYS[3 * i], '-inf', now - 60000)
      if redis.call('ZCARD', KEYS[3 * i]) >= rate then return {0, i, spent[i], reserved[i], 2} end
    end
  end
  local room = limit - spent[i] - reserved[i] - prompt
  if room < 0 then return {0, i, spent[i], reserved[i], 0} end
  local afford = tokens
  if out > 0 then
    afford = math.min(tokens, math.floor(room * 1000000 / out))
    while afford > 0 and math.ceil(afford * out / 1000000) > room do afford = afford - 1 end
  end
  if afford < math.min(tokens, 16) then return {0, i, spent[i], reserved[i], 0} end
  tokens = afford
end
local amount = prompt + math.ceil(tokens * out / 1000000)
local result = {1, tokens, amount}
for i = 1, n do
  local book, leases = KEYS[3 * i - 2], KEYS[3 * i - 1]
  redis.call('HSET', book, 'reserved', string.format('%d', reserved[i] + amount), 'r:' .. rid, amount)
  redis.call('ZADD', leases, now + lease, rid)
  -- No lease was open (a settlement or a reap deletes the set with its last one): a new set.
  if reserved[i] == 0 then redis.call('EXPIREAT', leases, ARGV[3 * i + 7]) end
  if rate then
    redis.call('ZADD', KEYS[3 * i], now, rid)
    redis.call('PEXPIRE', KEYS[3 * i], 60000)
  end
  result[#result + 1] = spent[i]
  result[#result + 1] = reserved[i] + amount
end
return result
"""

# KEYS: as for RESERVE. ARGV: id, cost µUSD. Returns per budget {counted, spent, reserved}.
SETTLE = """
local rid, cost = ARGV[1], tonumber(ARGV[2])
local result = {}
for i = 1, #KEYS / 2 do
  local book, leases = KEYS[2 * i - 1], KEYS[2 * i]
  local held = redis.call('HMGET', book, 'r:' .. rid, 'spent', 'reserved')
  local counted = 0
  local spent, reserved = tonumber(held[2] or '0'), tonumber(held[3] or '0')
  if held[1] then
    if held[1] ~= 'x' then reserved = reserved - tonumber(held[1]) end
    spent = spent + cost
    redis.call('HSET', book, 'spent', string.format('%d', spent), 'reserved', string.format('%d', reserved))
    redis.call('HDEL', book, 'r:' .. rid)
    redis.call('ZREM', leases, rid)
    counted = 1
  end
  result[#result + 1] = counted
  result[#result + 1] = spent
  result[#result + 1] = reserved
end
return result
"""

_KEEP_S = 7 * 86_400  # a period's counters outlive it by a week, for late settlements and reports


class NeedsFloor(Exception):
    """Redis holds no counters for a budget's period: send the ledger's sum as its floor."""


def book_key(budget: Budget, period: str) -> str:
    """The hash of a budget's period; the org in braces keeps an org's budgets in one slot.
    Names are escaped (``}``, ``:``…), so that no two tenants' budgets share a hash."""
    org, kind, name = parse_scope(budget.scope)
    tail = "" if kind is None else f":{kind}:{escape(name)}"
    return f"sg:budget:{{{escape(org)}}}{tail}:{period}"


# What `RedisBudgets.settle_soon` calls: the periods the settlement counted in, or the error.
Settled = Callable[[list[Usage] | None, BaseException | None], None]


def _settled(result: Any) -> list[tuple[bool, int, int]]:
    return [(result[i] == 1, int(result[i + 1]), int(result[i + 2])) for i in range(0, len(result), 3)]


class RedisBudgets:
    """Reserves and settles in Redis (the calls of one loop turn share one write)."""

    def __init__(self, redis: Redis, timeout_s: float) -> None:
        self.redis = redis
        self._reserve = LuaScript(redis, RESERVE, timeout_s)
        self._settle = LuaScript(redis, SETTLE, timeout_s)
        self._known_keys: dict[tuple[str, str], tuple[str, str, str]] = {}

    def _keys(self, budget: Budget, period: str) -> tuple[str, str, str]:
        """A budget's keys: its period's hash, its leases and its recent admissions."""
        known = self._known_keys
        trio = known.get((budget.scope, period))
        if trio is None:
            if len(known) > 10_000:  # old periods and deleted budgets: start again
                known.clear()
            key = book_key(budget, period)
            trio = known[(budget.scope, period)] = (key, key + ":leases", key + ":recent")
        return trio

    async def reserve(
        self,
        books: Sequence[Book],
        rid: str,
        prompt_micro: int,
        out_pico: int,
        asked: int,
        lease_s: float,
        floors: Sequence[int | None] | None,
        now: float,
        throttle: Throttle | None = None,
    ) -> Outcome:
        """Reserve under every budget (each with its period's name and end) or none; ``floors``,
        when given, holds each period's floor (None for none)."""
        share, cap, rate = throttle or ("", None, None)
        args: list[Any] = [rid, prompt_micro, out_pico, asked, int(lease_s * 1000), share]
        args += ("" if cap is None else cap, "" if rate is None else rate)
        keys: list[str] = []
        for index, (budget, period, ends) in enumerate(books):
            floor = None if floors is None else floors[index]
            args += (budget.limit_micro, int(ends) + _KEEP_S, "" if floor is None else floor)
            keys += self._keys(budget, period)
        result = await self._reserve(keys, args)  # integers, from hiredis
        state = result[0]
        if state == -1:
            raise NeedsFloor(int(result[1]) - 1)
        if state == 0:
            index = int(result[1]) - 1
            after = [(0, 0)] * len(books)
            after[index] = (int(result[2]), int(result[3]))
            return Outcome(Decision(False, 0, 0), index, after, _CAPS.get(int(result[4]), ""))
        after = list(zip(result[3::2], result[4::2], strict=True))
        return Outcome(Decision(True, int(result[1]), int(result[2])), -1, after)

    async def settle(self, books: Sequence[Book], rid: str, cost_micro: int) -> list[tuple[bool, int, int]]:
        """Count the cost once under each budget: per budget, whether this settlement counted,
        and its (spent, reserved) after it."""
        return _settled(await self._settle(self._settle_keys(books), (rid, cost_micro)))

    def release_soon(self, books: Sequence[Book], rid: str) -> None:
        """Release, at no cost and without waiting, a reservation Redis may have applied after
        it had failed for its caller (a stalled server runs what it was sent once it resumes;
        the call went on under the database's count): a no-op for one it never applied."""
        self.settle_soon(books, rid, 0, _ignored)

    def settle_soon(self, books: Sequence[Book], rid: str, cost_micro: int, done: Settled) -> None:
        """`settle` without waiting: the script leaves with this loop turn's other commands and
        ``done`` gets the periods it counted in (their state after it), or the error."""

        def replied(result: Any, error: BaseException | None) -> None:
            if error is not None:
                done(None, error)
                return
            done(
                [
                    Usage(b, name, ends, int(result[3 * i + 1]), int(result[3 * i + 2]))
                    for i, (b, name, ends) in enumerate(books)
                    if result[3 * i] == 1
                ],
                None,
            )

        self._settle.send(self._settle_keys(books), (rid, cost_micro), replied)

    def _settle_keys(self, books: Sequence[Book]) -> list[str]:
        keys: list[str] = []
        for budget, period, _ in books:
            keys += self._keys(budget, period)[:2]
        return keys

    async def read(self, budget: Budget, period: str) -> tuple[int, int] | None:
        """A budget's period as Redis holds it: (spent, reserved), or None when it holds none."""
        spent, reserved = await self.redis.hmget(book_key(budget, period), ["spent", "reserved"])
        if spent is None:
            return None
        return int(spent), int(reserved or 0)


def _ignored(usages: list[Usage] | None, error: BaseException | None) -> None:
    del usages, error  # a release that may have had nothing to release: nothing to report

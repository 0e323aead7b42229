"""The Redis tier: entries in their wire form, with Redis keeping the TTL.

One script does a miss's work in a single round trip: it returns the entry and its hit count
when there is one, and otherwise takes the single-flight lock. Every key an operation touches
shares the entry's hash tag, so the tier works on Redis Cluster. Tags are sets
(``sg:t:<tag>``) of the keys that carry them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio import Redis

from .entry import Entry, decode, encode
from .keys import KEY_PREFIX

__all__ = ["LOOKUP", "RedisTier"]

TAG_PREFIX = "sg:t:"
_HITS = ":hits"
# KEYS: entry, lock, hits. ARGV: lock token, lease in ms, and "1" to take the lock on a miss.
# Returns {value, hits} on a hit, {false, 1} when this caller took the lock, {false, 0} when
# another holds it, and {false, 2} when no lock was asked for.
LOOKUP = """
local value = redis.call('GET', KEYS[1])
if value then
  return {value, redis.call('GET', KEYS[3]) or '0'}
end
if ARGV[3] ~= '1' then
  return {false, 2}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {false, 1}
end
return {false, 0}
"""
# Release the lock only if it is still ours.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisTier:
    """Entries in Redis, compressed above ``compress_min_bytes``."""

    name = "redis"

    def __init__(self, redis: Redis, compress_min_bytes: int) -> None:
        self.redis = redis
        self._compress_min = compress_min_bytes
        self._lookup = redis.register_script(LOOKUP)
        self._unlock = redis.register_script(UNLOCK)

    async def lookup(self, key: str, lock: str | None, token: str, lease_ms: int) -> tuple[Entry | None, int]:
        """The entry under ``key``, or the lock outcome: (entry, 0), (None, 1 taken / 0 held / 2 none)."""
        result: Any = await self._lookup(
            keys=[key, lock or key + ":lock", key + _HITS], args=[token, lease_ms, "1" if lock else "0"]
        )
        value, extra = result
        if value:
            entry = decode(value)
            if entry is not None:
                entry.hits = max(entry.hits, int(extra))
                return entry, 0
            return None, 2
        return None, int(extra)

    async def get(self, key: str) -> Entry | None:
        entry, _ = await self.lookup(key, None, "", 0)
        return entry

    async def try_lock(self, lock: str, token: str, lease_ms: int) -> bool:
        """Take ``lock`` for ``lease_ms`` unless someone holds it."""
        return bool(await self.redis.set(lock, token, nx=True, px=lease_ms))

    async def lock_held(self, lock: str) -> bool:
        """Whether someone still holds ``lock``."""
        return bool(await self.redis.exists(lock))

    async def unlock(self, lock: str, token: str) -> None:
        """Release ``lock`` if ``token`` still holds it."""
        await self._unlock(keys=[lock], args=[token])

    async def set(self, key: str, entry: Entry, keep_s: float) -> None:
        keep_ms = max(1, int(keep_s * 1000))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, encode(entry, self._compress_min), px=keep_ms)
            for tag in entry.tags:
                pipe.sadd(TAG_PREFIX + tag, key)
                pipe.expire(TAG_PREFIX + tag, int(keep_s) + 1, gt=True)
                pipe.expire(TAG_PREFIX + tag, int(keep_s) + 1, nx=True)
            await pipe.execute()

    async def delete(self, key: str) -> None:
        await self.redis.delete(key, key + _HITS)

    async def touch(self, key: str, hits: int) -> None:
        await self.add_hits({key: hits})

    async def add_hits(self, hits: Mapping[str, int]) -> None:
        """Add hit counts to many keys in one round trip; counters live as long as a day."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, count in hits.items():
                pipe.incrby(key + _HITS, count)
                pipe.expire(key + _HITS, 86400)
            await pipe.execute()

    async def delete_keys(self, keys: Iterable[str]) -> int:
        """Delete entries one by one (they may sit in different slots); how many existed."""
        deleted = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.delete(key)
                pipe.delete(key + _HITS)
            results = await pipe.execute()
        deleted = sum(results[::2])
        return int(deleted)

    async def scan(self, pattern: str = KEY_PREFIX + "*", limit: int = 1_000_000) -> list[str]:
        """Entry keys matching ``pattern`` (locks and hit counters left out)."""
        found: list[str] = []
        async for raw in self.redis.scan_iter(match=pattern, count=1000):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            if key.endswith((":lock", _HITS)):
                continue
            found.append(key)
            if len(found) >= limit:
                break
        return found

    async def delete_tag(self, tag: str) -> int:
        """Delete every entry carrying ``tag``; how many existed."""
        members = await self.redis.smembers(TAG_PREFIX + tag)
        keys = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        deleted = await self.delete_keys(keys) if keys else 0
        await self.redis.delete(TAG_PREFIX + tag)
        return deleted

    async def size(self) -> tuple[int, int]:
        """Entries and bytes (their stored, compressed size) in Redis."""
        keys = await self.scan()
        total = 0
        for start in range(0, len(keys), 500):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys[start : start + 500]:
                    pipe.strlen(key)
                total += sum(int(n) for n in await pipe.execute())
        return len(keys), total

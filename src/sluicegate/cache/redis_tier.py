"""The Redis tier: entries in their wire form, with Redis keeping the TTL.

One script does a miss's work in a single round trip: it returns the entry and its hit count
when there is one, and otherwise takes the single-flight lock. Every key an operation touches
shares the entry's hash tag, so the tier works on Redis Cluster. Tags are sets
(``sg:t:<tag>``) of the keys that carry them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from ..store.redis import Done, LuaScript, send_all
from .entry import Entry, decode, encode
from .keys import KEY_PREFIX

__all__ = ["LOOKUP", "RedisTier"]

TAG_PREFIX = "sg:t:"
_HITS = ":hits"
# KEYS: entry, lock, hits. ARGV: lock token, lease in ms, and the mode: "1" to take the lock on
# a miss, "2" to report whether someone holds it, "0" for neither. Returns {value, hits} on a
# hit; on a miss {false, 1} when this caller took the lock, {false, 0} when another holds it,
# and {false, 2} when no lock was asked for; in mode "2", {false, 1 if held else 0}.
LOOKUP = """
local value = redis.call('GET', KEYS[1])
if value then
  return {value, redis.call('GET', KEYS[3]) or '0'}
end
if ARGV[3] == '2' then
  return {false, redis.call('EXISTS', KEYS[2])}
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
# Add to an entry's hit counter, kept as long as the entry. KEYS: entry, counter. ARGV: hits.
ADD_HITS = """
redis.call('INCRBY', KEYS[2], ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left <= 0 then left = 86400000 end
redis.call('PEXPIRE', KEYS[2], left)
return 1
"""
# Store an entry and, when ARGV[3] is our lock token, release the lock, in one round trip.
# KEYS: entry, lock. ARGV: value, keep in ms, token ('' for none).
STORE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
"""


class RedisTier:
    """Entries in Redis, compressed above ``compress_min_bytes``."""

    name = "redis"

    def __init__(self, redis: Redis, compress_min_bytes: int, timeout_s: float | None = None) -> None:
        self.redis = redis
        self._compress_min = compress_min_bytes
        self._timeout = timeout_s
        self._lookup = LuaScript(redis, LOOKUP, timeout_s)
        self._unlock = LuaScript(redis, UNLOCK, timeout_s)
        self._store = LuaScript(redis, STORE, timeout_s)
        self._add_hits = LuaScript(redis, ADD_HITS, timeout_s)

    async def lookup(self, key: str, lock: str | None, token: str, lease_ms: int) -> tuple[Entry | None, int]:
        """The entry under ``key`` (and no lock: 2), or the lock outcome: (None, 1 taken / 0 held
        by another / 2 none asked)."""
        keys = (key, lock or key + ":lock", key + _HITS)
        value, extra = await self._lookup(keys, (token, lease_ms, "1" if lock else "0"))
        if value:
            entry = decode(value)
            if entry is not None:
                entry.hits = max(entry.hits, int(extra))
                return entry, 2
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

    async def wait_step(self, key: str, lock: str) -> tuple[Entry | None, bool]:
        """The entry under ``key``, or whether ``lock`` is still held, read atomically."""
        value, extra = await self._lookup((key, lock, key + _HITS), ("", 0, "2"))
        if value:
            entry = decode(value)
            if entry is not None:
                entry.hits = max(entry.hits, int(extra))
            return entry, True
        return None, bool(extra)

    async def unlock(self, lock: str, token: str) -> None:
        """Release ``lock`` if ``token`` still holds it."""
        await self._unlock((lock,), (token,))

    async def set(self, key: str, entry: Entry, keep_s: float) -> None:
        await self.store(key, entry, keep_s, None, "")

    def store_soon(
        self, key: str, entry: Entry, keep_s: float, lock: str | None, token: str, done: Done
    ) -> bool:
        """`store` without waiting for it, reporting to ``done``: the write leaves with this loop
        turn's other commands. False, with nothing sent, for an entry with tags (several
        commands): `store` it."""
        if entry.tags:
            return False
        self._store.send(*self._store_call(key, entry, keep_s, lock, token), done)
        return True

    def _store_call(
        self, key: str, entry: Entry, keep_s: float, lock: str | None, token: str
    ) -> tuple[tuple[str, str], tuple[bytes, int, str]]:
        """The store script's keys and arguments."""
        keep_ms = max(1, int(keep_s * 1000))
        value = encode(entry, self._compress_min)
        return (key, lock or key + ":lock"), (value, keep_ms, token if lock else "")

    async def store(self, key: str, entry: Entry, keep_s: float, lock: str | None, token: str) -> bool:
        """Keep ``entry`` for ``keep_s`` and release ``lock`` if ``token`` holds it: one round trip."""
        keys, args = self._store_call(key, entry, keep_s, lock, token)
        if not entry.tags:
            await self._store(keys, args)
            return True
        commands: list[tuple[Any, ...]] = [("EVALSHA", self._store.sha, 2, *keys, *args)]
        for tag in entry.tags:
            tag_key = TAG_PREFIX + tag
            commands.append(("SADD", tag_key, key))
            commands.append(("EXPIRE", tag_key, int(keep_s) + 1, "GT"))
            commands.append(("EXPIRE", tag_key, int(keep_s) + 1, "NX"))
        replies = await send_all(self.redis, commands, self._timeout)
        if isinstance(replies[0], NoScriptError):
            await self._store(keys, args)  # loads it again
        error = next(
            (r for r in replies if isinstance(r, Exception) and not isinstance(r, NoScriptError)), None
        )
        if error is not None:
            raise error
        return True

    async def delete(self, key: str) -> None:
        await self.redis.delete(key, key + _HITS)

    async def touch(self, key: str, hits: int) -> None:
        await self.add_hits({key: hits})

    async def add_hits(self, hits: Mapping[str, int]) -> None:
        """Add hit counts to many keys in one round trip; a counter lives as long as its entry
        (a day when the entry is gone), so a popular entry kept for weeks keeps its count."""
        # By EVALSHA, as the tier's other scripts (not the script's source once per key); on the
        # wire the calls made in one loop turn leave in one write.
        await asyncio.gather(*(self._add_hits((key, key + _HITS), (count,)) for key, count in hits.items()))

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

    async def tagged(self, tag: str) -> list[str]:
        """The keys of the entries that carry ``tag`` now. A tag's set may still list a key
        stored again since without the tag, or gone: those leave the set."""
        tag_key = TAG_PREFIX + tag
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in await self.redis.smembers(tag_key)]
        if not members:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:  # one GET each: any slot
            for key in members:
                pipe.get(key)
            values = await pipe.execute()
        carrying: list[str] = []
        for key, value in zip(members, values, strict=True):
            entry = decode(value) if value is not None else None
            if entry is not None and tag in entry.tags:
                carrying.append(key)
        kept = set(carrying)
        stale = [key for key in members if key not in kept]
        if stale:
            await self.redis.srem(tag_key, *stale)
        return carrying

    async def delete_tag(self, tag: str) -> int:
        """Delete every entry carrying ``tag``; how many existed."""
        deleted = await self.delete_keys(await self.tagged(tag))
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

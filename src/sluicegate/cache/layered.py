"""The tiers together: reads go in-process → Redis → SQL and promote on the way back; writes go to
every tier the feature uses (the SQL write after the response, flushed at shutdown).

Redis and SQL each run behind a `TierGuard`, so a tier that is down or paused costs a short
timeout a few times, and then nothing until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NamedTuple

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from ..background import spawn, stop_between
from ..calls import Call
from ..config import FeatureCache, Settings
from .entry import Entry
from .guard import TierGuard
from .invalidation import Bus, FileBus, RedisBus, Replacements
from .keys import CacheKey, cache_key
from .locks import AbandonedLocks
from .memory import MemoryTier
from .redis_tier import RedisTier
from .sql_tier import SqlTier
from .stats import CacheStats

__all__ = ["LOCK_HELD", "LOCK_NONE", "LOCK_TAKEN", "LayeredCache", "Plan"]

LOCK_HELD, LOCK_TAKEN, LOCK_NONE = 0, 1, 2
_NO_LOOKUP: tuple[Entry | None, int] = (None, LOCK_NONE)


class Plan(NamedTuple):
    """A feature's policy and what it means for this gateway's tiers, worked out once."""

    policy: FeatureCache
    server: bool  # keeps entries on the server at all (not only in browsers)
    shared: bool  # uses a shared tier (Redis or SQL)
    memory: MemoryTier | None  # the in-process tier, when the feature uses it
    grace_s: int  # how long past expiry the tiers keep an entry: the stale windows, at least 60 s


def _grace_s(policy: FeatureCache) -> int:
    """How long past expiry the tiers keep an entry: its stale windows, at least 60 s."""
    return max(policy.stale_while_revalidate_s, policy.stale_if_error_s, 60)


class LayeredCache:
    """Every tier, the namespace versions, the counters and the cache's background work."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        redis: Redis | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        config = settings.cache
        self.config = config
        self.clock = clock
        self.policies = {name: f.cache for name, f in settings.features.items()}
        # Every name a client may use for a model (its aliases too), with the one the keys hold.
        self.models = {
            public: name for name, model in settings.models.items() for public in (name, *model.aliases)
        }
        self.default_policy = config.default
        self.memory = MemoryTier(config.memory.max_bytes, clock) if config.memory.enabled else None
        self.redis: RedisTier | None = None
        self.redis_guard: TierGuard | None = None
        if redis is not None and config.redis.enabled:
            self.redis = RedisTier(redis, config.redis.compress_min_bytes, config.redis.timeout_ms / 1000)
            self.redis_guard = TierGuard.for_tier("redis", config.redis)
        self.sql: SqlTier | None = None
        self.sql_guard: TierGuard | None = None
        if config.sql.enabled:
            self.sql = SqlTier(engine, config.sql.compress_min_bytes, config.sql.timeout_ms / 1000)
            self.sql_guard = TierGuard.for_tier("sql", config.sql)
        self.namespaces: dict[str, int] = {}
        self.namespace_store = SqlTier(engine, 0)
        self.bus: Bus = (
            RedisBus(redis) if redis is not None else FileBus(Path(settings.data_dir) / "cache-epoch")
        )
        self.stats = CacheStats(self._flush_stats)
        self.flights: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._token_prefix = secrets.token_hex(6) + ":"
        self._token_counter = itertools.count(1)
        self._purger: asyncio.Task[None] | None = None
        self._purging = asyncio.Lock()  # held while a purge statement runs: see aclose
        self._reloading: asyncio.Task[None] | None = None
        self.invalidated_at = 0.0  # perf_counter() when this process last applied an invalidation
        self._abandoned: AbandonedLocks | None = None  # lookups Redis did not answer (locks.py)
        if self.redis is not None and self.redis_guard is not None:
            self._abandoned = AbandonedLocks(self.redis.unlock, self.redis_guard.timeout_s, self._tasks)
        self.replaced = Replacements()  # keys other processes replaced (see `_drop`)
        self.plans = {name: self._plan(policy) for name, policy in self.policies.items()}
        self.default_plan = self._plan(self.default_policy)

    def new_token(self) -> str:
        """A single-flight lock token unique to this process and call, without asking the OS."""
        return f"{self._token_prefix}{next(self._token_counter):x}"

    def policy(self, feature: str) -> FeatureCache:
        """The feature's cache policy."""
        return self.policies.get(feature, self.default_policy)

    def plan(self, feature: str) -> Plan:
        """The feature's policy with what it means for the tiers (hot path: one lookup)."""
        return self.plans.get(feature, self.default_plan)

    def _plan(self, policy: FeatureCache) -> Plan:
        tiers = policy.tiers
        memory = self.memory if "memory" in tiers else None
        shared = ("redis" in tiers and self.redis is not None) or ("sql" in tiers and self.sql is not None)
        return Plan(policy, shared or memory is not None, shared, memory, _grace_s(policy))

    def key(self, call: Call, policy: FeatureCache) -> CacheKey:
        """The key of ``call``'s entry under the feature's current namespace version."""
        ctx = call.context
        namespace = self.namespaces.get(ctx.feature, 0)
        return cache_key(call.kind, call.route.name, call.body, policy.scope, ctx, namespace)

    # Lifecycle

    async def start(self) -> None:
        """Load the namespace versions, and start the bus, the counters and the purge."""
        await self.reload()
        await self.bus.start(self.reload, self._drop)
        self.stats.start()
        if self.sql is not None:
            self._purger = asyncio.get_running_loop().create_task(self._purge_forever())

    async def reload(self) -> None:
        """Apply an invalidation: an empty in-process tier at once, then fresh namespace versions.

        Until the versions are read, `pending` hands the reload to every request, so that none
        computes a key with the old version meanwhile. The SQL rows this process has not
        written yet are dropped (see `SqlTier.drop_queued`), so that none lands after the
        invalidation's delete.
        """
        await asyncio.shield(self._begin_reload())

    def _begin_reload(self, since: float | None = None) -> asyncio.Task[None]:
        # Always a new read: one already under way may have read the versions before this change.
        # ``since``: the start of the request that found the change (its key comes after the
        # reload, so its answer may be stored; the calls that started before it may not).
        self.invalidated_at = time.perf_counter() if since is None else since
        if self.memory is not None:
            self.memory.clear()
        self._reloading = asyncio.get_running_loop().create_task(self._read_namespaces())
        return self._reloading

    async def _read_namespaces(self) -> None:
        if self.sql is not None:
            await self.sql.drop_queued()
        with contextlib.suppress(Exception):  # the database is down: keep the versions we have
            self.namespaces = await self.namespace_store.namespaces()
        if self.memory is not None:
            self.memory.clear()  # what was stored meanwhile may be under an old version

    def _drop(self, key: str | None, since: float) -> None:
        """Another process replaced ``key``'s entry by one made at ``since``: forget the copy in
        process, and serve no entry of the key made before it (None: forget every copy)."""
        if key is not None:
            self.replaced.note(key, since)
        if self.memory is not None:
            if key is None:
                self.memory.clear()
            else:
                self.memory.forget(key)

    def outdated(self, key: str, entry: Entry) -> bool:
        """Whether another process replaced ``entry`` (made before the key's latest replacement)."""
        return self.replaced.outdated(key, entry.created_at)

    def pending(self, started: float) -> asyncio.Task[None] | None:
        """The reload every request must wait for, if an invalidation is being applied (hot path;
        ``started``: the request's start, see `_begin_reload`). Entries other processes replaced
        are dropped first."""
        self.bus.drops()
        if self.bus.check():
            return self._begin_reload(started)
        reloading = self._reloading
        return reloading if reloading is not None and not reloading.done() else None

    async def aclose(self) -> None:
        """Finish background work, flush pending SQL writes and counters, stop listening."""
        await stop_between(self._purger, self._purging)
        for task in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await task
        if self._abandoned is not None:  # locks still abandoned: their leases free them
            self._abandoned.close()
        if self.sql is not None:
            await self.sql.flush()
        await self.stats.stop()
        await self.bus.stop()

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run ``coroutine`` in the background; shutdown waits for it."""
        spawn(self._tasks, coroutine)

    async def _purge_forever(self) -> None:
        assert self.sql is not None
        assert self.sql_guard is not None
        sql, guard = self.sql, self.sql_guard
        batch = self.config.sql.purge_batch
        while True:
            await asyncio.sleep(self.config.sql.purge_interval_s)
            # Each batch is its own statement under the tier's timeout, so a backlog is no failure.
            with contextlib.suppress(Exception):
                deleted = batch
                while deleted >= batch:
                    async with self._purging:
                        deleted = await guard.run(lambda: sql.purge_batch(self.clock(), batch), 0)

    async def _flush_stats(self, counts: Any, hits: Any) -> None:
        if counts:
            await self.namespace_store.add_stats(counts)
        if hits and self.redis is not None and self.redis_guard is not None:
            redis = self.redis
            await self.redis_guard.run(lambda: redis.add_hits(hits), None)
        if hits and self.sql is not None and self.sql_guard is not None:
            sql = self.sql
            await self.sql_guard.run(lambda: sql.add_hits(hits), None)

    # Reads and writes

    async def lookup(
        self, key: CacheKey, policy: FeatureCache, lock_token: str | None
    ) -> tuple[Entry | None, str, int]:
        """The entry from Redis, then SQL, promoted to the faster tiers, with the tier that had it.

        With ``lock_token``, a miss in Redis also takes the single-flight lock in the same
        round trip (`LOCK_TAKEN`), or reports that another process holds it (`LOCK_HELD`).
        """
        lock_state = LOCK_NONE
        tiers = policy.tiers
        if self.redis is not None and self.redis_guard is not None and "redis" in tiers:
            redis, lease = self.redis, int(self.config.lock_lease_s * 1000)
            lock = key.lock if lock_token else None
            guard = self.redis_guard
            sent = lock is not None and (not guard.breaker.failures or guard.available)  # not skipped
            found = await guard.run(
                lambda: redis.lookup(key.key, lock, lock_token or "", lease), _NO_LOOKUP, timed=False
            )
            abandoned = self._abandoned
            if found is _NO_LOOKUP:  # failed or timed out (or skipped): nothing known of the lock
                if sent and lock_token is not None and abandoned is not None:
                    abandoned.add(key.lock, lock_token)
            elif abandoned is not None:
                abandoned.answered()
            entry, lock_state = found
            if entry is not None and not self.outdated(key.key, entry):
                self._promote(key.key, entry, ("memory",), policy)
                return entry, "redis", lock_state
        if self.sql is not None and self.sql_guard is not None and "sql" in tiers:
            sql = self.sql
            entry = await self.sql_guard.run(lambda: sql.get(key.key), None, timed=False)
            if entry is not None and not self.outdated(key.key, entry):
                self._promote(key.key, entry, ("memory", "redis"), policy)
                if lock_state == LOCK_TAKEN and lock_token is not None:
                    self.spawn(self.unlock(key, lock_token))
                    lock_state = LOCK_NONE
                return entry, "sql", lock_state
        return None, "", lock_state

    def keep_s(self, entry: Entry, policy: FeatureCache, now: float) -> float:
        """How long a tier keeps ``entry``: its freshness plus the stale grace, at least 60 s past expiry."""
        return max(1.0, entry.expires_at + _grace_s(policy) - now)

    def _promote(self, key: str, entry: Entry, tiers: tuple[str, ...], policy: FeatureCache) -> None:
        keep = self.keep_s(entry, policy, self.clock())
        if "memory" in tiers and self.memory is not None and "memory" in policy.tiers:
            self.memory.put(key, entry, keep)
        if (
            "redis" in tiers
            and self.redis is not None
            and self.redis_guard is not None
            and "redis" in policy.tiers
        ):
            redis, guard = self.redis, self.redis_guard
            self.spawn(guard.run(lambda: redis.set(key, entry, keep), None))

    def may_store(self, started: float) -> bool:
        """Whether the answer of a call that started at ``started`` (its ``perf_counter()``) may be
        stored: not when this process applied an invalidation since, which may have deleted (or
        meant to delete) what the answer would store again (hot path: two reads)."""
        if self.bus.check():
            self._begin_reload()
        return started >= self.invalidated_at

    def keep_in_memory(self, key: CacheKey, entry: Entry, plan: Plan, started: float, replaces: bool) -> bool:
        """`store` for a feature whose only tier is this process's: whether ``entry`` was kept."""
        memory = plan.memory
        if memory is None or not self.may_store(started):  # no invalidation since the call started
            return False
        memory.keep(key.key, entry, entry.expires_at + plan.grace_s)
        if replaces:  # a forced refresh: the other processes drop their copy
            self.bus.replaced(key.key, entry.created_at)
        return True

    async def store(
        self,
        key: CacheKey,
        entry: Entry,
        policy: FeatureCache,
        token: str | None = None,
        *,
        started: float,
        replaces: bool = False,
    ) -> bool:
        """Write ``entry`` to every tier of the feature: memory and Redis now, SQL after the response;
        nothing when an invalidation was applied since the call ``started`` (see `may_store`).
        With ``replaces`` (a forced refresh), the other processes drop their copy of the key.

        With the ``token`` of the single-flight lock, the Redis write also releases the lock, in
        the same round trip; returns whether it was sent to (a failed write leaves the lock to
        its lease).
        """
        if not self.may_store(started):
            return False
        keep = self.keep_s(entry, policy, self.clock())
        tiers = policy.tiers
        if self.memory is not None and "memory" in tiers:
            self.memory.put(key.key, entry, keep)
        released: bool | None = False
        if self.redis is not None and self.redis_guard is not None and "redis" in tiers:
            redis, lock = self.redis, key.lock if token else None
            # Sent, not awaited: the write (which also releases the lock) leaves with this loop
            # turn's other commands, the budget's settlement of the same call among them. If it
            # fails, the breaker counts it and the lock's lease frees the key.
            released = self.redis_guard.send(
                lambda done: redis.store_soon(key.key, entry, keep, lock, token or "", done)
            )
            if released is False:  # an entry with tags: several commands, awaited
                released = await self.redis_guard.run(
                    lambda: redis.store(key.key, entry, keep, lock, token or ""), False, timed=False
                )
        if self.sql is not None and "sql" in tiers:
            self.sql.enqueue(key.key, entry, keep)
        if replaces:
            self.bus.replaced(key.key, entry.created_at)
        return bool(released) and token is not None

    async def try_lock(self, key: CacheKey, token: str) -> bool:
        """Take the key's lock for a background refresh; True when this process may refresh."""
        if self.redis is None or self.redis_guard is None:
            return True
        redis, lease = self.redis, int(self.config.lock_lease_s * 1000)
        return await self.redis_guard.run(lambda: redis.try_lock(key.lock, token, lease), False)

    async def unlock(self, key: CacheKey, token: str) -> None:
        """Release the single-flight lock taken by `lookup`."""
        if self.redis is not None and self.redis_guard is not None:
            redis = self.redis
            await self.redis_guard.run(lambda: redis.unlock(key.lock, token), None)

    async def wait_for(self, key: CacheKey, policy: FeatureCache) -> Entry | None:
        """Wait for another process's leader to store ``key``; None when it gave up or time ran out."""
        if self.redis is None or self.redis_guard is None:
            return None
        redis, guard = self.redis, self.redis_guard
        delay = 0.005
        deadline = time.monotonic() + self.config.wait_s
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)
            gone: tuple[Entry | None, bool] = (None, False)
            entry, held = await guard.run(lambda: redis.wait_step(key.key, key.lock), gone, timed=False)
            if entry is not None and not self.outdated(key.key, entry):
                self._promote(key.key, entry, ("memory",), policy)
                return entry
            if not held:
                return None
        return None

    def status(self) -> dict[str, object]:
        """The tiers' state for ``/api/ai/status``: each tier is up, or skipped by its breaker."""
        tiers: dict[str, object] = {}
        if self.memory is not None:
            tiers["memory"] = {"state": "closed", "entries": len(self.memory), "bytes": self.memory.bytes}
        if self.redis_guard is not None:
            tiers["redis"] = self.redis_guard.status()
        if self.sql_guard is not None and self.sql is not None:
            tiers["sql"] = {**self.sql_guard.status(), "pending_writes": self.sql.pending}
        return {"enabled": True, "tiers": tiers, "in_flight": len(self.flights)}

"""Cache counters: kept per process on the hot path, added to shared totals every second.

Counters are per feature: ``hits_memory``, ``hits_redis``, ``hits_sql``, ``hits_browser``,
``misses``, ``stale``, ``bypass``, ``coalesced`` (answered by another request's upstream
call), ``upstream_calls``, ``stores`` and ``tokens_saved``. Entry hit counts (for popularity and
refresh-ahead) are buffered the same way and added to the Redis and SQL tiers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

from ..background import stop_between

__all__ = ["METRICS", "CacheStats", "summarise"]

logger = logging.getLogger("sluicegate.cache")
METRICS = (
    "hits_memory",
    "hits_redis",
    "hits_sql",
    "hits_browser",
    "misses",
    "stale",
    "bypass",
    "coalesced",
    "upstream_calls",
    "stores",
    "tokens_saved",
)
_MAX_KEYS = 10_000
# A plain miss counts once on the hot path, under one of these; `flush` expands it into
# ``misses``, ``upstream_calls`` and (when its answer was stored) ``stores``.
_MISS_STORED, _MISS_ONLY = "miss+store", "miss+call"
Flush = Callable[[Mapping[tuple[str, str], int], Mapping[str, int]], Awaitable[None]]


class CacheStats:
    """This process's counters not yet flushed, and the flushing task."""

    def __init__(self, flush: Flush, interval_s: float = 1.0) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.key_hits: Counter[str] = Counter()
        self._flush = flush
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # held while flushing: `stop` never cuts a flush short

    def count(self, feature: str, metric: str, n: int = 1) -> None:
        """Add ``n`` to a feature's counter."""
        self.counts[(feature, metric)] += n

    def went_upstream(self, feature: str, miss: bool, reached: bool = True) -> None:
        """Count an upstream call (unless the gateway refused it before it ``reached`` the
        provider), and a miss when it is one (not a background refresh)."""
        counts = self.counts
        if miss:
            counts[(feature, "misses")] += 1
        if reached:
            counts[(feature, "upstream_calls")] += 1

    def missed(self, feature: str, stored: bool, reached: bool = True) -> None:
        """Count a miss that went upstream (as `went_upstream`), and the store of its answer."""
        if reached:
            self.counts[(feature, _MISS_STORED if stored else _MISS_ONLY)] += 1
        else:
            self.counts[(feature, "misses")] += 1

    def hit(self, key: str) -> None:
        """Count a hit on an entry."""
        if len(self.key_hits) < _MAX_KEYS or key in self.key_hits:
            self.key_hits[key] += 1

    def served(self, key: str, feature: str, metric: str, tokens: int | None) -> None:
        """Count a hit on an entry (`hit`), under ``metric`` (``hits_memory``…), with the tokens
        it saved: one call on a hit's path."""
        self.hit(key)
        counts = self.counts
        counts[(feature, metric)] += 1
        if tokens is not None:
            counts[(feature, "tokens_saved")] += tokens

    def start(self) -> None:
        """Flush in the background every interval."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        """Hand the counters to the shared totals; on failure they are kept for the next try."""
        if not self.counts and not self.key_hits:
            return
        async with self._lock:
            counts, hits = self.counts, self.key_hits
            self.counts, self.key_hits = Counter(), Counter()
            try:
                await self._flush(_expanded(counts), hits)
            except Exception as exc:  # the store is down: keep the counts, try again later
                self.counts.update(counts)
                if len(self.key_hits) < _MAX_KEYS:
                    self.key_hits.update(hits)
                logger.debug("cache: counters not flushed (%s)", exc)

    async def stop(self) -> None:
        """Stop the task and flush once more."""
        await stop_between(self._task, self._lock)
        self._task = None
        with contextlib.suppress(Exception):
            await self.flush()


def _expanded(counts: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """``counts`` with each miss counted by `CacheStats.missed` under the metrics it stands for."""
    out: Counter[tuple[str, str]] = Counter()
    for (feature, metric), n in counts.items():
        if metric in (_MISS_STORED, _MISS_ONLY):
            out[(feature, "misses")] += n
            out[(feature, "upstream_calls")] += n
            if metric == _MISS_STORED:
                out[(feature, "stores")] += n
        else:
            out[(feature, metric)] += n
    return out


def summarise(totals: Mapping[tuple[str, str], int]) -> dict[str, dict[str, float | int | None]]:
    """Per-feature counters with hits, lookups and the hit ratio, plus an ``all`` row."""
    features: dict[str, dict[str, float | int | None]] = {}
    for (feature, metric), value in totals.items():
        row = features.setdefault(feature, dict.fromkeys(METRICS, 0))
        row[metric] = int(row.get(metric) or 0) + value
    overall: dict[str, float | int | None] = dict.fromkeys(METRICS, 0)
    for row in features.values():
        for metric in METRICS:
            overall[metric] = int(overall[metric] or 0) + int(row[metric] or 0)
    features["all"] = overall
    for row in features.values():
        hits = sum(int(row[m] or 0) for m in ("hits_memory", "hits_redis", "hits_sql", "hits_browser"))
        served = hits + int(row["stale"] or 0) + int(row["coalesced"] or 0)
        lookups = served + int(row["misses"] or 0)
        row["hits"] = hits
        row["hit_ratio"] = round(served / lookups, 4) if lookups else None
        row["upstream_calls_saved"] = served
    return features

"""Tests for sluicegate.cache.stats: the per-feature summary, and flushing counters that survive failures."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from pydantic import ValidationError

from sluicegate.cache.stats import METRICS, CacheStats, summarise
from sluicegate.testing import mock_settings

# summarise


def test_summary_hit_ratio_per_feature_and_overall() -> None:
    """Hits add up over tiers; stale and coalesced answers count as served; `all` sums the features."""
    summary = summarise(
        {
            ("chat", "hits_memory"): 3,
            ("chat", "misses"): 1,
            ("chat", "tokens_saved"): 120,
            ("insights", "hits_redis"): 1,
            ("insights", "hits_sql"): 1,
            ("insights", "stale"): 1,
            ("insights", "coalesced"): 1,
            ("insights", "misses"): 4,
        }
    )
    assert set(summary) == {"chat", "insights", "all"}
    chat, insights, overall = summary["chat"], summary["insights"], summary["all"]
    assert (chat["hits"], chat["hit_ratio"], chat["upstream_calls_saved"]) == (3, 0.75, 3)
    assert (insights["hits"], insights["hit_ratio"], insights["upstream_calls_saved"]) == (2, 0.5, 4)
    assert overall["hits"] == 5
    assert overall["misses"] == 5
    assert overall["hit_ratio"] == round(7 / 12, 4)
    assert overall["tokens_saved"] == 120


def test_summary_rows_carry_every_metric() -> None:
    """Every row names every metric, zero when never counted."""
    summary = summarise({("chat", "bypass"): 2})
    for row in summary.values():
        assert set(METRICS) <= set(row)
    assert summary["chat"]["bypass"] == 2
    assert summary["chat"]["misses"] == 0


def test_summary_without_lookups_has_no_ratio() -> None:
    """A feature that was only bypassed, and an empty summary, have no hit ratio rather than 0."""
    assert summarise({("chat", "bypass"): 5})["chat"]["hit_ratio"] is None
    empty = summarise({})
    assert set(empty) == {"all"}
    assert empty["all"]["hit_ratio"] is None
    assert empty["all"]["hits"] == 0


# CacheStats


class Store:
    """The shared totals: records each flush, and fails while told to."""

    def __init__(self) -> None:
        self.counts: list[dict[tuple[str, str], int]] = []
        self.hits: list[dict[str, int]] = []
        self.failing = False
        self.flushed = asyncio.Event()

    async def __call__(self, counts: Mapping[tuple[str, str], int], hits: Mapping[str, int]) -> None:
        if self.failing:
            raise ConnectionError("database is down")
        self.counts.append(dict(counts))
        self.hits.append(dict(hits))
        self.flushed.set()


@pytest.fixture
def store() -> Store:
    """A recording store."""
    return Store()


async def test_flush_hands_over_and_resets(store: Store) -> None:
    """A flush passes the counters and entry hits on, and starts again from zero."""
    stats = CacheStats(store)
    stats.count("chat", "misses")
    stats.count("chat", "tokens_saved", 40)
    stats.hit("k1")
    stats.hit("k1")
    await stats.flush()
    assert store.counts == [{("chat", "misses"): 1, ("chat", "tokens_saved"): 40}]
    assert store.hits == [{"k1": 2}]
    assert not stats.counts and not stats.key_hits


async def test_nothing_to_flush_makes_no_call(store: Store) -> None:
    """An empty flush does not touch the store."""
    await CacheStats(store).flush()
    assert store.counts == []


async def test_failed_flush_keeps_the_counts(store: Store) -> None:
    """When the store is down the counts are kept, added to newer ones, and flushed later."""
    stats = CacheStats(store)
    stats.count("chat", "misses", 2)
    stats.hit("k1")
    store.failing = True
    await stats.flush()
    assert stats.counts == {("chat", "misses"): 2}
    stats.count("chat", "misses")
    stats.count("chat", "hits_memory")
    stats.hit("k1")
    await stats.flush()
    store.failing = False
    await stats.flush()
    assert store.counts == [{("chat", "misses"): 3, ("chat", "hits_memory"): 1}]
    assert store.hits == [{"k1": 2}]
    assert not stats.counts


async def test_entry_hits_are_bounded(store: Store) -> None:
    """Past 10,000 distinct keys new keys are not tracked; known keys still count."""
    stats = CacheStats(store)
    for i in range(10_000):
        stats.hit(f"k{i}")
    stats.hit("one-too-many")
    stats.hit("k0")
    assert len(stats.key_hits) == 10_000
    assert stats.key_hits["k0"] == 2
    assert "one-too-many" not in stats.key_hits


async def test_background_flush_and_final_flush_on_stop(store: Store) -> None:
    """Started, the counters are flushed every interval; stop flushes what is left."""
    stats = CacheStats(store, interval_s=0.01)
    stats.start()
    stats.count("chat", "misses")
    await asyncio.wait_for(store.flushed.wait(), 2)
    assert store.counts[0] == {("chat", "misses"): 1}
    stats.count("chat", "stores")
    await stats.stop()
    assert store.counts[-1] == {("chat", "stores"): 1}
    assert not stats.counts


async def test_stop_survives_a_failing_store(store: Store) -> None:
    """stop() never raises, even when the last flush fails, and keeps the counts."""
    stats = CacheStats(store)
    stats.count("chat", "misses")
    store.failing = True
    await stats.stop()
    assert stats.counts == {("chat", "misses"): 1}


def test_no_feature_can_be_named_like_the_total_row() -> None:
    """A feature named "all" would have its row replaced by the total, so no feature may take the name."""
    assert summarise({("all", "misses"): 1, ("chat", "misses"): 2})["all"]["misses"] == 3  # the total
    with pytest.raises(ValidationError, match="all"):
        mock_settings(features={"all": {}})


async def test_a_served_hit_counts_the_entry_the_tier_and_the_tokens_saved(store: Store) -> None:
    """`served` is `hit` plus the tier's counter and the tokens saved, in one call."""
    stats = CacheStats(store)
    stats.served("k1", "chat", "hits_memory", 30)
    stats.served("k1", "chat", "hits_redis", None)  # an entry without usage saves no counted tokens
    assert stats.key_hits == {"k1": 2}
    assert stats.counts == {
        ("chat", "hits_memory"): 1,
        ("chat", "tokens_saved"): 30,
        ("chat", "hits_redis"): 1,
    }


async def test_a_miss_counts_once_and_flushes_as_its_three_counters(store: Store) -> None:
    """`missed` keeps one counter on the hot path; the flush hands on misses, upstream calls and
    stores."""
    stats = CacheStats(store)
    stats.missed("chat", stored=True)
    stats.missed("chat", stored=False)
    stats.count("chat", "misses")
    await stats.flush()
    assert store.counts == [{("chat", "misses"): 3, ("chat", "upstream_calls"): 2, ("chat", "stores"): 1}]

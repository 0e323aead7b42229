"""Tests for sluicegate.cache.redis_tier on the real Redis: lookup and locks, tags, scans and sizes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sluicegate import RequestContext, create_gateway
from sluicegate.cache.entry import Entry, encode
from sluicegate.cache.layered import LOCK_HELD, LOCK_NONE, LOCK_TAKEN
from sluicegate.cache.redis_tier import TAG_PREFIX, RedisTier
from sluicegate.store.redis import create_redis
from sluicegate.testing import mock_settings

pytestmark = [pytest.mark.redis, pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")]

COMPRESS = 256
LEASE_MS = 30_000


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the scratch database."""
    client: Redis = create_redis(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def tier(redis: Redis) -> RedisTier:
    """The tier, compressing values of 256 bytes and more."""
    return RedisTier(redis, COMPRESS)


@pytest.fixture
def org() -> str:
    """An org name of this test's own, so that keys never meet another test's."""
    return "org" + secrets.token_hex(4)


def key(org: str, feature: str = "chat", model: str = "gpt-4o-mini", digest: str = "d1") -> str:
    """A key in the layout `cache_key` builds."""
    return f"sg:c:{{o:{org}}}:{feature}:0:{model}:{digest}"


def entry(body: bytes = b'{"choices":[]}', tags: tuple[str, ...] = (), hits: int = 0) -> Entry:
    """An entry holding ``body``."""
    return Entry(
        "chat", body, 1000.0, 4600.0, '"e"', "chat", "acme", None, "gpt-4o-mini", tags=tags, hits=hits
    )


async def test_lookup_lock_outcomes(tier: RedisTier, org: str) -> None:
    """A miss takes the lock (taken), a second caller finds it held, and a stored entry is returned."""
    k = key(org)
    assert await tier.lookup(k, k + ":lock", "token-a", LEASE_MS) == (None, LOCK_TAKEN)
    assert await tier.lookup(k, k + ":lock", "token-b", LEASE_MS) == (None, LOCK_HELD)
    assert await tier.lookup(k, None, "", 0) == (None, LOCK_NONE)
    stored = entry()
    await tier.set(k, stored, 60)
    found, state = await tier.lookup(k, k + ":lock", "token-c", LEASE_MS)
    assert (found, state) == (stored, LOCK_NONE)  # found: no lock taken, none reported held
    assert await tier.get(k) == stored


async def test_lock_lease_expires(tier: RedisTier, org: str) -> None:
    """A lock whose leader vanished is free again once its lease has passed."""
    k = key(org)
    assert (await tier.lookup(k, k + ":lock", "a", 50))[1] == LOCK_TAKEN
    assert await tier.lock_held(k + ":lock")
    await asyncio.sleep(0.1)
    assert not await tier.lock_held(k + ":lock")
    assert (await tier.lookup(k, k + ":lock", "b", LEASE_MS))[1] == LOCK_TAKEN


async def test_unlock_only_with_the_right_token(tier: RedisTier, redis: Redis, org: str) -> None:
    """Another token cannot release a lock; its own token can."""
    lock = key(org) + ":lock"
    assert await tier.try_lock(lock, "mine", LEASE_MS)
    assert not await tier.try_lock(lock, "theirs", LEASE_MS)
    await tier.unlock(lock, "theirs")
    assert await redis.get(lock) == b"mine"
    await tier.unlock(lock, "mine")
    assert not await tier.lock_held(lock)
    assert await tier.try_lock(lock, "theirs", LEASE_MS)


async def test_set_keeps_the_ttl_and_compresses(tier: RedisTier, redis: Redis, org: str) -> None:
    """Values live keep_s seconds in Redis; big ones are stored compressed, small ones plain."""
    small, big = key(org, digest="small"), key(org, digest="big")
    await tier.set(small, entry(), 60)
    await tier.set(big, entry(b'{"content":"' + b"quarterly " * 200 + b'"}'), 0.5)
    assert 59_000 < await redis.pttl(small) <= 60_000
    assert 0 < await redis.pttl(big) <= 500
    assert (await redis.get(small))[:4] == b"SG1\x00"
    assert (await redis.get(big))[:4] == b"SG1\x01"
    assert await redis.strlen(big) < 1000


async def test_garbage_value_is_a_miss(tier: RedisTier, redis: Redis, org: str) -> None:
    """A value that is not an entry reads as a miss and takes no lock."""
    k = key(org)
    await redis.set(k, b"not an entry")
    assert await tier.get(k) is None
    assert await tier.lookup(k, k + ":lock", "t", LEASE_MS) == (None, LOCK_NONE)
    assert not await tier.lock_held(k + ":lock")


async def test_hits_are_added_and_read_back(tier: RedisTier, redis: Redis, org: str) -> None:
    """Hit counts add up across calls and come back as the entry's hits, never fewer than stored."""
    a, b = key(org, digest="a"), key(org, digest="b")
    await tier.set(a, entry(hits=2), 60)
    await tier.set(b, entry(hits=9), 60)
    await tier.add_hits({a: 3, b: 1})
    await tier.touch(a, 4)
    assert (await tier.get(a)).hits == 7  # type: ignore[union-attr]
    assert (await tier.get(b)).hits == 9  # type: ignore[union-attr]
    assert 0 < await redis.ttl(a + ":hits") <= 60


async def test_a_hit_counter_lives_as_long_as_its_entry(tier: RedisTier, redis: Redis, org: str) -> None:
    """An entry kept for 30 days keeps its count through a quiet day (it decides the entry's
    popularity multiplier at refresh); a counter whose entry is gone lives a day."""
    long_lived, gone = key(org, digest="month"), key(org, digest="gone")
    await tier.set(long_lived, entry(), 30 * 86400)
    await tier.add_hits({long_lived: 1, gone: 1})
    assert 29 * 86400 < await redis.ttl(long_lived + ":hits") <= 30 * 86400
    assert 0 < await redis.ttl(gone + ":hits") <= 86400


async def test_tags_index_and_delete(tier: RedisTier, redis: Redis, org: str) -> None:
    """Tagged entries are listed under their tag, and deleting the tag deletes exactly them."""
    tag = f"q3-{org}"
    tagged = [key(org, digest=f"t{i}") for i in range(3)]
    other = key(org, digest="other")
    for k in tagged:
        await tier.set(k, entry(tags=(tag, f"shared-{org}")), 60)
    await tier.set(other, entry(tags=(f"shared-{org}",)), 60)
    members = {m.decode() for m in await redis.smembers(TAG_PREFIX + tag)}
    assert members == set(tagged)
    assert await tier.delete_tag(tag) == 3
    assert [await tier.get(k) for k in tagged] == [None, None, None]
    assert await tier.get(other) is not None
    assert not await redis.exists(TAG_PREFIX + tag)
    assert await tier.delete_tag(tag) == 0


async def test_a_tag_deletes_only_the_entries_that_still_carry_it(
    tier: RedisTier, redis: Redis, org: str
) -> None:
    """An entry stored again without a tag (or gone) is no longer the tag's: deleting the tag
    leaves it, and the tag's set forgets it."""
    tag = f"old-{org}"
    kept, retagged, gone = (key(org, digest=name) for name in ("kept", "retagged", "gone"))
    for k in (kept, retagged, gone):
        await tier.set(k, entry(tags=(tag,)), 60)
    await tier.set(retagged, entry(), 60)  # the same request, stored again with no tags
    await tier.delete(gone)
    assert await tier.tagged(tag) == [kept]
    assert {m.decode() for m in await redis.smembers(TAG_PREFIX + tag)} == {kept}
    assert await tier.delete_tag(tag) == 1
    assert await tier.get(retagged) is not None and await tier.get(kept) is None


async def test_tag_set_lives_as_long_as_its_longest_entry(tier: RedisTier, redis: Redis, org: str) -> None:
    """A tag's set is extended by a longer-lived entry and never shortened by a shorter one."""
    tag = f"t-{org}"
    await tier.set(key(org, digest="a"), entry(tags=(tag,)), 100)
    assert 95 <= await redis.ttl(TAG_PREFIX + tag) <= 101
    await tier.set(key(org, digest="b"), entry(tags=(tag,)), 1000)
    assert 995 <= await redis.ttl(TAG_PREFIX + tag) <= 1001
    await tier.set(key(org, digest="c"), entry(tags=(tag,)), 10)
    assert await redis.ttl(TAG_PREFIX + tag) >= 995


async def test_delete_and_delete_keys(tier: RedisTier, redis: Redis, org: str) -> None:
    """Deletion removes entries with their hit counters, and counts only those that existed."""
    keys = [key(org, digest=f"k{i}") for i in range(3)]
    for k in keys:
        await tier.set(k, entry(), 60)
        await tier.touch(k, 1)
    assert await tier.delete_keys([*keys[:2], key(org, digest="missing")]) == 2
    assert not await redis.exists(keys[0] + ":hits")
    await tier.delete(keys[2])
    assert await tier.get(keys[2]) is None
    assert not await redis.exists(keys[2] + ":hits")


async def test_scan_skips_locks_and_counters(tier: RedisTier, org: str) -> None:
    """scan finds entry keys by pattern, never locks or hit counters, and honours its limit."""
    chat = [key(org, "chat", digest=f"c{i}") for i in range(5)]
    insights = key(org, "insights")
    for k in [*chat, insights]:
        await tier.set(k, entry(), 60)
        await tier.touch(k, 1)
    await tier.try_lock(chat[0] + ":lock", "t", LEASE_MS)
    assert sorted(await tier.scan(f"sg:c:{{o:{org}}}:chat:*")) == sorted(chat)
    assert sorted(await tier.scan(f"sg:c:{{o:{org}}}:*")) == sorted([*chat, insights])
    assert len(await tier.scan(f"sg:c:{{o:{org}}}:*", limit=2)) == 2


async def test_size_counts_entries_and_stored_bytes(tier: RedisTier, org: str) -> None:
    """size reports the entries and their stored (compressed) bytes, locks and counters left out."""
    before = await tier.size()
    entries = {key(org, digest="a"): entry(), key(org, digest="b"): entry(b"[" + b"1," * 500 + b"1]")}
    for k, e in entries.items():
        await tier.set(k, e, 60)
        await tier.touch(k, 2)
    await tier.try_lock(key(org) + ":lock", "t", LEASE_MS)
    count, size = await tier.size()
    assert count - before[0] == 2
    assert size - before[1] == sum(len(encode(e, COMPRESS)) for e in entries.values())


async def test_store_releases_only_its_own_lock(tier: RedisTier, redis: Redis, org: str) -> None:
    """Storing with the lock's token stores and releases it; another token stores and leaves it."""
    mine, theirs = key(org, digest="mine"), key(org, digest="theirs")
    for k in (mine, theirs):
        assert (await tier.lookup(k, k + ":lock", "leader", LEASE_MS))[1] == LOCK_TAKEN
    assert await tier.store(mine, entry(), 60, mine + ":lock", "leader")
    assert await tier.store(theirs, entry(), 60, theirs + ":lock", "impostor")
    assert not await tier.lock_held(mine + ":lock")
    assert await redis.get(theirs + ":lock") == b"leader"
    assert await tier.get(mine) == entry()
    assert await tier.get(theirs) == entry()


async def test_wait_step_reads_entry_and_lock_together(tier: RedisTier, org: str) -> None:
    """A waiter sees the lock held, then the entry once stored, or the lock gone without an entry."""
    stored, abandoned = key(org, digest="stored"), key(org, digest="abandoned")
    for k in (stored, abandoned):
        await tier.try_lock(k + ":lock", "leader", LEASE_MS)
        assert await tier.wait_step(k, k + ":lock") == (None, True)
    await tier.store(stored, entry(hits=1), 60, stored + ":lock", "leader")
    await tier.unlock(abandoned + ":lock", "leader")
    found, _ = await tier.wait_step(stored, stored + ":lock")
    assert found == entry(hits=1)
    assert await tier.wait_step(abandoned, abandoned + ":lock") == (None, False)


async def test_scripts_lost_by_redis_are_loaded_again(tier: RedisTier, redis: Redis, org: str) -> None:
    """After SCRIPT FLUSH (a restart, a failover) the tier loads its scripts again and carries on."""
    k = key(org)
    await tier.set(k, entry(), 60)
    await redis.script_flush()
    assert await tier.get(k) == entry()
    fresh = key(org, digest="new")
    assert await tier.lookup(fresh, fresh + ":lock", "t", LEASE_MS) == (None, LOCK_TAKEN)


async def test_concurrent_calls_get_their_own_answers(tier: RedisTier, org: str) -> None:
    """Lookups and stores made at once (one batched round trip) each get their own result."""
    keys = [key(org, digest=f"k{i}") for i in range(40)]
    await asyncio.gather(*(tier.set(k, entry(body=k.encode()), 60) for k in keys[::2]))
    results = await asyncio.gather(*(tier.lookup(k, k + ":lock", "t", LEASE_MS) for k in keys))
    for index, (k, (found, state)) in enumerate(zip(keys, results, strict=True)):
        if index % 2 == 0:
            assert found is not None and found.body == k.encode()
        else:
            assert (found, state) == (None, LOCK_TAKEN)


async def test_an_expired_entry_in_redis_is_fetched_again_not_served(redis_url: str, tmp_path: Path) -> None:
    """Kept in Redis past its TTL for stale-if-error, an entry must not answer as a fresh hit:
    the next request goes upstream."""

    features = {
        "f": {"cache": {"ttl_s": 1, "cost_aware": False, "stale_if_error_s": 600, "tiers": ["redis"]}}
    }
    settings = mock_settings(data_dir=tmp_path, redis={"url": redis_url}, features=features)
    context = RequestContext("acme", None, "f")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "expire me"}]}
    async with create_gateway(settings) as gateway:
        first = await gateway.send(gateway.new_call("chat", dict(body), context))
        await asyncio.sleep(1.2)
        second = await gateway.send(gateway.new_call("chat", dict(body), context))
    assert (first.headers["x-sluicegate-cache"], second.headers["x-sluicegate-cache"]) == ("miss", "miss")


async def test_a_lock_a_stalled_lookup_took_late_is_released_when_redis_answers_again(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    """A lookup that timed out may still run when a paused Redis resumes, taking the lock for
    its whole lease: this process releases it once Redis answers again (tried every second,
    even with no other request to serve), so another process's identical request does not
    wait out the lease."""
    features = {"f": {"cache": {"tiers": ["memory", "redis"], "scope": "org", "ttl_s": 60}}}
    settings = mock_settings(data_dir=tmp_path, redis={"url": redis_url}, features=features)
    org = f"acme-{secrets.token_hex(4)}"
    context = RequestContext(org, None, "f")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "late lock"}]}
    async with create_gateway(settings) as gateway:
        cache = gateway.cache
        assert cache is not None and cache.redis is not None
        tier = cache.redis
        real = tier.lookup
        calls = 0

        async def stalled_once(key: str, lock: str | None, token: str, lease_ms: int) -> object:
            nonlocal calls
            calls += 1
            result = await real(key, lock, token, lease_ms)  # Redis ran it (late) ...
            if calls == 1:
                raise TimeoutError("Redis did not answer in time")  # ... after the caller gave up
            return result

        tier.lookup = stalled_once  # type: ignore[method-assign]
        call = gateway.new_call("chat", dict(body), context)
        key = cache.key(call, cache.policy("f"))
        reply = await gateway.send(call)
        assert reply.headers["x-sluicegate-cache"] == "miss"
        assert await redis.exists(key.lock) == 1  # taken late, and nobody's
        # Released within about a second, with no other request to this process (an idle replica).
        for _ in range(60):
            if not await redis.exists(key.lock):
                break
            await asyncio.sleep(0.05)
        assert await redis.exists(key.lock) == 0

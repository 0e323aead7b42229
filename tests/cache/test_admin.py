"""Tests for sluicegate.cache.admin: SCAN patterns, and stats, invalidation and bumps on real gateways."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate import Gateway, RequestContext, Settings, create_gateway
from sluicegate.cache import admin
from sluicegate.cache.keys import cache_key
from sluicegate.cache.layered import LayeredCache
from sluicegate.errors import InvalidRequest, ServiceUnavailable
from sluicegate.testing import mock_settings

FEATURES = {
    "chat": {"cache": {"scope": "user", "ttl_s": 3600}},
    "insights": {"cache": {"scope": "org", "ttl_s": 3600}},
    "templates": {"cache": {"scope": "global", "ttl_s": 3600}},
}
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Draft an OKR"}]}

# redis_patterns


def test_patterns_for_each_selection() -> None:
    """No selection matches every key; an org covers its org and user scopes; a user its own scope."""
    assert admin.redis_patterns(None, None, None, None) == ["sg:c:{*}:*:*:*:*"]
    assert admin.redis_patterns(None, "acme", None, None) == [
        "sg:c:{o:acme}:*:*:*:*",
        "sg:c:{u:acme:*}:*:*:*:*",
    ]
    assert admin.redis_patterns("chat", "acme", "ann", "gpt-4o") == ["sg:c:{u:acme:ann}:chat:*:gpt-4o:*"]
    assert admin.redis_patterns(None, None, "ann", None) == ["sg:c:{u:*:ann}:*:*:*:*"]


def test_patterns_escape_glob_characters() -> None:
    """Glob and separator characters in names are escaped, so a name cannot widen its pattern."""
    (pattern,) = admin.redis_patterns("f", "a*", "b?[x]", "m:1")
    assert pattern == "sg:c:{u:a%2A:b%3F%5Bx%5D}:f:*:m%3A1:*"


names = st.text(alphabet=st.sampled_from("ab:{}*?[]%-"), min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(
    org=names,
    user=names | st.none(),
    other_org=names,
    feature=st.sampled_from(["chat", "insights"]),
    model=names,
    scope=st.sampled_from(["org", "user"]),
)
def test_patterns_match_exactly_the_org_and_user_keys(
    org: str, user: str | None, other_org: str, feature: str, model: str, scope: Any
) -> None:
    """An org's patterns match its keys and never another org's; a user's match only that user's."""
    key = cache_key("chat", model, BODY, scope, RequestContext(org, user, feature), 3).key
    other = cache_key("chat", model, BODY, scope, RequestContext(other_org, user, feature), 3).key

    def matches(k: str, *selection: str | None) -> bool:
        return any(fnmatchcase(k, p) for p in admin.redis_patterns(*selection))

    assert matches(key, None, org, None, None)
    assert matches(key, feature, org, None, model)
    assert not matches(key, "templates", org, None, None)
    assert matches(other, None, org, None, None) == (other_org == org)
    if scope == "user" and user is not None:
        assert matches(key, None, org, user, None)
        assert matches(key, None, None, user, None)
        assert not matches(key, None, org, user + "x", None)
    if scope == "org":
        assert not matches(key, None, None, "ann", None)


# On gateways


def settings_for(data: Path, redis_url: str | None = None, **extra: Any) -> Settings:
    """A gateway over the in-process mock on SQLite, with Redis when given."""
    redis = {"redis": {"url": redis_url}} if redis_url else {}
    return mock_settings(data_dir=data, features=FEATURES, **redis, **extra)


async def ask(gateway: Gateway, context: RequestContext, **extra: Any) -> str:
    """Send the chat request for ``context`` and return the cache label."""
    reply = await gateway.send(gateway.new_call("chat", {**BODY, **extra}, context))
    return reply.headers["x-sluicegate-cache"]


def cache_of(gateway: Gateway) -> LayeredCache:
    """The gateway's cache."""
    assert gateway.cache is not None
    return gateway.cache


async def written(gateway: Gateway) -> None:
    """Wait for the SQL tier's queued writes."""
    sql = cache_of(gateway).sql
    assert sql is not None
    await sql.flush()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A started gateway without Redis: memory and SQLite tiers, the epoch-file bus."""
    async with create_gateway(settings_for(tmp_path / "data")) as gw:
        yield gw


async def test_stats_without_redis(gateway: Gateway) -> None:
    """Stats count hits and misses per feature, and report the memory and SQL tiers."""
    insights = RequestContext("acme", None, "insights")
    assert [await ask(gateway, insights) for _ in range(2)] == ["miss", "hit-memory"]
    await written(gateway)
    report = await admin.stats(cache_of(gateway))
    row = report["features"]["insights"]
    assert (row["misses"], row["hits_memory"], row["hit_ratio"]) == (1, 1, 0.5)
    assert (row["sql_entries"], row["stores"]) == (1, 1)
    assert report["features"]["all"]["upstream_calls"] == 1
    assert set(report["tiers"]) == {"memory", "sql"}
    assert report["tiers"]["memory"]["entries"] == 1
    assert report["tiers"]["sql"]["entries"] == 1
    assert report["tiers"]["sql"]["state"] == "closed"
    assert report["namespaces"] == {}


@pytest.mark.parametrize(
    ("match", "gone", "kept"),
    [
        ({"org": "acme"}, ["acme-insights", "acme-ann-chat"], ["globex-insights"]),
        ({"user": "ann"}, ["acme-ann-chat"], ["acme-insights", "globex-insights"]),
        ({"feature": "insights"}, ["acme-insights", "globex-insights"], ["acme-ann-chat"]),
        ({"org": "globex", "feature": "insights"}, ["globex-insights"], ["acme-insights", "acme-ann-chat"]),
    ],
)
async def test_invalidate_without_redis(
    gateway: Gateway, match: dict[str, str], gone: list[str], kept: list[str]
) -> None:
    """Invalidation deletes exactly the matching entries from memory and SQL."""
    contexts = {
        "acme-insights": RequestContext("acme", "bob", "insights"),
        "acme-ann-chat": RequestContext("acme", "ann", "chat"),
        "globex-insights": RequestContext("globex", "carol", "insights"),
    }
    for context in contexts.values():
        await ask(gateway, context)
    await written(gateway)
    result = await admin.invalidate(cache_of(gateway), **match)
    assert result["match"] == match
    assert result["deleted"] == {"memory": len(gone), "sql": len(gone)}
    assert result["processes_acknowledged"] == 1
    # reload() empties the in-process tier, so what is kept comes back from SQL.
    assert {name: await ask(gateway, contexts[name]) for name in gone + kept} == {
        **dict.fromkeys(gone, "miss"),
        **dict.fromkeys(kept, "hit-sql"),
    }


async def test_invalidate_by_key_and_tag_without_redis(gateway: Gateway) -> None:
    """A key or a tag deletes exactly its entries."""
    cache = cache_of(gateway)
    acme, globex = RequestContext("acme", None, "insights"), RequestContext("globex", None, "insights")
    await ask(gateway, acme, cache={"tags": ["q3"]})
    await ask(gateway, globex)
    await written(gateway)
    result = await admin.invalidate(cache, tag="q3")
    assert result["deleted"] == {"memory": 1, "sql": 1}
    globex_key = cache_key("chat", "gpt-4o-mini", BODY, "org", globex, 0).key
    result = await admin.invalidate(cache, key=globex_key)
    assert result["deleted"] == {"memory": 0, "sql": 1}
    assert [await ask(gateway, c) for c in (acme, globex)] == ["miss", "miss"]
    for not_an_entry in (globex_key + ":hits", globex_key + ":lock", "sg:c:*"):
        with pytest.raises(InvalidRequest) as refused:
            await admin.invalidate(cache, key=not_an_entry)
        assert refused.value.param == "key"


async def test_bump_without_redis_reaches_another_gateway(tmp_path: Path) -> None:
    """A bump raises the version, and a second gateway on the same data folder misses at once."""
    context = RequestContext("acme", None, "insights")
    settings = settings_for(tmp_path / "data")
    async with create_gateway(settings) as first, create_gateway(settings) as second:
        await ask(first, context)
        await written(first)
        assert await ask(second, context) == "hit-sql"
        assert await ask(second, context) == "hit-memory"
        result = await admin.bump(cache_of(first), "insights")
        assert result == {"feature": "insights", "namespace": 1, "processes_acknowledged": 1}
        assert await ask(second, context) == "miss"
        assert cache_of(second).namespaces == {"insights": 1}
        assert (await admin.bump(cache_of(second), "insights"))["namespace"] == 2
        assert await ask(first, context) == "miss"
        assert cache_of(first).namespaces == {"insights": 2}


# With the real Redis


def unique(name: str) -> str:
    """``name`` made unique to this test run, so keys never meet another test's."""
    return f"{name}-{secrets.token_hex(3)}"


@pytest.mark.redis
@pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")
async def test_stats_invalidate_and_bump_with_redis(redis_url: str, tmp_path: Path) -> None:
    """With Redis: stats report the Redis tier, deletions count it, every gateway acknowledges a bump."""
    org, other = unique("acme"), unique("globex")
    settings = settings_for(tmp_path / "data", redis_url)
    acme, globex = RequestContext(org, None, "insights"), RequestContext(other, None, "insights")
    async with create_gateway(settings) as first, create_gateway(settings) as second:
        await ask(first, acme, cache={"tags": [unique("q3")]})
        await ask(first, globex)
        assert await ask(second, acme) == "hit-redis"
        report = await admin.stats(cache_of(first))
        assert report["tiers"]["redis"]["entries"] >= 2
        assert report["tiers"]["redis"]["state"] == "closed"
        await written(first)
        result = await admin.invalidate(cache_of(second), org=org)
        assert result["deleted"] == {"memory": 1, "redis": 1, "sql": 1}
        assert result["processes_acknowledged"] >= 2
        assert await ask(first, acme) == "miss"  # first's memory was emptied by the bus
        assert await ask(second, globex) == "hit-redis"
        bumped = await admin.bump(cache_of(first), "insights")
        assert bumped["processes_acknowledged"] >= 2
        assert cache_of(second).namespaces["insights"] == bumped["namespace"]
        assert await ask(second, globex) == "miss"


@pytest.mark.redis
@pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")
async def test_invalidate_by_tag_with_redis(redis_url: str, tmp_path: Path) -> None:
    """A tag deletes its entries from Redis too, and only them."""
    tag, org = unique("q3"), unique("acme")
    async with create_gateway(settings_for(tmp_path / "data", redis_url)) as gateway:
        tagged = RequestContext(org, None, "insights")
        untagged = RequestContext(org, None, "templates")
        await ask(gateway, tagged, cache={"tags": [tag]})
        await ask(gateway, untagged)
        await written(gateway)
        result = await admin.invalidate(cache_of(gateway), tag=tag)
        assert result["deleted"] == {"memory": 1, "redis": 1, "sql": 1}
        assert await ask(gateway, untagged) == "hit-redis"
        assert await ask(gateway, tagged) == "miss"


@pytest.mark.redis
@pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")
async def test_a_tag_or_a_key_with_other_fields_deletes_what_matches_them_all(
    redis_url: str, tmp_path: Path
) -> None:
    """Every field must match, in Redis as in the other tiers: a tag and a user delete that
    user's tagged entry and not another user's; a key of another org is not deleted for this one."""
    tag, org = unique("shared"), unique("acme")
    ann, bob = RequestContext(org, unique("ann"), "chat"), RequestContext(org, unique("bob"), "chat")
    async with create_gateway(settings_for(tmp_path / "data", redis_url)) as gateway:
        await ask(gateway, ann, cache={"tags": [tag]})
        await ask(gateway, bob, cache={"tags": [tag]})
        await written(gateway)
        result = await admin.invalidate(cache_of(gateway), tag=tag, user=ann.user)
        assert result["deleted"] == {"memory": 1, "redis": 1, "sql": 1}
        bobs = cache_key("chat", "gpt-4o-mini", BODY, "user", bob, 0).key
        result = await admin.invalidate(cache_of(gateway), key=bobs, org=unique("globex"))
        assert result["deleted"] == {"memory": 0, "redis": 0, "sql": 0}
        assert await ask(gateway, bob) == "hit-redis"
        assert await ask(gateway, ann) == "miss"


@pytest.mark.redis
@pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")
@pytest.mark.parametrize(
    ("feature", "match", "count"),
    [
        ("chat", "user", 1),
        ("chat", "org", 1),
        ("insights", "org", 1),
        ("insights", "user", 0),
        ("templates", "org", 0),
    ],
    ids=["user-entry-by-user", "user-entry-by-org", "org-entry-by-org", "org-entry-by-user", "global-by-org"],
)
async def test_every_tier_deletes_by_scope(
    redis_url: str, tmp_path: Path, feature: str, match: str, count: int
) -> None:
    """Memory, Redis and SQL delete the same entries: an org or user selects its scope, not who asked."""
    org, user = unique("acme"), unique("ann")
    async with create_gateway(settings_for(tmp_path / "data", redis_url)) as gateway:
        context = RequestContext(org, user, feature)
        await ask(gateway, context)
        await written(gateway)
        selection = {"user": user} if match == "user" else {"org": org}
        result = await admin.invalidate(cache_of(gateway), **selection)
        assert result["deleted"] == {"memory": count, "redis": count, "sql": count}
        assert await ask(gateway, context) == ("miss" if count else "hit-redis")


async def test_stats_report_the_current_namespaces(tmp_path: Path) -> None:
    """Stats show the namespace versions in force, even in a process that served nothing since a bump."""
    settings = settings_for(tmp_path / "data")
    async with create_gateway(settings) as first, create_gateway(settings) as second:
        await admin.bump(cache_of(first), "insights")
        assert (await admin.stats(cache_of(second)))["namespaces"] == {"insights": 1}


async def test_unreachable_redis_is_a_503_naming_what_was_done(tmp_path: Path) -> None:
    """With Redis down, deletes and bumps still act on the other tiers, then raise a 503 that says so."""
    settings = settings_for(tmp_path / "data", "redis://127.0.0.1:1/0")
    async with create_gateway(settings) as gateway:
        context = RequestContext("acme", None, "insights")
        assert await ask(gateway, context) == "miss"
        await written(gateway)
        with pytest.raises(ServiceUnavailable) as deleting:
            await admin.invalidate(cache_of(gateway), org="acme")
        assert deleting.value.status_code == 503
        assert deleting.value.code == "cache_tier_unavailable"
        assert "entries in Redis were not deleted" in deleting.value.message
        assert "'memory': 1, 'sql': 1" in deleting.value.message
        assert await ask(gateway, context) == "miss"
        with pytest.raises(ServiceUnavailable) as bumping:
            await admin.bump(cache_of(gateway), "insights")
        assert "other processes were not told" in bumping.value.message
        report = await admin.stats(cache_of(gateway))
        assert report["namespaces"] == {"insights": 1}
        assert report["tiers"]["redis"]["entries"] is None
        assert report["tiers"]["redis"]["last_error"]


@pytest.mark.redis
async def test_an_answer_under_way_during_an_invalidation_is_not_stored(
    redis_url: str, tmp_path: Path
) -> None:
    """A call that started before an invalidation stores its answer in no tier (it may be what
    the invalidation meant to delete), in the process that deleted and in another one."""
    tag, org = unique("race"), unique("acme")
    slow = {"providers": {"upstream": {"kind": "mock", "mock": {"latency": 300}}}}
    async with (
        create_gateway(settings_for(tmp_path / "a", redis_url, **slow)) as deleter,
        create_gateway(settings_for(tmp_path / "b", redis_url, **slow)) as other,
    ):
        context = RequestContext(org, None, "insights")
        under_way = [
            asyncio.ensure_future(
                ask(
                    gateway,
                    context,
                    cache={"tags": [tag]},
                    messages=[{"role": "user", "content": f"race {n}"}],
                )
            )
            for n, gateway in ((0, deleter), (1, other))
        ]
        await asyncio.sleep(0.1)  # both calls are upstream now
        await admin.invalidate(cache_of(deleter), tag=tag)
        assert await asyncio.gather(*under_way) == ["miss", "miss"]
        await written(deleter)
        await written(other)
        for gateway in (deleter, other):
            assert await admin.invalidate(cache_of(gateway), tag=tag) == {
                "deleted": {"memory": 0, "redis": 0, "sql": 0},
                "match": {"tag": tag},
                "processes_acknowledged": 2,
            }
        for n in (0, 1):
            asked = {"cache": {"tags": [tag]}, "messages": [{"role": "user", "content": f"race {n}"}]}
            assert await ask(deleter, context, **asked) == "miss"


async def test_an_answer_under_way_during_an_invalidation_is_not_stored_without_redis(tmp_path: Path) -> None:
    """The same through the epoch file: the other process sees the invalidation as it stores."""
    slow = {"providers": {"upstream": {"kind": "mock", "mock": {"latency": 300}}}}
    async with (
        create_gateway(settings_for(tmp_path / "data", **slow)) as deleter,
        create_gateway(settings_for(tmp_path / "data", **slow)) as other,
    ):
        context = RequestContext("acme", None, "insights")
        asked = [
            {"cache": {"tags": ["race"]}, "messages": [{"role": "user", "content": f"race {n}"}]}
            for n in (0, 1)
        ]
        under_way = [
            asyncio.ensure_future(ask(g, context, **a)) for g, a in zip((deleter, other), asked, strict=True)
        ]
        await asyncio.sleep(0.1)
        await admin.invalidate(cache_of(deleter), tag="race")
        assert await asyncio.gather(*under_way) == ["miss", "miss"]
        await written(other)
        for gateway, a in zip((other, deleter), asked, strict=True):
            assert await ask(gateway, context, **a) == "miss"

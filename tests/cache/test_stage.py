"""The cache stage through the library face, over the in-process mock and the SQLite tier."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from sluicegate import AllUpstreamsFailed, Gateway, RequestContext, UpstreamError, create_gateway
from sluicegate.calls import Reply
from sluicegate.errors import BudgetExceeded
from sluicegate.testing import mock_settings
from sluicegate.upstream.mock import MockEngine

MESSAGES = [{"role": "user", "content": "Draft an OKR for the support team"}]
ACME_ANN = RequestContext("acme", "ann", "chat")


def features(**chat: Any) -> dict[str, Any]:
    """Features for the tests: `chat` user-scoped, `insights` org-scoped, `templates` global."""
    return {
        "chat": {"cache": {"scope": "user", "ttl_s": 3600, **chat}},
        "insights": {"cache": {"scope": "org", "ttl_s": 3600, "cache_temperature": True}},
        "templates": {"cache": {"scope": "global", "ttl_s": 3600}},
    }


def engine_of(gateway: Gateway) -> MockEngine:
    """The in-process mock behind the gateway."""
    engine: MockEngine = gateway.providers["upstream"].transport.engine  # type: ignore[attr-defined]
    return engine


def chat_calls(gateway: Gateway) -> int:
    """How many chat calls reached the upstream."""
    return sum(1 for c in engine_of(gateway).calls if c.path.endswith("/chat/completions"))


async def send(gateway: Gateway, context: RequestContext = ACME_ANN, **extra: Any) -> Reply:
    """Run one chat call through the pipeline and return the raw reply (headers included)."""
    headers = {k: extra.pop(k) for k in ("cache_control", "if_none_match") if k in extra}
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}
    return await gateway.send(gateway.new_call("chat", body, context, **headers))


async def read(reply: Reply) -> bytes:
    """The reply's body, or its whole stream."""
    if reply.stream is None:
        return reply.body
    return b"".join([blob async for blob in reply.stream])


async def only_in_memory(gateway: Gateway) -> None:
    """Leave the entries only in the in-process tier (the SQL tier's copy, written behind the
    answer, is deleted), so that a test may age them there alone."""
    assert gateway.cache is not None and gateway.cache.sql is not None
    await gateway.cache.sql.flush()
    await gateway.cache.sql.delete_where(org="acme")


@pytest.fixture
async def gw(tmp_path: Path) -> Any:
    """A started gateway with the test features and the in-process mock."""
    async with create_gateway(mock_settings(data_dir=tmp_path / "data", features=features())) as gateway:
        yield gateway


async def test_second_identical_request_is_a_memory_hit(gw: Gateway) -> None:
    """The first call is a miss that goes upstream; the same call again is answered in-process."""
    first = await send(gw)
    second = await send(gw)
    assert first.headers["x-sluicegate-cache"] == "miss"
    assert second.headers["x-sluicegate-cache"] == "hit-memory"
    assert second.body == first.body
    assert second.headers["etag"] == first.headers["etag"]
    assert "age" in second.headers
    assert second.headers["cache-control"].startswith("private, max-age=")
    assert chat_calls(gw) == 1


async def test_orgs_never_share_an_org_scoped_entry(gw: Gateway) -> None:
    """Org A's prompt is a miss for org B and a hit within org A."""
    a = RequestContext("org-a", "ann", "insights")
    b = RequestContext("org-b", "ann", "insights")
    assert (await send(gw, a)).headers["x-sluicegate-cache"] == "miss"
    assert (await send(gw, b)).headers["x-sluicegate-cache"] == "miss"
    assert (await send(gw, RequestContext("org-a", "bob", "insights"))).headers[
        "x-sluicegate-cache"
    ] == "hit-memory"
    assert chat_calls(gw) == 2


async def test_user_scoped_entry_is_never_served_to_another_user(gw: Gateway) -> None:
    """A user-scoped entry is a miss for another user of the same org, and for no user at all."""
    await send(gw, ACME_ANN)
    for other in (RequestContext("acme", "bob", "chat"), RequestContext("acme", None, "chat")):
        assert (await send(gw, other)).headers["x-sluicegate-cache"] == "miss"
    assert (await send(gw, ACME_ANN)).headers["x-sluicegate-cache"] == "hit-memory"


async def test_global_feature_is_shared_across_orgs(gw: Gateway) -> None:
    """A global feature's entry answers every org."""
    await send(gw, RequestContext("org-a", None, "templates"))
    reply = await send(gw, RequestContext("org-b", None, "templates"))
    assert reply.headers["x-sluicegate-cache"] == "hit-memory"


async def test_generation_parameters_split_entries(gw: Gateway) -> None:
    """A different generation parameter is a different entry; user and metadata are not."""
    await send(gw, max_tokens=50)
    assert (await send(gw, max_tokens=51)).headers["x-sluicegate-cache"] == "miss"
    assert (await send(gw, max_tokens=50, metadata={"x": "y"}, user="ann")).headers[
        "x-sluicegate-cache"
    ] == "hit-memory"


async def test_no_cache_skips_the_read_and_stores_the_fresh_answer(gw: Gateway) -> None:
    """Cache-Control: no-cache goes upstream, and the fresh answer is stored."""
    await send(gw)
    fresh = await send(gw, cache_control="no-cache")
    assert fresh.headers["x-sluicegate-cache"] == "miss"
    assert chat_calls(gw) == 2
    assert (await send(gw)).headers["x-sluicegate-cache"] == "hit-memory"


async def test_no_store_is_never_stored(gw: Gateway) -> None:
    """Cache-Control: no-store answers without storing, and says no-store."""
    reply = await send(gw, cache_control="no-store")
    assert reply.headers["cache-control"] == "no-store"
    assert (await send(gw)).headers["x-sluicegate-cache"] == "miss"


async def test_max_age_refuses_older_entries(gw: Gateway) -> None:
    """max-age=N accepts an entry at most N seconds old."""
    await send(gw)
    await only_in_memory(gw)
    assert gw.cache is not None
    for entry in gw.cache.memory.entries():  # type: ignore[union-attr]
        entry.created_at -= 30
    assert (await send(gw, cache_control="max-age=60")).headers["x-sluicegate-cache"] == "hit-memory"
    assert (await send(gw, cache_control="max-age=10")).headers["x-sluicegate-cache"] == "miss"


async def test_body_cache_object_is_removed_before_upstream(gw: Gateway) -> None:
    """The body's cache object sets ttl and tags and never reaches the upstream."""
    reply = await send(gw, cache={"ttl": 600, "tags": ["q3-report"]})
    assert reply.headers["x-sluicegate-cache"] == "miss"
    sent = engine_of(gw).calls[-1].body
    assert sent is not None
    assert "cache" not in sent
    assert gw.cache is not None
    (entry,) = gw.cache.memory.entries()  # type: ignore[union-attr]
    assert entry.tags == ("q3-report",)
    # The requested 600 s is the base; a cheap answer keeps the base (the multiplier's floor is 1).
    assert entry.ttl_s == 600


async def test_sampled_requests_bypass_unless_the_feature_allows_them(gw: Gateway) -> None:
    """temperature > 0 bypasses the cache for chat, but insights allows it."""
    assert (await send(gw, temperature=0.7)).headers["x-sluicegate-cache"] == "bypass"
    assert (await send(gw, temperature=0.7)).headers["x-sluicegate-cache"] == "bypass"
    insights = RequestContext("acme", None, "insights")
    await send(gw, insights, temperature=0.7)
    assert (await send(gw, insights, temperature=0.7)).headers["x-sluicegate-cache"] == "hit-memory"


async def test_truncated_answers_are_not_stored(gw: Gateway) -> None:
    """An answer cut by max_tokens (finish_reason: length) is not stored by default."""
    reply = await send(gw, max_tokens=2)
    assert orjson.loads(reply.body)["choices"][0]["finish_reason"] == "length"
    assert (await send(gw, max_tokens=2)).headers["x-sluicegate-cache"] == "miss"


async def test_tool_calls_are_not_stored_unless_allowed(gw: Gateway) -> None:
    """An answer that calls a tool is not stored by default."""
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    await send(gw, tools=tools, tool_choice="required")
    assert (await send(gw, tools=tools, tool_choice="required")).headers["x-sluicegate-cache"] == "miss"


async def test_errors_are_not_cached(gw: Gateway) -> None:
    """An upstream error is raised, not stored: the next call goes upstream again."""
    engine_of(gw).behaviour = engine_of(gw).behaviour.model_copy(
        update={"error_rate": 1.0, "error_status": 503}
    )
    with pytest.raises(AllUpstreamsFailed):
        await send(gw)
    engine_of(gw).behaviour = engine_of(gw).behaviour.model_copy(update={"error_rate": 0.0})
    assert (await send(gw)).headers["x-sluicegate-cache"] == "miss"


async def test_if_none_match_is_answered_304(gw: Gateway) -> None:
    """A request whose If-None-Match holds the entry's ETag gets a 304 without an upstream call."""
    first = await send(gw)
    reply = await send(gw, if_none_match=first.headers["etag"])
    assert reply.status == 304
    assert reply.headers["x-sluicegate-cache"] == "hit-browser-revalidated"
    assert chat_calls(gw) == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [("*", 304), ("W/{etag}", 304), ('"other", {etag}', 304), ('"x{etag}"', 200), ('"other"', 200)],
    ids=["any", "weak", "list", "a-longer-tag-holding-it", "another"],
)
async def test_if_none_match_compares_whole_tags(gw: Gateway, header: str, expected: int) -> None:
    """``*`` and any tag in the list that is the entry's ETag (weakly compared) get a 304; a
    tag that merely contains it does not."""
    etag = (await send(gw)).headers["etag"]
    assert (await send(gw, if_none_match=header.format(etag=etag))).status == expected


async def test_if_none_match_any_never_turns_a_miss_into_a_304(gw: Gateway) -> None:
    """``*`` on a request never seen before: the client has no copy, and the answer it paid for
    comes whole (a 304 left it with nothing); asked again, its entry answers 304."""
    first = await send(gw, if_none_match="*")
    assert (first.status, first.headers["x-sluicegate-cache"]) == (200, "miss") and first.body
    assert (await send(gw, if_none_match="*")).status == 304
    assert chat_calls(gw) == 1


async def test_every_answer_to_a_no_store_request_says_no_store(tmp_path: Path) -> None:
    """A 304, a stale answer and one that waited for another request's upstream call are no
    more for the browser to keep than a hit or a miss."""
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features=features(stale_while_revalidate_s=600, tiers=["browser", "memory", "sql"]),
        providers={"upstream": {"kind": "mock", "mock": {"latency": 200}}},
    )
    async with create_gateway(settings) as gateway:
        first = await send(gateway)
        assert first.headers["cache-control"].startswith("private, max-age=")
        revalidated = await send(gateway, if_none_match=first.headers["etag"], cache_control="no-store")
        assert (revalidated.status, revalidated.headers["cache-control"]) == (304, "no-store")
        await only_in_memory(gateway)
        assert gateway.cache is not None
        for entry in gateway.cache.memory.entries():  # type: ignore[union-attr]
            entry.expires_at = time.time() - 100
        stale = await send(gateway, cache_control="no-store")
        assert (stale.headers["x-sluicegate-cache"], stale.headers["cache-control"]) == ("stale", "no-store")
        other = RequestContext("acme", "bob", "chat")
        leader = asyncio.ensure_future(send(gateway, other))
        await asyncio.sleep(0.05)
        follower = await send(gateway, other, cache_control="no-store")
        assert (await leader).headers["cache-control"].startswith("private, max-age=")
        assert follower.headers["x-sluicegate-coalesced"] == "true"
        assert follower.headers["cache-control"] == "no-store"
        # streamed: a miss, and a request joining its stream
        carol = RequestContext("acme", "carol", "chat")
        live = await send(gateway, carol, stream=True, cache_control="no-store")
        joined = await send(gateway, carol, stream=True, cache_control="no-store")
        assert live.headers["cache-control"] == joined.headers["cache-control"] == "no-store"
        assert joined.headers["x-sluicegate-coalesced"] == "true"
        await read(live), await read(joined)


async def test_concurrent_identical_requests_make_one_upstream_call(tmp_path: Path) -> None:
    """100 identical concurrent requests make exactly one upstream call in one process."""
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features=features(),
        providers={"upstream": {"kind": "mock", "mock": {"latency": 100}}},
    )
    async with create_gateway(settings) as gateway:
        replies = await asyncio.gather(*(send(gateway) for _ in range(100)))
        assert chat_calls(gateway) == 1
        assert len({r.body for r in replies}) == 1
        # Each answer says it was a miss; all but the leader's say they waited for it.
        assert {r.headers["x-sluicegate-cache"] for r in replies} == {"miss"}
        assert sum(r.headers.get("x-sluicegate-coalesced") == "true" for r in replies) == 99


async def test_a_no_store_call_leads_no_identical_call(tmp_path: Path) -> None:
    """An identical call arriving while a no-store call is upstream makes its own call and
    stores its answer (before, it was handed the no-store answer, with an ETag and a browser
    lifetime, and nothing was stored)."""
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features=features(),
        providers={"upstream": {"kind": "mock", "mock": {"latency": 100}}},
    )
    async with create_gateway(settings) as gateway:

        async def later() -> Reply:
            await asyncio.sleep(0.02)
            return await send(gateway)

        private, shared = await asyncio.gather(send(gateway, cache_control="no-store"), later())
        assert private.headers["cache-control"] == "no-store"
        assert (
            shared.headers["x-sluicegate-cache"] == "miss" and "x-sluicegate-coalesced" not in shared.headers
        )
        assert chat_calls(gateway) == 2
        assert (await send(gateway)).headers["x-sluicegate-cache"] == "hit-memory"


async def test_concurrent_streams_share_one_upstream_stream(tmp_path: Path) -> None:
    """Identical concurrent streamed requests join the leader's stream as it arrives."""
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features=features(),
        providers={"upstream": {"kind": "mock", "mock": {"chunk_interval_ms": 5}}},
    )
    async with create_gateway(settings) as gateway:
        replies = await asyncio.gather(*(send(gateway, stream=True) for _ in range(20)))
        bodies = await asyncio.gather(*(read(r) for r in replies))
        assert chat_calls(gateway) == 1
        assert len(set(bodies)) == 1
        assert bodies[0].endswith(b"data: [DONE]\n\n")
        assert b'"usage":{' not in bodies[0]


async def test_a_stream_joining_before_the_first_byte_reads_the_live_stream(tmp_path: Path) -> None:
    """A streamed request that joins while the leader still waits for its first byte gets the
    chunks as they arrive, not the whole answer once the leader's stream has ended."""
    mock = {"ttft_ms": 300, "chunk_interval_ms": 40, "answer_words": 60}
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features=features(),
        providers={"upstream": {"kind": "mock", "mock": mock}},
    )
    async with create_gateway(settings) as gateway:

        async def first_and_last(delay: float) -> tuple[float, float]:
            await asyncio.sleep(delay)
            reply = await send(gateway, stream=True)
            assert reply.stream is not None
            times = [time.perf_counter() async for _ in reply.stream]
            return times[0], times[-1]

        (_, leader_done), (follower_first, _) = await asyncio.gather(first_and_last(0), first_and_last(0.1))
        assert chat_calls(gateway) == 1
        assert follower_first < leader_done - 0.2


async def test_stream_is_stored_and_replayed_with_its_chunks(gw: Gateway) -> None:
    """A completed stream is replayed with the same chunks; a plain request reads it as one body."""
    original = await read(await send(gw, stream=True))
    replay = await send(gw, stream=True)
    assert replay.headers["x-sluicegate-cache"] == "hit-memory"
    assert await read(replay) == original
    plain = await send(gw)
    assert plain.headers["x-sluicegate-cache"] == "hit-memory"
    content = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in original.split(b"\n\n")
        if line.startswith(b"data: {")
    )
    assert orjson.loads(plain.body)["choices"][0]["message"]["content"] == content
    assert chat_calls(gw) == 1


async def test_plain_answer_answers_a_stream_with_usage_when_asked(gw: Gateway) -> None:
    """A stored plain answer is replayed as a stream, with the usage chunk only when asked for."""
    plain = orjson.loads((await send(gw)).body)
    replay = await read(await send(gw, stream=True, stream_options={"include_usage": True}))
    events = [orjson.loads(e[6:]) for e in replay.split(b"\n\n") if e.startswith(b"data: {")]
    assert events[-1]["usage"] == plain["usage"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == plain["choices"][0]["message"]["content"]


async def test_cut_stream_is_not_stored(tmp_path: Path) -> None:
    """A stream the upstream cut is never stored: the next request goes upstream again."""
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features=features(),
        providers={"upstream": {"kind": "mock", "mock": {"drop_after_chunks": 3}}},
    )
    async with create_gateway(settings) as gateway:
        with pytest.raises(UpstreamError):
            await read(await send(gateway, stream=True))
        engine_of(gateway).behaviour = engine_of(gateway).behaviour.model_copy(
            update={"drop_after_chunks": None}
        )
        assert (await send(gateway, stream=True)).headers["x-sluicegate-cache"] == "miss"
        assert chat_calls(gateway) == 2


async def test_stale_if_error_serves_the_expired_entry(tmp_path: Path) -> None:
    """When the upstream fails, an entry within stale_if_error_s answers, marked stale."""
    settings = mock_settings(data_dir=tmp_path / "data", features=features(stale_if_error_s=600))
    async with create_gateway(settings) as gateway:
        first = await send(gateway)
        await only_in_memory(gateway)
        assert gateway.cache is not None
        for entry in gateway.cache.memory.entries():  # type: ignore[union-attr]
            entry.expires_at = time.time() - 100  # expired 100 s ago
        engine = engine_of(gateway)
        engine.behaviour = engine.behaviour.model_copy(update={"error_rate": 1.0})
        reply = await send(gateway)
        assert reply.headers["x-sluicegate-cache"] == "stale"
        assert reply.body == first.body


async def test_stale_while_revalidate_serves_stale_and_refreshes_once(tmp_path: Path) -> None:
    """An entry within stale_while_revalidate_s is served stale while one refresh runs."""
    settings = mock_settings(data_dir=tmp_path / "data", features=features(stale_while_revalidate_s=600))
    async with create_gateway(settings) as gateway:
        await send(gateway)
        await only_in_memory(gateway)
        assert gateway.cache is not None
        for entry in gateway.cache.memory.entries():  # type: ignore[union-attr]
            entry.expires_at = time.time() - 100  # expired 100 s ago
        labels = [(await send(gateway)).headers["x-sluicegate-cache"] for _ in range(5)]
        assert labels[0] == "stale"
        await asyncio.sleep(0.1)
        assert (await send(gateway)).headers["x-sluicegate-cache"] == "hit-memory"
        assert chat_calls(gateway) == 2


async def test_embeddings_are_cached(gw: Gateway) -> None:
    """Embeddings are cached like chat completions."""
    body = {"model": "text-embedding-3-small", "input": ["a", "b"]}
    first = await gw.send(gw.new_call("embeddings", dict(body), ACME_ANN))
    second = await gw.send(gw.new_call("embeddings", dict(body), ACME_ANN))
    assert (first.headers["x-sluicegate-cache"], second.headers["x-sluicegate-cache"]) == (
        "miss",
        "hit-memory",
    )
    assert first.body == second.body


async def test_sql_tier_answers_after_a_restart(tmp_path: Path) -> None:
    """A new gateway (an empty in-process tier) is answered from SQL, and a clean shutdown flushed it."""
    settings = mock_settings(data_dir=tmp_path / "data", features=features())
    async with create_gateway(settings) as gateway:
        first = await send(gateway)
    async with create_gateway(settings) as gateway:
        reply = await send(gateway)
        assert reply.headers["x-sluicegate-cache"] == "hit-sql"
        assert reply.body == first.body
        assert (await send(gateway)).headers["x-sluicegate-cache"] == "hit-memory"
        assert chat_calls(gateway) == 0


async def test_disabled_cache_leaves_no_trace(tmp_path: Path) -> None:
    """With cache.enabled false, replies carry no cache header and every call goes upstream."""
    settings = mock_settings(data_dir=tmp_path / "data", cache={"enabled": False})
    async with create_gateway(settings) as gateway:
        reply = await send(gateway, RequestContext("local"))
        await send(gateway, RequestContext("local"))
        assert "x-sluicegate-cache" not in reply.headers
        assert chat_calls(gateway) == 2


async def test_replay_at_the_original_pace(tmp_path: Path) -> None:
    """With replay_pace, a replayed stream keeps its chunks' original spacing."""
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features=features(replay_pace=True),
        providers={"upstream": {"kind": "mock", "mock": {"chunk_interval_ms": 30, "chunks": 5}}},
    )
    async with create_gateway(settings) as gateway:
        await read(await send(gateway, stream=True))
        replay = await send(gateway, stream=True)
        assert replay.headers["x-sluicegate-cache"] == "hit-memory"
        started = time.perf_counter()
        blobs = [blob async for blob in replay.stream]  # type: ignore[union-attr]
        elapsed = time.perf_counter() - started
        assert len(blobs) > 5  # one write per event, not one for the whole stream
        assert elapsed >= 0.1  # five 30 ms gaps, give or take the scheduler


async def test_refresh_ahead_refetches_a_popular_entry_before_it_expires(tmp_path: Path) -> None:
    """An entry with enough hits is fetched again shortly before it expires, once."""
    settings = mock_settings(data_dir=tmp_path / "data", features=features(refresh_ahead_hits=3))
    async with create_gateway(settings) as gateway:
        await send(gateway)
        assert gateway.cache is not None
        (entry,) = gateway.cache.memory.entries()  # type: ignore[union-attr]
        entry.created_at = time.time() - 3570  # an hour-old entry with 30 s left:
        entry.expires_at = time.time() + 30  # within the default 60 s refresh-ahead window
        for _ in range(6):
            assert (await send(gateway)).headers["x-sluicegate-cache"] == "hit-memory"
        await asyncio.sleep(0.1)
        assert chat_calls(gateway) == 2
        (fresh,) = gateway.cache.memory.entries()  # type: ignore[union-attr]
        assert fresh.expires_at > time.time() + 600
        assert fresh.hits >= 3  # popularity carries over


async def test_refresh_ahead_never_refreshes_an_entry_just_stored(tmp_path: Path) -> None:
    """With a TTL no longer than the refresh-ahead window, an entry is not refetched on every
    hit: the window is at most a quarter of the entry's lifetime."""
    settings = mock_settings(
        data_dir=tmp_path / "data", features=features(refresh_ahead_hits=2, ttl_s=60, cost_aware=False)
    )
    async with create_gateway(settings) as gateway:
        for _ in range(20):
            await send(gateway)
        await asyncio.sleep(0.1)
        assert chat_calls(gateway) == 1


async def test_followers_never_get_an_expired_entry_from_the_leaders_lookup(tmp_path: Path) -> None:
    """An entry too old to answer, found by the leader's lookup, is not handed to its followers."""
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features=features(),
        cache={"memory": {"enabled": False}},
        providers={"upstream": {"kind": "mock", "mock": {"latency": 50}}},
    )
    async with create_gateway(settings) as gateway:
        await send(gateway)
        cache = gateway.cache
        assert cache is not None
        assert cache.sql is not None
        await cache.sql._write_batch()  # the write-behind row, written now
        call = gateway.new_call("chat", {"model": "gpt-4o-mini", "messages": MESSAGES}, ACME_ANN)
        key = cache.key(call, cache.policy("chat"))
        entry = await cache.sql.get(key.key)
        assert entry is not None
        entry.expires_at = time.time() - 100  # expired, and the feature serves nothing stale
        await cache.sql.set(key.key, entry, 3600)
        replies = await asyncio.gather(*(send(gateway) for _ in range(20)))
        assert {r.headers["x-sluicegate-cache"] for r in replies} == {"miss"}
        assert chat_calls(gateway) == 2


async def test_a_leaders_own_budget_refusal_is_not_handed_to_its_followers(tmp_path: Path) -> None:
    """Ann and Bob ask the same org-scoped question at once; Ann's own budget refuses her, and
    Bob, who waited for her call, goes upstream on his own instead of getting her refusal."""
    budgets = [{"org": "acme", "limit_usd": "1"}, {"org": "acme", "user": "ann", "limit_usd": "0.000001"}]
    settings = mock_settings(data_dir=tmp_path / "data", features=features(), budgets={"orgs": budgets})
    async with create_gateway(settings) as gateway:
        ann, bob = RequestContext("acme", "ann", "insights"), RequestContext("acme", "bob", "insights")
        outcomes = await asyncio.gather(send(gateway, ann), send(gateway, bob), return_exceptions=True)
        assert isinstance(outcomes[0], BudgetExceeded) and "'ann'" in outcomes[0].message
        assert isinstance(outcomes[1], Reply) and outcomes[1].headers["x-sluicegate-cache"] == "miss"
        assert chat_calls(gateway) == 1


def clamping_settings(tmp_path: Path, **mock: Any) -> Any:
    """Ann's own budget clamps her max_tokens; Bob has none. `insights` is org-scoped."""
    budgets = [{"org": "acme", "limit_usd": "1"}, {"org": "acme", "user": "ann", "limit_usd": "0.00002"}]
    return mock_settings(
        data_dir=tmp_path / "data",
        features=features(),
        budgets={"orgs": budgets, "throttle_at": 1.0},
        providers={"upstream": {"kind": "mock", "mock": {"answer_words": 60, **mock}}},
    )


async def test_a_streamed_answer_clamped_for_its_leader_is_not_handed_to_another(tmp_path: Path) -> None:
    ann, bob = RequestContext("acme", "ann", "insights"), RequestContext("acme", "bob", "insights")
    async with create_gateway(clamping_settings(tmp_path, chunk_interval_ms=10)) as gateway:
        replies = await asyncio.gather(send(gateway, ann, stream=True), send(gateway, bob, stream=True))
        ann_text, bob_text = await asyncio.gather(*(read(r) for r in replies))
        assert "x-sluicegate-coalesced" not in replies[1].headers
        assert b'"finish_reason":"length"' in ann_text and b'"finish_reason":"stop"' in bob_text


async def test_a_stream_that_goes_alone_gets_no_usage_it_did_not_ask_for(tmp_path: Path) -> None:
    """Bob's stream waited for Ann's plain call, whose clamped answer was hers alone."""
    ann, bob = RequestContext("acme", "ann", "insights"), RequestContext("acme", "bob", "insights")
    async with create_gateway(clamping_settings(tmp_path, latency=100)) as gateway:
        replies = await asyncio.gather(send(gateway, ann), send(gateway, bob, stream=True))
        streamed = await read(replies[1])
        assert streamed.endswith(b"data: [DONE]\n\n") and b'"usage":{' not in streamed


async def test_a_stream_whose_leader_left_before_its_first_byte_goes_on_for_the_follower(
    tmp_path: Path,
) -> None:
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features=features(),
        providers={"upstream": {"kind": "mock", "mock": {"ttft_ms": 200, "chunk_interval_ms": 5}}},
    )
    async with create_gateway(settings) as gateway:
        leader = asyncio.ensure_future(send(gateway, stream=True))
        await asyncio.sleep(0.05)
        follower = asyncio.ensure_future(send(gateway, stream=True))
        first = await leader
        assert first.stream is not None
        await first.stream.aclose()  # its client left before reading anything
        streamed = await read(await follower)
        assert streamed.endswith(b"data: [DONE]\n\n") and chat_calls(gateway) == 1


async def test_a_finished_stream_the_feature_may_not_store_is_not_handed_to_a_later_request(
    tmp_path: Path,
) -> None:
    """A tool call (not stored by default) streamed to one caller: the same request right after
    it ended goes upstream, instead of joining the finished stream."""
    settings = mock_settings(data_dir=tmp_path / "data", features=features())
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    async with create_gateway(settings) as gateway:
        await read(await send(gateway, stream=True, tools=tools, tool_choice="required"))
        again = await send(gateway, stream=True, tools=tools, tool_choice="required")
        assert "x-sluicegate-coalesced" not in again.headers
        assert again.headers["x-sluicegate-cache"] == "miss"
        await read(again)
        assert chat_calls(gateway) == 2

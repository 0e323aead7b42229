"""The library face: the same pipeline in-process, with no HTTP hop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sluicegate import (
    AllUpstreamsFailed,
    Gateway,
    InvalidRequest,
    MockBehaviour,
    ModelNotFound,
    RequestContext,
    ServiceUnavailable,
    Settings,
    UpstreamError,
    UpstreamStreamBroken,
    create_gateway,
)
from sluicegate.store.db import create_engine
from sluicegate.testing import mock_settings

MESSAGES = [{"role": "user", "content": "Draft an OKR for support"}]


async def test_chat(gateway: Gateway) -> None:
    """chat() returns OpenAI's completion object, and the call is counted."""
    answer = await gateway.chat(model="gpt-4o-mini", messages=MESSAGES, temperature=0)
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"]
    assert gateway.counters.requests == 1
    assert gateway.counters.prompt_tokens == answer["usage"]["prompt_tokens"]


async def test_chat_is_deterministic(gateway: Gateway) -> None:
    """The mock answers the same prompt the same way."""
    first = await gateway.chat(model="gpt-4o-mini", messages=MESSAGES)
    second = await gateway.chat(model="fast", messages=MESSAGES)
    assert first["choices"] == second["choices"]


async def test_stream_chat(gateway: Gateway) -> None:
    """stream_chat() yields chunks whose deltas make up the whole answer, without the usage chunk."""
    whole = await gateway.chat(model="gpt-4o-mini", messages=MESSAGES)
    # no_cache: read the upstream again rather than the entry the first call stored.
    fresh = {"no_cache": True}
    chunks = [c async for c in gateway.stream_chat(model="gpt-4o-mini", messages=MESSAGES, cache=fresh)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert all(c["choices"] for c in chunks)
    assert gateway.counters.completion_tokens == 2 * whole["usage"]["completion_tokens"]


async def test_embed(gateway: Gateway) -> None:
    """embed() returns one vector per input."""
    result = await gateway.embed(model="text-embedding-3-small", input=["a", "b", "c"])
    assert [d["index"] for d in result["data"]] == [0, 1, 2]


async def test_errors_are_raised(gateway: Gateway) -> None:
    """Library calls raise the same errors the server maps to statuses."""
    with pytest.raises(ModelNotFound):
        await gateway.chat(model="nope", messages=MESSAGES)
    with pytest.raises(InvalidRequest):
        await gateway.chat(model="gpt-4o-mini", messages=[])
    assert gateway.counters.requests == 0


async def test_upstream_error_is_raised_and_counted(tmp_path: object) -> None:
    """An upstream failure, once retried, raises AllUpstreamsFailed with the upstream's error
    as its cause, and is recorded."""
    settings = mock_settings(
        providers={"upstream": {"kind": "mock", "mock": {"error_rate": 1, "error_status": 400}}}
    )
    async with create_gateway(settings) as gw:
        with pytest.raises(UpstreamError) as refused:
            await gw.chat(model="gpt-4o-mini", messages=MESSAGES)
        assert refused.value.status_code == 400  # the upstream's answer on purpose: passed on
        gw.providers["upstream"].transport.engine.behaviour = MockBehaviour(  # type: ignore[attr-defined]
            error_rate=1, error_status=503
        )
        with pytest.raises(AllUpstreamsFailed) as caught:
            await gw.chat(model="gpt-4o-mini", messages=MESSAGES)
        assert caught.value.status_code == 503
        assert isinstance(caught.value.__cause__, UpstreamError)
        assert caught.value.__cause__.status_code == 503
        assert gw.counters.errors == {"400": 1, "all_upstreams_failed": 1}


async def test_broken_stream_raises() -> None:
    """A stream cut short raises UpstreamStreamBroken after the chunks that did arrive."""
    settings = mock_settings(providers={"upstream": {"kind": "mock", "mock": {"drop_after_chunks": 2}}})
    async with create_gateway(settings) as gw:
        seen = []
        with pytest.raises(UpstreamStreamBroken):
            async for chunk in gw.stream_chat(model="gpt-4o-mini", messages=MESSAGES):
                seen.append(chunk)
        assert len(seen) == 2
        assert gw.counters.errors == {"upstream_stream_broken": 1}


async def test_context_is_recorded(settings: Settings) -> None:
    """The context given to a call reaches the recorded event."""
    events = []

    class Sink:
        def record(self, event: object) -> None:
            events.append(event)

    async with create_gateway(settings, sink=Sink()) as gw:
        ctx = RequestContext("acme", "ann", "chat", "k1")
        await gw.chat(model="gpt-4o-mini", messages=MESSAGES, context=ctx)
    (event,) = events
    assert (event.org, event.user, event.feature, event.model, event.status) == (
        "acme",
        "ann",
        "chat",
        "gpt-4o-mini",
        200,
    )
    assert event.usage is not None and event.usage.total_tokens > 0


async def test_request_ids_are_unique_across_gateways(settings: Settings) -> None:
    """Each gateway (one per worker) has its own id prefix; ids never repeat."""
    first, second = create_gateway(settings), create_gateway(settings)
    ids = [g.new_request_id() for g in (first, second) for _ in range(1000)]
    assert len(set(ids)) == 2000
    assert all(i.startswith("req_") and len(i) == 28 for i in ids)
    await first.aclose()
    await second.aclose()


async def test_the_body_names_the_feature_and_user_as_over_http(gateway: Gateway) -> None:
    """Without a context, metadata.feature, metadata.user and user say whom a call is for, as
    they do over HTTP: a user-scoped feature keeps one user's answer from another."""
    asked = {"model": "gpt-4o-mini", "messages": MESSAGES}
    ann = gateway.new_call("chat", {**asked, "metadata": {"feature": "chat", "user": "ann"}})
    bob = gateway.new_call("chat", {**asked, "user": "bob", "metadata": {"feature": "chat"}})
    assert (ann.context.feature, ann.context.user, bob.context.user) == ("chat", "ann", "bob")
    assert ann.context.org == bob.context.org == gateway.settings.auth.dev_org
    first, second = await gateway.send(ann), await gateway.send(bob)
    assert (first.headers["x-sluicegate-cache"], second.headers["x-sluicegate-cache"]) == ("miss", "miss")


async def test_an_unknown_feature_is_refused(gateway: Gateway) -> None:
    asked = {"model": "gpt-4o-mini", "messages": MESSAGES}
    with pytest.raises(InvalidRequest) as named:
        gateway.new_call("chat", {**asked, "metadata": {"feature": "nope"}})
    assert named.value.code == "unknown_feature"
    with pytest.raises(InvalidRequest):
        gateway.new_call("chat", asked, RequestContext("acme", "ann", "nope"))


@pytest.mark.parametrize(
    "context",
    [
        RequestContext("acme", "u" * 129, "chat"),
        RequestContext("acme", "a\x00b", "chat"),
        RequestContext("a/b", None, "chat"),
        RequestContext("", None, "chat"),
    ],
)
async def test_a_context_the_stores_cannot_hold_is_refused(gateway: Gateway, context: RequestContext) -> None:
    """As over HTTP: a 400, not a call whose ledger row the database then refuses."""
    with pytest.raises(InvalidRequest):
        gateway.new_call("chat", {"model": "gpt-4o-mini", "messages": MESSAGES}, context)


async def test_a_name_with_a_joiner_is_a_name(gateway: Gateway) -> None:
    """Zero-width joiners belong to names and emoji: only control characters are refused."""
    call = gateway.new_call(
        "chat",
        {
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "user": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \U0001f469\u200d\U0001f4bb",
        },
    )
    assert call.context.user is not None and "\u200d" in call.context.user


async def test_closing_waits_for_the_calls_under_way_then_refuses_new_ones(tmp_path: Path) -> None:
    """A library caller closing its gateway with calls in flight: they finish as they would
    have (their ledger rows from their usage, not 'interrupted'), then calls are refused."""
    settings = mock_settings(
        data_dir=tmp_path, providers={"upstream": {"kind": "mock", "mock": {"latency": {"ms": 300}}}}
    )
    gateway = create_gateway(settings)
    await gateway.start()
    made_before = gateway.new_call("embeddings", {"model": "text-embedding-3-small", "input": "made"})
    calls = [
        asyncio.create_task(gateway.embed(model="text-embedding-3-small", input=f"hello {i}"))
        for i in range(5)
    ]
    await asyncio.sleep(0.1)
    await gateway.aclose()
    assert all(task.done() and task.exception() is None for task in calls)
    with pytest.raises(ServiceUnavailable) as refused:
        await gateway.embed(model="text-embedding-3-small", input="late")
    assert refused.value.code == "gateway_closed"
    with pytest.raises(ServiceUnavailable, match="the gateway is closed"):
        await gateway.send(made_before)  # made before the close, sent after it
    engine = create_engine(settings.database.url)
    try:
        async with engine.connect() as connection:
            rows = (await connection.exec_driver_sql("SELECT priced_from, status FROM usage_ledger")).all()
    finally:
        await engine.dispose()
    assert len(rows) == 5 and {tuple(row) for row in rows} == {("usage", 200)}


async def test_embed_and_chat_take_any_sequences(gateway: Gateway) -> None:
    """Tuples of strings, token arrays, and message lists typed as the openai SDK types them."""
    for given in (("a", "b"), [1, 2, 3], [(1, 2), (3,)]):
        reply = await gateway.embed(model="text-embedding-3-small", input=given)
        assert len(reply["data"]) == (1 if given == [1, 2, 3] else 2)
    answer = await gateway.chat(model="gpt-4o-mini", messages=tuple(MESSAGES))
    assert answer["object"] == "chat.completion"


async def test_a_database_that_is_not_there_fails_the_start_with_a_sluicegate_error(tmp_path: Path) -> None:
    """Not SQLAlchemy's own exception: a `ServiceUnavailable` naming the database (no password)."""
    settings = mock_settings(
        data_dir=tmp_path,
        database={"url": "postgresql+asyncpg://postgres:secret@127.0.0.1:5432/no_such_db_sg"},
    )
    gateway = create_gateway(settings)
    try:
        with pytest.raises(
            ServiceUnavailable, match="the database is unreachable, or could not be migrated"
        ) as refused:
            await gateway.start()
    finally:
        await gateway.aclose()
    assert "no_such_db_sg" in refused.value.message and "secret" not in refused.value.message


@pytest.mark.parametrize("given", [123, None, ["a", None], [1.5], {"a": 1}, b"ab"])
async def test_a_library_embed_of_a_bad_input_is_an_invalid_request(gateway: Gateway, given: object) -> None:
    """Not a TypeError, nor a dict's keys or bytes' values embedded silently."""
    with pytest.raises(InvalidRequest):
        await gateway.embed(model="text-embedding-3-small", input=given)  # type: ignore[arg-type]


async def test_a_library_chat_without_messages_is_an_invalid_request(gateway: Gateway) -> None:
    with pytest.raises(InvalidRequest):
        await gateway.chat(model="gpt-4o-mini", messages=None)  # type: ignore[arg-type]

"""The usage ledger through the gateway: attempts with their cost, cache answers with what
they saved, streams from their usage chunk or an estimate, failures unbilled."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from sluicegate import RequestContext, create_gateway
from sluicegate.accounting.ledger import COLUMNS, Ledger, Row
from sluicegate.accounting.pricing import PriceBook
from sluicegate.calls import Usage
from sluicegate.config import MockBehaviour, Settings
from sluicegate.errors import AllUpstreamsFailed, UpstreamTimeout
from sluicegate.gateway import Gateway
from sluicegate.store.tables import usage_ledger
from sluicegate.testing import mock_settings
from sluicegate.upstream.transport import translate
from tests.conftest import settled_usage

CONTEXT = RequestContext("acme", "ann", "insights", "key1")
DEFAULT = RequestContext("acme", "ann", "default", "key1")


async def ledger_rows(gateway: Gateway) -> list[dict[str, Any]]:
    assert gateway.outbox is not None
    await gateway.outbox.flush()
    async with gateway.engine.connect() as connection:
        result = await connection.execute(select(usage_ledger).order_by(usage_ledger.c.id))
        return [dict(row._mapping) for row in result]


async def acme_spent_and_rows(gateway: Gateway) -> tuple[Any, list[dict[str, Any]]]:
    """The acme budget's usage once every call settled, and the ledger's rows."""
    budget = gateway.budgets.budget_for("acme")
    assert budget is not None
    return await settled_usage(gateway, budget), await ledger_rows(gateway)


def body(content: str = "Draft three OKRs", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


async def test_a_miss_is_billed_and_a_hit_records_what_it_saved(tmp_path: Path) -> None:
    async with create_gateway(mock_settings(data_dir=tmp_path)) as gateway:
        first = await gateway.send(gateway.new_call("chat", body(), CONTEXT))
        await gateway.send(gateway.new_call("chat", body(), CONTEXT))
        rows = await ledger_rows(gateway)
    assert first.usage is not None
    expected = gateway.prices.cost_micro(gateway.catalog.resolve("gpt-4o-mini"), first.usage)
    assert expected is not None and expected > 0
    miss, hit = rows
    assert (miss["attempt"], miss["cache"], miss["status"], miss["priced_from"]) == (1, "miss", 200, "usage")
    assert (miss["org"], miss["user"], miss["key_id"], miss["feature"]) == ("acme", "ann", "key1", "insights")
    assert (miss["prompt_tokens"], miss["completion_tokens"]) == (
        first.usage.prompt_tokens,
        first.usage.completion_tokens,
    )
    assert (miss["cost_micro"], miss["saved_micro"]) == (expected, 0)
    assert (hit["attempt"], hit["cache"], hit["cost_micro"], hit["saved_micro"]) == (
        0,
        "hit-memory",
        0,
        expected,
    )


async def test_bypassed_and_streamed_calls_are_billed(tmp_path: Path) -> None:
    async with create_gateway(mock_settings(data_dir=tmp_path)) as gateway:
        chat = RequestContext("acme", "ann", "chat")  # chat caches no sampled answers
        await gateway.send(gateway.new_call("chat", body("hot", temperature=0.9), chat))
        reply = await gateway.send(gateway.new_call("chat", body("stream me", stream=True), CONTEXT))
        assert reply.stream is not None
        async for _ in reply.stream:
            pass
        await reply.stream.aclose()
        rows = await ledger_rows(gateway)
    bypass, stream = rows
    assert (bypass["cache"], bypass["priced_from"]) == ("bypass", "usage") and bypass["cost_micro"] > 0
    assert (stream["cache"], stream["status"], stream["priced_from"]) == ("miss", 200, "usage")
    assert stream["completion_tokens"] > 0 and stream["cost_micro"] > 0


async def test_a_stream_without_usage_is_billed_by_estimate(tmp_path: Path) -> None:
    settings = mock_settings(
        data_dir=tmp_path,
        cache={"enabled": False},
        providers={"upstream": {"kind": "mock", "mock": {"report_usage": False}}},
    )
    async with create_gateway(settings) as gateway:
        reply = await gateway.send(gateway.new_call("chat", body("no usage please", stream=True), CONTEXT))
        assert reply.stream is not None
        async for _ in reply.stream:
            pass
        await reply.stream.aclose()
        (row,) = await ledger_rows(gateway)
    assert (row["cache"], row["priced_from"], row["status"]) == ("none", "estimate", 200)
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["cost_micro"] > 0


async def test_a_plain_answer_without_usage_is_billed_for_its_text_too(tmp_path: Path) -> None:
    """No usage from the upstream: the prompt and the answer's text are estimated, and the
    budget settles at what the ledger records."""
    settings = mock_settings(
        data_dir=tmp_path,
        cache={"enabled": False},
        budgets={"orgs": [{"org": "acme", "limit_usd": "5"}]},
        providers={"upstream": {"kind": "mock", "mock": {"report_usage": False, "answer_words": 80}}},
    )
    async with create_gateway(settings) as gateway:
        await gateway.send(gateway.new_call("chat", body("no usage please", max_tokens=500), CONTEXT))
        usage, (row,) = await acme_spent_and_rows(gateway)
    assert (row["priced_from"], row["status"]) == ("estimate", 200)
    assert row["completion_tokens"] >= 60  # 80 words, about 4 characters a token
    assert (usage.spent_micro, usage.reserved_micro) == (row["cost_micro"], 0)


async def test_an_upstream_failure_is_recorded_unbilled(tmp_path: Path) -> None:
    settings = mock_settings(
        data_dir=tmp_path,
        providers={"upstream": {"kind": "mock", "mock": MockBehaviour(error_rate=1.0, error_status=503)}},
        resilience={"retry": {"max_attempts": 2, "base_ms": 1}},
    )
    async with create_gateway(settings) as gateway:
        with pytest.raises(AllUpstreamsFailed):
            await gateway.send(gateway.new_call("chat", body(), CONTEXT))
        rows = await ledger_rows(gateway)
    # One row per attempt: the first and its retry.
    assert [(r["attempt"], r["status"], r["cost_micro"], r["priced_from"], r["cache"]) for r in rows] == [
        (1, 503, 0, "none", "miss"),
        (2, 503, 0, "none", "miss"),
    ]


async def test_a_call_that_timed_out_upstream_is_billed_by_estimate(tmp_path: Path) -> None:
    """The upstream had the prompt when the gateway stopped waiting: each attempt that timed out
    is billed at its prompt's estimate, and the budget settles at the same cost (every attempt's)."""
    settings = mock_settings(
        data_dir=tmp_path,
        cache={"enabled": False},
        budgets={"orgs": [{"org": "acme", "limit_usd": "5"}]},
        providers={"upstream": {"kind": "mock", "mock": {"latency": 2000}, "timeouts": {"first_byte": 0.05}}},
        resilience={"retry": {"max_attempts": 2, "base_ms": 1}},
    )
    async with create_gateway(settings) as gateway:
        with pytest.raises(AllUpstreamsFailed):
            await gateway.send(gateway.new_call("chat", body(max_tokens=100), CONTEXT))
        usage, rows = await acme_spent_and_rows(gateway)
    assert [(r["attempt"], r["status"], r["priced_from"]) for r in rows] == [
        (1, 504, "estimate"),
        (2, 504, "estimate"),
    ]
    assert all(r["prompt_tokens"] > 0 and r["cost_micro"] > 0 for r in rows)
    assert (usage.spent_micro, usage.reserved_micro) == (sum(r["cost_micro"] for r in rows), 0)


async def test_an_answer_after_timeouts_settles_every_attempt_as_the_ledger(tmp_path: Path) -> None:
    """The asked model times out twice, its fallback answers: the budget settles the three
    ledger rows' cost, not the answer's alone."""
    slow = {"kind": "mock", "mock": {"latency": 2000}, "timeouts": {"first_byte": 0.05}}
    settings = mock_settings(
        data_dir=tmp_path,
        cache={"enabled": False},
        budgets={"orgs": [{"org": "acme", "limit_usd": "5"}]},
        providers={"slow": slow, "quick": {"kind": "mock"}},
        models={
            "gpt-4o-mini": {"provider": "slow", "fallbacks": ["gpt-4o"]},
            "gpt-4o": {"provider": "quick"},
        },
        resilience={"retry": {"max_attempts": 2, "base_ms": 1}},
    )
    async with create_gateway(settings) as gateway:
        await gateway.send(gateway.new_call("chat", body(max_tokens=100), CONTEXT))
        usage, rows = await acme_spent_and_rows(gateway)
    assert [(r["status"], r["priced_from"], r["model"]) for r in rows] == [
        (504, "estimate", "gpt-4o-mini"),
        (504, "estimate", "gpt-4o-mini"),
        (200, "usage", "gpt-4o"),
    ]
    assert (usage.spent_micro, usage.reserved_micro) == (sum(r["cost_micro"] for r in rows), 0)


def test_a_timeout_before_the_request_left_is_not_billed() -> None:
    """No connection was made (or the deadline passed first): the provider never had the prompt."""
    refused = translate(aiohttp.ConnectionTimeoutError("connect"), "provider p")
    read = translate(aiohttp.SocketTimeoutError("read"), "provider p")
    assert isinstance(refused, UpstreamTimeout) and not refused.sent
    assert isinstance(read, UpstreamTimeout) and read.sent


async def test_the_ledger_can_be_switched_off(tmp_path: Path) -> None:
    settings = mock_settings(data_dir=tmp_path, ledger={"enabled": False})
    async with create_gateway(settings) as gateway:
        await gateway.send(gateway.new_call("chat", body(), CONTEXT))
        assert gateway.outbox is None and gateway.ledger is None


class _Relay:
    usage: Usage | None = None
    done = False
    error = None
    first_chunk_at = None
    deltas = 12


def test_a_client_that_left_mid_stream_is_billed_for_what_was_produced(settings: Settings) -> None:
    rows: list[Row] = []

    class Sink:
        def add(self, row: Row) -> None:
            rows.append(row)

    book = PriceBook.from_settings(settings)
    ledger = Ledger(book, Sink(), clock=lambda: 1.0)
    from sluicegate.gateway import create_gateway as _make  # the call needs a resolved route

    gateway = _make(settings)
    call = gateway.new_call("chat", body("long answer", stream=True), CONTEXT)
    ledger.stream_closed(call, _Relay(), call.started)  # type: ignore[arg-type]
    (row,) = rows
    values = dict(zip(COLUMNS, row, strict=True))
    assert (values["status"], values["priced_from"], values["completion_tokens"]) == (499, "estimate", 12)
    assert values["cost_micro"] > 0


async def test_a_call_cancelled_while_upstream_is_billed_by_estimate(tmp_path: Path) -> None:
    settings = mock_settings(
        data_dir=tmp_path,
        cache={"enabled": False},
        providers={"upstream": {"kind": "mock", "mock": {"latency": 5000}}},
    )
    async with create_gateway(settings) as gateway:
        task = asyncio.create_task(gateway.send(gateway.new_call("chat", body(max_tokens=100), CONTEXT)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (row,) = await ledger_rows(gateway)
    assert (row["status"], row["priced_from"]) == (499, "estimate")
    assert row["prompt_tokens"] > 0 and row["cost_micro"] > 0


def test_a_pending_row_is_priced_at_the_prompt_and_the_completion_limit(settings: Settings) -> None:
    begun: list[Row] = []

    class Sink:
        def begin(self, row: Row) -> None:
            begun.append(row)

        def add(self, row: Row) -> None:
            raise AssertionError("no outcome yet")

        def drop(self, request_id: str, attempt: int) -> None:
            raise AssertionError("not dropped")

    gateway = create_gateway(settings)
    ledger = Ledger(PriceBook.from_settings(settings), Sink())
    call = gateway.new_call("chat", body(max_tokens=100, n=2), CONTEXT)
    ledger.begin(call)
    values = dict(zip(COLUMNS, begun[0], strict=True))
    assert (values["status"], values["priced_from"], values["completion_tokens"]) == (0, "pending", 200)
    # gpt-4o-mini: $0.60 per million output tokens, so 200 tokens are at least 120 µUSD
    assert values["cost_micro"] >= 120


async def test_a_stream_joined_in_flight_records_what_it_saved(tmp_path: Path) -> None:
    """Followers that join a streamed call once its chunks flow read the leader's chunks: each
    one's row has the tokens and the cost it saved, as a coalesced plain answer's has."""
    slow = {"upstream": {"kind": "mock", "mock": {"chunk_interval_ms": 5}}}
    async with create_gateway(mock_settings(data_dir=tmp_path, providers=slow)) as gateway:

        async def read(first_only: bool = False) -> Any:
            reply = await gateway.send(gateway.new_call("chat", body("together", stream=True), CONTEXT))
            assert reply.stream is not None
            chunks = aiter(reply.stream)
            await anext(chunks)
            if first_only:
                return reply, chunks
            async for _ in chunks:
                pass
            await reply.stream.aclose()
            return reply.headers

        leader, rest = await read(first_only=True)  # the leader's stream flows
        followers = await asyncio.gather(read(), read())
        assert all(h["x-sluicegate-coalesced"] == "true" for h in followers)
        async for _ in rest:
            pass
        await leader.stream.aclose()
        rows = await ledger_rows(gateway)
    coalesced = [r for r in rows if r["cache"] == "coalesced"]
    (miss,) = [r for r in rows if r["cache"] == "miss"]
    assert len(coalesced) == 2
    for row in coalesced:
        assert row["completion_tokens"] == miss["completion_tokens"] > 0
        assert row["saved_micro"] == miss["cost_micro"] > 0


async def test_a_stale_answer_after_every_fallback_failed_is_the_asked_models(tmp_path: Path) -> None:
    """The ledger records a stale answer under the model that made it, with what that model's
    answer cost, not under the last fallback tried."""
    models = {
        "big": {
            "provider": "a",
            "price": {"input_per_mtok": "10", "output_per_mtok": "40"},
            "fallbacks": ["small"],
        },
        "small": {"provider": "b", "price": {"input_per_mtok": "0.1", "output_per_mtok": "0.4"}},
    }
    settings = mock_settings(
        data_dir=tmp_path,
        models=models,
        providers={"a": {"kind": "mock"}, "b": {"kind": "mock"}},
        features={
            "default": {
                "cache": {"ttl_s": 3600, "stale_if_error_s": 600, "cost_aware": False, "tiers": ["memory"]}
            }
        },
        resilience={"retry": {"max_attempts": 1}},
    )
    async with create_gateway(settings) as gateway:
        first = await gateway.send(gateway.new_call("chat", {**body("stale me"), "model": "big"}, DEFAULT))
        assert first.headers["x-sluicegate-model"] == "big"
        assert gateway.cache is not None and gateway.cache.memory is not None
        for entry in gateway.cache.memory.entries():
            entry.expires_at = time.time() - 1
        for provider in gateway.providers.values():
            engine = provider.transport.engine  # type: ignore[attr-defined]
            engine.behaviour = engine.behaviour.model_copy(update={"error_rate": 1.0, "error_status": 503})
        stale = await gateway.send(gateway.new_call("chat", {**body("stale me"), "model": "big"}, DEFAULT))
        assert stale.headers["x-sluicegate-cache"] == "stale"
        rows = await ledger_rows(gateway)
    (answered,) = [r for r in rows if r["cache"] == "miss" and r["status"] == 200]
    (served,) = [r for r in rows if r["cache"] == "stale"]
    assert (served["model"], served["saved_micro"]) == ("big", answered["cost_micro"])

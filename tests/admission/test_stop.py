"""The emergency stop: upstream calls refused for the org (or everyone), cached answers served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sluicegate import RequestContext, create_gateway
from sluicegate.admission import stop as controls
from sluicegate.errors import EmergencyStopped, InvalidRequest
from sluicegate.store.db import migrate
from sluicegate.testing import mock_settings
from tests.conftest import settled_usage

ACME = RequestContext("acme", "ann", "insights")
GLOBEX = RequestContext("globex", "gus", "insights")


def body(text: str) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


async def test_a_stop_refuses_upstream_calls_but_serves_the_cache(tmp_path: Path) -> None:
    async with create_gateway(mock_settings(data_dir=tmp_path)) as gateway:
        await gateway.send(gateway.new_call("chat", body("cached"), ACME))
        await controls.set_stop(gateway.engine, "acme", "runaway loop in the insights job")
        await gateway.controls.refresh()
        hit = await gateway.send(gateway.new_call("chat", body("cached"), ACME))
        assert hit.headers["x-sluicegate-cache"] == "hit-memory"
        with pytest.raises(EmergencyStopped) as stopped:
            await gateway.send(gateway.new_call("chat", body("new question"), ACME))
        assert (stopped.value.status_code, stopped.value.code) == (503, "emergency_stop")
        assert "runaway loop" in stopped.value.message and "acme" in stopped.value.message
        assert "`sluicegate resume --org acme`" in stopped.value.message
        # another org is not stopped
        await gateway.send(gateway.new_call("chat", body("new question"), GLOBEX))

        await controls.set_stop(gateway.engine, None, "provider bill alert")
        await gateway.controls.refresh()
        with pytest.raises(EmergencyStopped, match="every org"):
            await gateway.send(gateway.new_call("chat", body("another one"), GLOBEX))
        assert [s.scope for s in await controls.list_stops(gateway.engine)] == ["global", "org:acme"]

        assert await controls.clear_stop(gateway.engine, None)
        assert await controls.clear_stop(gateway.engine, "acme")
        assert not await controls.clear_stop(gateway.engine, "acme")
        await gateway.controls.refresh()
        await gateway.send(gateway.new_call("chat", body("back to work"), ACME))


async def test_a_stop_needs_a_reason_and_a_real_org(tmp_path: Path) -> None:
    async with create_gateway(mock_settings(data_dir=tmp_path)) as gateway:
        with pytest.raises(InvalidRequest, match="reason"):
            await controls.set_stop(gateway.engine, None, "  ")
        for not_an_org in ("", "a/b", "o" * 129, "a\x00b"):
            with pytest.raises(InvalidRequest, match="org"):
                await controls.set_stop(gateway.engine, not_an_org, "why")
        first = await controls.set_stop(gateway.engine, "acme", "one")
        second = await controls.set_stop(gateway.engine, "acme", "two")  # updates the reason
        assert [s.reason for s in await controls.list_stops(gateway.engine)] == ["two"]
        assert second.scope == first.scope == "org:acme"


async def test_the_spend_rate_breaker_stops_a_runaway_org(tmp_path: Path) -> None:
    settings = mock_settings(
        data_dir=tmp_path, controls={"spend_breaker": {"max_usd": "0.00005", "window_minutes": 5}}
    )
    async with create_gateway(settings) as gateway:
        for n in range(5):  # a loop: about $0.0001 in a moment, past the $0.00005 allowed
            await gateway.send(gateway.new_call("chat", body(f"again {n}"), ACME))
        await gateway.send(gateway.new_call("chat", body("just one"), GLOBEX))
        assert gateway.outbox is not None
        await gateway.outbox.flush()
        assert await gateway.breaker.check(gateway.controls.stops, now_please=True) == ["acme"]
        await gateway.controls.refresh()
        with pytest.raises(EmergencyStopped, match="spend-rate breaker"):
            await gateway.send(gateway.new_call("chat", body("one more"), ACME))
        assert await gateway.breaker.check(gateway.controls.stops) == []  # checked at most every 5 s
        assert await gateway.breaker.check(gateway.controls.stops, now_please=True) == []  # stopped
        cached = await gateway.send(gateway.new_call("chat", body("again 1"), ACME))
        assert cached.headers["x-sluicegate-cache"] == "hit-memory"


async def test_a_resume_is_not_undone_by_the_spend_that_caused_the_stop(tmp_path: Path) -> None:
    """After `resume`, the breaker counts what the org spends from then on, not the window's
    spend from before (which would stop it again at once); a new runaway stops it again."""
    settings = mock_settings(
        data_dir=tmp_path, controls={"spend_breaker": {"max_usd": "0.00005", "window_minutes": 5}}
    )
    async with create_gateway(settings) as gateway:
        assert gateway.outbox is not None
        for n in range(5):
            await gateway.send(gateway.new_call("chat", body(f"again {n}"), ACME))
        await gateway.outbox.flush()
        assert await gateway.breaker.check(gateway.controls.stops, now_please=True) == ["acme"]
        assert await controls.clear_stop(gateway.engine, "acme")
        await gateway.controls.refresh()
        assert await gateway.breaker.check(gateway.controls.stops, now_please=True) == []
        await gateway.send(gateway.new_call("chat", body("after the resume"), ACME))
        for n in range(5):
            await gateway.send(gateway.new_call("chat", body(f"runaway again {n}"), ACME))
        await gateway.outbox.flush()
        assert await gateway.breaker.check(gateway.controls.stops, now_please=True) == ["acme"]


async def test_the_breaker_is_off_by_default(tmp_path: Path) -> None:
    async with create_gateway(mock_settings(data_dir=tmp_path)) as gateway:
        await gateway.send(gateway.new_call("chat", body("x"), ACME))
        assert await gateway.breaker.check(gateway.controls.stops, now_please=True) == []


async def test_a_call_the_stop_refuses_holds_none_of_its_budget(tmp_path: Path) -> None:
    """The budget reserves before the stop refuses: the refusal gives the reservation back."""
    settings = mock_settings(data_dir=tmp_path, budgets={"orgs": [{"org": "acme", "limit_usd": "5"}]})
    async with create_gateway(settings) as gateway:
        await controls.set_stop(gateway.engine, "acme", "runaway loop")
        await gateway.controls.refresh()
        for n in range(3):
            with pytest.raises(EmergencyStopped):
                await gateway.send(gateway.new_call("chat", body(f"question {n}"), ACME))
        budget = gateway.budgets.budget_for("acme")
        assert budget is not None
        usage = await settled_usage(gateway, budget)
        assert (usage.spent_micro, usage.reserved_micro) == (0, 0)


async def test_a_worker_that_could_not_read_the_stops_at_start_makes_no_upstream_call(
    tmp_path: Path,
) -> None:
    """It would not know a stop, or a budget set at run time, in force: it refuses misses
    (503 controls_unavailable, Retry-After 1) until a poll has read them all."""
    settings = mock_settings(
        data_dir=tmp_path, database={"migrate_on_start": False}, controls={"poll_interval_s": 0.05}
    )
    async with create_gateway(settings) as gateway:  # no tables yet: the reads fail
        with pytest.raises(EmergencyStopped) as refused:
            await gateway.send(gateway.new_call("chat", body("while unread"), ACME))
        assert refused.value.code == "controls_unavailable" and refused.value.headers["retry-after"] == "1"
        await migrate(gateway.engine)  # the database is back
        await controls.set_stop(gateway.engine, "acme", "set while the worker was blind")
        for _ in range(100):
            if "org:acme" in gateway.controls.stops and "global" not in gateway.controls.stops:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(EmergencyStopped, match="set while the worker was blind"):
            await gateway.send(gateway.new_call("chat", body("stopped"), ACME))
        await gateway.send(gateway.new_call("chat", body("free"), GLOBEX))

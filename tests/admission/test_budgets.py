"""Budgets through the gateway and in the store: reserve, clamp, settle once, lease, alert once,
throttle and refuse, with cached answers still served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sluicegate import RequestContext, create_gateway
from sluicegate.admission.budget_math import period_start
from sluicegate.admission.budget_scopes import new_budget
from sluicegate.admission.budgets import BudgetStore
from sluicegate.config import BudgetsConfig, load_settings
from sluicegate.errors import BudgetExceeded, ConfigError
from sluicegate.store.db import create_engine, migrate
from sluicegate.testing import mock_settings
from tests.conftest import settled_usage

ACME = RequestContext("acme", "ann", "insights")
MODELS = {"gpt-4o": {"provider": "upstream"}, "gpt-4o-mini": {"provider": "upstream", "aliases": ["fast"]}}


def body(text_: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text_}], **extra}


def settings(tmp_path: Path, limit_usd: str, models: dict[str, Any] | None = None, **budgets: Any) -> Any:
    return mock_settings(
        data_dir=tmp_path,
        budgets={"orgs": [{"org": "acme", "limit_usd": limit_usd}], **budgets},
        providers={"upstream": {"kind": "mock", "mock": {"answer_words": 400}}},
        **({"models": models} if models else {}),
    )


async def test_spend_stops_at_the_limit_and_cached_answers_still_come(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "sluicegate.budgets")
    async with create_gateway(settings(tmp_path, "0.001", throttle_at=1.0)) as gateway:
        # room for the whole answer: a truncated one would not be cached
        first = await gateway.send(gateway.new_call("chat", body("cached one", max_tokens=700), ACME))
        refused = None
        for n in range(40):
            try:
                await gateway.send(gateway.new_call("chat", body(f"q {n}", max_tokens=100), ACME))
            except BudgetExceeded as exc:
                refused = exc
                break
        assert refused is not None and refused.code == "budget_exceeded"
        assert "resets at" in refused.message and "sluicegate budgets set" in refused.message
        assert int(refused.headers["retry-after"]) > 0
        hit = await gateway.send(gateway.new_call("chat", body("cached one", max_tokens=700), ACME))
        assert hit.body == first.body and hit.headers["x-sluicegate-cache"] == "hit-memory"
        budget = gateway.budgets.budget_for("acme")
        assert budget is not None
        usage = await gateway.budgets.usage(budget)
        assert usage.spent_micro <= 1000 and usage.reserved_micro == 0
        # another org has no budget
        await gateway.send(gateway.new_call("chat", body("free", max_tokens=100), RequestContext("globex")))
    alerts = [r for r in caplog.records if "budget alert" in r.getMessage()]
    assert len(alerts) == 1


async def test_max_tokens_is_clamped_to_what_is_left(tmp_path: Path) -> None:
    async with create_gateway(settings(tmp_path, "0.0001", throttle_at=1.0)) as gateway:
        call = gateway.new_call("chat", body("long one"), ACME)  # no max_tokens: 4096 worst case
        reply = await gateway.send(call)
        assert call.body["max_tokens"] < 4096
        assert reply.usage is not None and reply.usage.completion_tokens <= call.body["max_tokens"]
        assert reply.payload is not None and reply.payload["choices"][0]["finish_reason"] == "length"
        # cut short for this org's budget: not stored as the answer to the request as asked
        assert gateway.cache is not None and gateway.cache.memory is not None
        assert len(gateway.cache.memory) == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": 5000, "max_completion_tokens": 5000},
        {"max_tokens": 5000, "max_completion_tokens": None},
    ],
)
async def test_the_clamp_lowers_every_limit_a_provider_may_read(tmp_path: Path, fields: Any) -> None:
    """Both fields set (or one set and the other null): the reservation counts the larger, and
    the clamp lowers each one set, so that a provider reading only max_tokens cannot overspend."""
    async with create_gateway(
        settings(tmp_path, "0.0001", throttle_at=1.0, default_max_tokens=16)
    ) as gateway:
        call = gateway.new_call("chat", body("long one", **fields), ACME)
        await gateway.send(call)
        lowered = [call.body[name] for name in ("max_tokens", "max_completion_tokens") if call.body[name]]
        assert lowered and all(16 < value < 5000 for value in lowered)
        assert len(lowered) == len([value for value in fields.values() if value])


async def test_an_answer_the_clamp_did_not_cut_is_cached(tmp_path: Path) -> None:
    """With less left than the worst case (4,096 tokens), max_tokens is clamped; an answer that
    ended by itself under the clamp is the full answer, stored and served again from the cache."""
    async with create_gateway(settings(tmp_path, "0.0005", throttle_at=1.0)) as gateway:
        call = gateway.new_call("chat", body("long one"), ACME)
        first = await gateway.send(call)
        assert call.clamped and call.body["max_tokens"] < 4096
        assert first.payload is not None and first.payload["choices"][0]["finish_reason"] == "stop"
        again = await gateway.send(gateway.new_call("chat", body("long one"), ACME))
        assert again.headers["x-sluicegate-cache"] == "hit-memory" and again.body == first.body


async def test_past_the_throttle_misses_go_to_the_cheaper_model_or_nowhere(tmp_path: Path) -> None:
    async with create_gateway(settings(tmp_path, "0.01", throttle_at=0.0001)) as gateway:
        await gateway.send(gateway.new_call("chat", body("first", max_tokens=10), ACME))
        with pytest.raises(BudgetExceeded) as throttled:  # past 0.01 % of the limit: cache only
            await gateway.send(gateway.new_call("chat", body("second", max_tokens=10), ACME))
        assert throttled.value.code == "budget_throttled"
        assert "only cached answers" in throttled.value.message
        budget = gateway.budgets.budget_for("acme")
        assert budget is not None and (await gateway.budgets.usage(budget)).reserved_micro == 0
    cheaper = settings(tmp_path / "b", "0.01", throttle_at=0.0001, throttle_model="fast", models=MODELS)
    async with create_gateway(cheaper) as gateway:
        first = gateway.new_call("chat", {**body("first", max_tokens=10), "model": "gpt-4o"}, ACME)
        await gateway.send(first)
        second = gateway.new_call("chat", {**body("second", max_tokens=10), "model": "gpt-4o"}, ACME)
        await gateway.send(second)
        assert (first.route.name, second.route.name) == ("gpt-4o", "gpt-4o-mini")


async def test_the_cheaper_models_answer_is_not_cached_as_the_asked_models(tmp_path: Path) -> None:
    """Past the throttle, the answer of the cheaper model is the org's alone: not stored under
    the asked model's key, where other orgs or users would get it for the whole TTL."""
    cheaper = settings(tmp_path, "1", throttle_at=0.0001, throttle_model="fast", models=MODELS)
    async with create_gateway(cheaper) as gateway:
        assert gateway.cache is not None and gateway.cache.memory is not None
        first = gateway.new_call("chat", {**body("first", max_tokens=2000), "model": "gpt-4o"}, ACME)
        await gateway.send(first)
        assert len(gateway.cache.memory) == 1
        second = gateway.new_call("chat", {**body("second", max_tokens=2000), "model": "gpt-4o"}, ACME)
        reply = await gateway.send(second)
        assert second.route.name == "gpt-4o-mini" and reply.headers["x-sluicegate-cache"] == "miss"
        assert len(gateway.cache.memory) == 1


async def test_a_users_budget_refuses_that_user_and_no_one_else(tmp_path: Path) -> None:
    """Under the org's budget, one user's own budget stops that user only."""
    users = [{"org": "acme", "limit_usd": "1"}, {"org": "acme", "user": "ann", "limit_usd": "0.0003"}]
    config = mock_settings(
        data_dir=tmp_path,
        budgets={"orgs": users, "throttle_at": 1.0},
        providers={"upstream": {"kind": "mock", "mock": {"answer_words": 400}}},
    )
    async with create_gateway(config) as gateway:
        with pytest.raises(BudgetExceeded) as refused:
            for n in range(20):
                await gateway.send(gateway.new_call("chat", body(f"q {n}", max_tokens=100), ACME))
        assert "the user 'ann' of the org 'acme'" in refused.value.message
        assert "--org acme --user ann" in refused.value.message
        bob = RequestContext("acme", "bob", "insights")
        await gateway.send(gateway.new_call("chat", body("bob's turn", max_tokens=100), bob))


async def test_settlements_count_once_and_leases_release_the_dead(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    config = BudgetsConfig(orgs=({"org": "acme", "limit_usd": Decimal("1")},), lease_s=60)  # type: ignore[arg-type]
    async with clocked_store(tmp_path, now, config) as (store, engine):
        budget = store.budget_for("acme")
        assert budget is not None
        held = await store.reserve(budget, "r1:1", 100, 600_000, 1000)
        assert held.decision.admitted and held.usages[0].reserved_micro == 700
        assert len(await store.settle("r1:1", 400)) == 1
        assert await store.settle("r1:1", 400) == []  # delivered twice, counted once
        await store.reserve(budget, "r2:1", 100, 600_000, 1000)  # its process dies
        now[0] += 61
        assert await store.reap() == 1
        after = await store.usage(budget)
        assert (after.spent_micro, after.reserved_micro) == (400, 0)
        [late] = await store.settle("r2:1", 300)  # the answer came after all
        assert (late.spent_micro, late.reserved_micro) == (700, 0)
        async with engine.connect() as connection:
            states = (
                await connection.execute(text("SELECT state FROM budget_reservations ORDER BY id"))
            ).all()
        assert [s for (s,) in states] == ["settled", "settled"]


async def test_a_dead_process_s_calls_in_the_ledger_are_not_counted_twice(tmp_path: Path) -> None:
    """A process dies with a reservation open; its spool, replayed, puts the call's row in the
    ledger; a new process's first reservation raises the period to the ledger's sum; the reaper
    then charges the dead reservation at the ledger's cost. The call counts once (it counted
    twice: in the floor, and in the reaper's charge)."""
    now = [1_800_000_000.0]
    config = BudgetsConfig(orgs=({"org": "acme", "limit_usd": Decimal("1")},), lease_s=60)  # type: ignore[arg-type]
    async with clocked_store(tmp_path, now, config) as (dead, engine):
        budget = dead.budget_for("acme")
        assert budget is not None
        assert (await dead.reserve(budget, "r1:1", 100, 600_000, 1000)).decision.admitted
        await _ledger_row(engine, "r1", now[0], 0, 300)  # replayed: interrupted, at its estimate
        fresh = BudgetStore(engine, config, clock=lambda: now[0])
        try:
            assert (await fresh.reserve(budget, "r2:1", 100, 600_000, 1000)).decision.admitted
            await fresh.settle("r2:1", 200)
            now[0] += 61
            assert await fresh.reap() == 1
            after = await fresh.usage(budget)
        finally:
            fresh.close()
    assert (after.spent_micro, after.reserved_micro) == (500, 0)


async def test_the_alert_is_posted_to_the_webhook_once(tmp_path: Path) -> None:
    received: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        async with create_gateway(settings(tmp_path, "0.001", throttle_at=1.0, webhook_url=url)) as gateway:
            for n in range(40):
                try:
                    await gateway.send(gateway.new_call("chat", body(f"q {n}", max_tokens=100), ACME))
                except BudgetExceeded:
                    break
            for _ in range(50):
                if received:
                    break
                await asyncio.sleep(0.05)
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 1
    alert = json.loads(received[0])
    assert alert["event"] == "budget_alert" and alert["scope"] == "org:acme" and alert["used"] >= 0.8


async def test_a_forecast_past_the_limit_alerts_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "sluicegate.budgets")
    async with create_gateway(settings(tmp_path, "0.001", throttle_at=1.0, alert_at=1.0)) as gateway:
        await gateway.send(gateway.new_call("chat", body("one", max_tokens=300), ACME))
        assert gateway.outbox is not None
        await gateway.outbox.flush()
        budget = gateway.budgets.budget_for("acme")
        assert budget is not None
        # Seen from the month's second day, whatever today is: about 180 µUSD in the last day,
        # and at that rate the month passes $0.001.
        second_day = period_start("month", time.time()) + 86_400
        gateway.budgets.clock = lambda: second_day
        usage = await gateway.budgets.usage(budget)
        assert usage.forecast_micro is not None and usage.forecast_micro > budget.limit_micro
        assert usage.to_dict()["forecast_usd"] == usage.forecast_micro / 1_000_000
        await gateway.budgets.check_forecasts()
        await gateway.budgets.check_forecasts()
    forecasts = [r for r in caplog.records if "budget forecast" in r.getMessage()]
    assert len(forecasts) == 1
    assert "of $0.001 by the end of" in forecasts[0].getMessage()  # not "$0.00"


async def test_a_throttle_model_that_does_not_exist_stops_the_start(tmp_path: Path) -> None:
    """A typo in throttle_model would show only past 95 %: it is refused with the settings,
    before any worker starts."""
    config = tmp_path / "sluicegate.yaml"
    config.write_text("budgets:\n  throttle_model: gpt-4o-mni\n")
    with pytest.raises(ConfigError, match=r"budgets\.throttle_model: 'gpt-4o-mni' is not a configured model"):
        load_settings(config)


async def test_a_budget_set_mid_period_counts_what_was_spent_before_it(tmp_path: Path) -> None:
    """Without Redis too: the period starts from the ledger's spend, not from zero."""
    globex = RequestContext("globex", "gus", "chat")
    async with create_gateway(settings(tmp_path, "1000")) as gateway:  # a budget for acme only
        for n in range(3):
            await gateway.send(
                gateway.new_call("chat", body(f"before the budget {n}", max_tokens=50), globex)
            )
        assert gateway.outbox is not None
        await gateway.outbox.flush()
        async with gateway.engine.connect() as connection:
            query = "SELECT sum(cost_micro) FROM usage_ledger WHERE org = 'globex'"
            spent = int(await connection.scalar(text(query)) or 0)
        assert spent > 0
        budget = await gateway.budgets.set_limit(new_budget("globex", Decimal("5"), "month", None, ()))
        assert (await gateway.budgets.usage(budget)).spent_micro == spent
        held = await gateway.budgets.reserve(budget, "r1:1", 1, 600_000, 10)
        assert held.decision.admitted and held.usages[0].spent_micro == spent


async def test_the_least_completion_tokens_hold_for_each_of_n_choices(tmp_path: Path) -> None:
    """Clamped to what is left, each of the n choices still gets at least 16 tokens, or the
    call is refused and its reservation given back."""
    async with create_gateway(settings(tmp_path, "0.0005", throttle_at=1.0)) as gateway:
        with pytest.raises(BudgetExceeded) as refused:
            await gateway.send(gateway.new_call("chat", body("many answers", n=100), ACME))
        assert refused.value.code == "budget_exceeded"
        call = gateway.new_call("chat", body("two answers", n=2), ACME)
        await gateway.send(call)
        assert 16 <= call.body["max_tokens"] < 4096
        budget = gateway.budgets.budget_for("acme")
        assert budget is not None
        assert (await gateway.budgets.usage(budget)).reserved_micro == 0


async def test_a_stream_the_client_cuts_costs_its_estimate_not_its_worst_case(tmp_path: Path) -> None:
    """The budget settles a cut stream at what the ledger records for it: its prompt and the
    chunks it sent, not the reservation's worst case."""
    slow = {"upstream": {"kind": "mock", "mock": {"answer_words": 400, "chunk_interval_ms": 5}}}
    budgets = {"orgs": [{"org": "acme", "limit_usd": "1"}]}
    async with create_gateway(
        mock_settings(data_dir=tmp_path, budgets=budgets, providers=slow, cache={"enabled": False})
    ) as gateway:
        reply = await gateway.send(
            gateway.new_call("chat", body("cut me", max_tokens=4000, stream=True), ACME)
        )
        assert reply.stream is not None
        async for _ in reply.stream:
            break  # the client leaves
        await reply.stream.aclose()
        budget = gateway.budgets.budget_for("acme")
        assert budget is not None
        usage = await settled_usage(gateway, budget)
        assert gateway.outbox is not None
        await gateway.outbox.flush()
        async with gateway.engine.connect() as connection:
            ledger = int(await connection.scalar(text("SELECT sum(cost_micro) FROM usage_ledger")) or 0)
        assert (usage.reserved_micro, usage.spent_micro) == (0, ledger)
        assert ledger < 600  # 4,000 tokens at $0.60 a million would be 2,400 µUSD


async def test_a_fallback_to_a_dearer_model_cannot_pass_the_limit(tmp_path: Path) -> None:
    """The worst case is priced at the dearest model the call may end on: when the cheap model
    fails and its fallback answers, the budget still holds."""
    dear = {"input_per_mtok": "1000", "output_per_mtok": "4000"}
    models = {
        "cheap": {"provider": "bad", "price": {"input_per_mtok": "0.1", "output_per_mtok": "0.4"}},
        "pricey": {"provider": "good", "price": dear},
    }
    models["cheap"]["fallbacks"] = ["pricey"]
    settings = mock_settings(
        data_dir=tmp_path,
        budgets={"orgs": [{"org": "acme", "limit_usd": "0.05"}], "throttle_at": 1.0},
        providers={
            "bad": {"kind": "mock", "mock": {"error_rate": 1.0, "error_status": 500}},
            "good": {"kind": "mock", "mock": {"answer_words": 400}},
        },
        models=models,
        resilience={"retry": {"max_attempts": 1}},
        cache={"enabled": False},
    )
    async with create_gateway(settings) as gateway:
        try:
            reply = await gateway.send(
                gateway.new_call("chat", {**body("hello"), "model": "cheap", "max_tokens": 20}, ACME)
            )
            assert reply.headers.get("x-sluicegate-model") == "pricey"
        except BudgetExceeded:
            pass  # refused outright is within the budget too
        budget = gateway.budgets.budget_for("acme")
        assert budget is not None
        usage = await gateway.budgets.usage(budget)
        assert usage.spent_micro + usage.reserved_micro <= budget.limit_micro


async def test_an_embedding_reserves_its_input_only_and_is_never_sent_max_tokens(tmp_path: Path) -> None:
    """An embedding has no completion: a budget with room for its input but not for
    default_max_tokens of output admits it as asked, without a max_tokens in its body."""
    # an output price, as a custom model's config must give one
    price = {"input_per_mtok": 0.02, "output_per_mtok": 1}
    models = {"embedder": {"provider": "upstream", "serves": ["embeddings"], "price": price}}
    async with create_gateway(settings(tmp_path, "0.0001", throttle_at=1.0, models=models)) as gateway:
        body_ = {"model": "embedder", "input": "quarterly revenue"}
        call = gateway.new_call("embeddings", body_, ACME)
        await gateway.send(call)
        assert "max_tokens" not in call.body


async def test_past_the_throttle_an_embedding_is_not_sent_to_a_chat_model(tmp_path: Path) -> None:
    models = {**MODELS, "text-embedding-3-small": {"provider": "upstream"}}
    cheaper = settings(tmp_path, "1", throttle_at=0.0001, throttle_model="fast", models=models)
    async with create_gateway(cheaper) as gateway:
        await gateway.send(gateway.new_call("chat", body("spend", max_tokens=2000), ACME))
        call = gateway.new_call("embeddings", {"model": "text-embedding-3-small", "input": "x"}, ACME)
        with pytest.raises(BudgetExceeded) as throttled:
            await gateway.send(call)
        assert throttled.value.code == "budget_throttled"


async def test_a_throttled_call_is_told_to_come_back_within_the_minute(tmp_path: Path) -> None:
    """Held to so many calls a minute, a refused call may retry within 60 s, not at the
    period's end (days away)."""
    async with create_gateway(settings(tmp_path, "1", throttle_at=0.0001, throttle_per_minute=2)) as gateway:
        await gateway.send(gateway.new_call("chat", body("spend", max_tokens=2000), ACME))
        with pytest.raises(BudgetExceeded) as throttled:
            for n in range(3):
                await gateway.send(gateway.new_call("chat", body(f"q {n}", max_tokens=10), ACME))
        assert throttled.value.code == "budget_throttled"
        assert throttled.value.headers["retry-after"] == "60"
        assert "try again in 60 s" in throttled.value.message


async def test_a_call_refused_by_the_concurrency_cap_may_retry_in_a_second(tmp_path: Path) -> None:
    """With both caps set, the refusal says which one refused: the concurrency cap frees as
    soon as a call ends, not within the minute."""
    config = mock_settings(
        data_dir=tmp_path,
        budgets={
            "orgs": [{"org": "acme", "limit_usd": "1"}],
            "throttle_at": 0.0001,
            "throttle_concurrency": 1,
            "throttle_per_minute": 100,
        },
        providers={"upstream": {"kind": "mock", "mock": {"answer_words": 400, "latency": 300}}},
    )
    async with create_gateway(config) as gateway:
        await gateway.send(gateway.new_call("chat", body("spend", max_tokens=2000), ACME))
        calls = [
            gateway.send(gateway.new_call("chat", body(f"q {n}", max_tokens=10), ACME)) for n in range(3)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
        assert len(refused) == 2 and all(r.code == "budget_throttled" for r in refused)
        assert {r.headers["retry-after"] for r in refused} == {"1"}
        assert "1 of its calls at once" in refused[0].message and "max_tokens" not in refused[0].message


def _at(iso: str) -> float:
    from datetime import UTC, datetime

    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


@contextlib.asynccontextmanager
async def clocked_store(
    tmp_path: Path, now: list[float], config: BudgetsConfig | None = None
) -> AsyncIterator[tuple[BudgetStore, AsyncEngine]]:
    """A budget store on a new SQLite file, whose clock reads ``now[0]``, and its engine."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/budgets.db")
    await migrate(engine)
    store = BudgetStore(engine, config or BudgetsConfig(), clock=lambda: now[0])
    try:
        yield store, engine
    finally:
        store.close()
        await engine.dispose()


async def _ledger_row(engine: Any, rid: str, at: float, latency_ms: int, cost: int) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO usage_ledger (request_id, attempt, at, org, user, key_id, feature, model, "
                "provider, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, cost_micro, "
                "saved_micro, cache, status, latency_ms, priced_from) VALUES (:r, 1, :at, 'acme', NULL, "
                "NULL, 'chat', 'gpt-4o-mini', 'upstream', 10, 0, 10, 0, :c, 0, 'miss', 200, :l, 'usage')"
            ),
            {"r": rid, "at": at, "c": cost, "l": latency_ms},
        )


async def test_a_call_across_midnight_counts_in_the_period_it_began_in_only(tmp_path: Path) -> None:
    """Reserved at 23:59:50 on 31 December, answered at 00:00:05: its $0.50 is December's
    (where its settlement went), not also January's, whose spend starts from the ledger; the
    settlement reports December's end, not January's. The forecast 10 s into January runs the
    last day's burn ($0.50) to the month's end (about $15.50 of $100), rather than those 10 s
    (which made it $133,920)."""
    now = [_at("2025-12-31T23:59:50")]
    async with clocked_store(tmp_path, now) as (store, engine):
        budget = await store.set_limit(new_budget("acme", Decimal(100), "month", None, ()))
        assert (await store.reserve([budget], "req1:1", 100, 600_000, 1000)).decision.admitted
        now[0] = _at("2026-01-01T00:00:05")
        await _ledger_row(engine, "req1", now[0], 15_000, 500_000)
        settled = await store.settle("req1:1", 500_000)
        assert [(u.period, u.spent_micro, u.ends_at) for u in settled] == [
            ("2025-12", 500_000, _at("2026-01-01T00:00:00"))
        ]
        now[0] = _at("2026-01-01T00:00:10")
        held = await store.reserve([budget], "req2:1", 100, 600_000, 10)
        assert [(u.period, u.spent_micro) for u in held.usages] == [("2026-01", 0)]
        usage = await store.usage(budget)
        assert usage.forecast_micro is not None and usage.forecast_micro < budget.limit_micro


async def test_a_hedged_call_settles_what_its_cancelled_copy_cost_too(tmp_path: Path) -> None:
    """The hedge wins; the late first attempt is cancelled, and the ledger bills it its prompt's
    estimate. The budget counts that too, so it agrees with the ledger."""
    price = {"input_per_mtok": 100, "output_per_mtok": 200}
    settings = mock_settings(
        data_dir=tmp_path,
        providers={
            "slow": {"kind": "mock", "mock": {"latency": {"ms": 3000}}},
            "fast": {"kind": "mock"},
        },
        models={
            "m": {
                "provider": "slow",
                "weight": 1e9,
                "deployments": [{"provider": "fast", "weight": 1e-9}],
                "price": price,
            }
        },
        features={"default": {"hedge": True, "hedge_after_ms": 50}},
        budgets={"orgs": [{"org": "acme", "limit_usd": 10}]},
    )
    async with create_gateway(settings) as gateway:
        call = gateway.new_call("chat", body("hedge me " * 50) | {"model": "m"}, RequestContext("acme"))
        reply = await gateway.send(call)
        assert reply.headers["x-sluicegate-hedge"] == "won"
        assert gateway.outbox is not None
        await asyncio.sleep(0.1)
        await gateway.outbox.flush()
        async with gateway.engine.connect() as connection:
            rows = (
                await connection.exec_driver_sql(
                    "SELECT attempt, status, cost_micro FROM usage_ledger ORDER BY attempt"
                )
            ).all()
        budget = gateway.budgets.budget_for("acme")
        assert budget is not None
        usage = await settled_usage(gateway, budget)
    assert [row[1] for row in rows] == [499, 200] and all(row[2] > 0 for row in rows)
    assert usage.spent_micro == sum(row[2] for row in rows) and usage.reserved_micro == 0


async def test_a_settlement_after_the_budget_s_period_changed_still_counts(tmp_path: Path) -> None:
    """Reserved under a daily budget, settled once an admin made it monthly: the settlement
    counts in the day it was reserved in, with that day's end (it used to fail, and be lost)."""
    now = [_at("2026-11-25T12:00:00")]
    async with clocked_store(tmp_path, now) as (store, _):
        daily = await store.set_limit(new_budget("acme", Decimal(10), "day", None, ()))
        assert (await store.reserve([daily], "req1:1", 100, 600_000, 1000)).decision.admitted
        await store.set_limit(new_budget("acme", Decimal(10), "month", None, ()))
        settled = await store.settle("req1:1", 500)
        assert [(u.period, u.spent_micro, u.ends_at) for u in settled] == [
            ("2026-11-25", 500, _at("2026-11-26T00:00:00"))
        ]


async def test_a_reservation_whose_settlement_was_lost_is_charged_what_the_ledger_billed(
    tmp_path: Path,
) -> None:
    """The settlement failed (the database was down): at the lease's end the reaper charges the
    ledger's cost of the call, not nothing; a late settlement then counts nothing more. A
    reservation the ledger has no row for is released, as before."""
    now = [_at("2026-11-25T12:00:00")]
    async with clocked_store(tmp_path, now, BudgetsConfig(lease_s=60)) as (store, engine):
        budget = await store.set_limit(new_budget("acme", Decimal(10), "month", None, ()))
        assert (await store.reserve([budget], "req1:1", 100, 600_000, 1000)).decision.admitted
        assert (await store.reserve([budget], "req2:1", 100, 600_000, 1000)).decision.admitted
        await _ledger_row(engine, "req1", now[0] + 1, 900, 321)  # req2's call left no row
        now[0] += 120
        assert await store.reap() == 2
        usage = await store.usage(budget)
        assert (usage.spent_micro, usage.reserved_micro) == (321, 0)
        assert await store.settle("req1:1", 321) == []  # late: counted already
        assert (await store.usage(budget)).spent_micro == 321


async def test_past_the_throttle_the_cheaper_model_answers_what_the_asked_one_could_not_afford(
    tmp_path: Path,
) -> None:
    """90 % of $0.001 spent: gpt-4o's least answer (16 tokens at $10 a million, and its prompt)
    no longer fits, gpt-4o-mini's does. Past throttle_at the call goes to gpt-4o-mini, reserved
    and clamped at its prices, instead of being refused."""
    cheaper = settings(tmp_path, "0.001", throttle_at=0.5, throttle_model="fast", models=MODELS)
    async with create_gateway(cheaper) as gateway:
        await _ledger_row(gateway.engine, "earlier", time.time(), 10, 900)  # acme spent $0.0009
        call = gateway.new_call("chat", {**body("summarise", max_tokens=100), "model": "gpt-4o"}, ACME)
        reply = await gateway.send(call)
        assert reply.headers["x-sluicegate-model"] == "gpt-4o-mini" and call.route.name == "gpt-4o-mini"
        assert call.body["max_tokens"] == 100  # gpt-4o-mini can afford all of it: not clamped
        budget = gateway.budgets.budget_for("acme")
        assert budget is not None
        usage = await settled_usage(gateway, budget)
        assert usage.reserved_micro == 0 and 900 < usage.spent_micro <= 1000

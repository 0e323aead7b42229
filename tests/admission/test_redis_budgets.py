"""Budgets in the real Redis: exact under concurrency, atomic across a call's budgets, settled
once, leases, periods rebuilt from the ledger, and the database taking over while Redis is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from sluicegate.accounting.outbox import insert_rows
from sluicegate.admission.budget_scopes import Budget, scope_of
from sluicegate.admission.budgets import BudgetStore
from sluicegate.admission.redis_budgets import NeedsFloor, RedisBudgets, book_key
from sluicegate.calls import RequestContext
from sluicegate.config import BudgetsConfig
from sluicegate.errors import BudgetUnavailable
from sluicegate.faults import FaultProxy
from sluicegate.store.db import create_engine, migrate
from sluicegate.store.redis import create_redis

pytestmark = pytest.mark.redis

ORG = Budget("org:acme", 10_000, "month")
ANN = Budget("org:acme/user:ann", 1_000, "day")
PERIOD = "2026-11"


@pytest.fixture
async def budgets(redis_url: str) -> AsyncIterator[RedisBudgets]:
    client: Redis = create_redis(redis_url)
    yield RedisBudgets(client, timeout_s=2.0)
    await client.aclose()


async def reserve(
    store: RedisBudgets, books: list[Budget], rid: str, asked: int = 100, lease_s: float = 60
) -> tuple[bool, int, list[tuple[int, int]]]:
    now = time.time()
    timed = [(budget, PERIOD, now + 3600) for budget in books]
    outcome = await store.reserve(timed, rid, 0, 1_000_000, asked, lease_s, [0] * len(books), now)
    return outcome.decision.admitted, outcome.refused, outcome.after


async def test_exactly_what_fits_is_reserved_under_concurrency(budgets: RedisBudgets) -> None:
    """300 concurrent reservations of $0.0001 each against $0.01: exactly 100 are admitted."""
    outcomes = await asyncio.gather(*(reserve(budgets, [ORG], f"r{n}") for n in range(300)))
    assert sum(admitted for admitted, _, _ in outcomes) == 100
    assert await budgets.read(ORG, PERIOD) == (0, 10_000)


async def test_an_embedding_may_take_the_last_micro_dollar(budgets: RedisBudgets) -> None:
    """Ten reservations of 1 µUSD (prompts, no output) under a 10 µUSD budget: all ten fit."""
    tiny = Budget("org:tiny", 10, "month")
    now = time.time()
    timed = [(tiny, PERIOD, now + 3600)]
    admitted = [
        (await budgets.reserve(timed, f"e{n}", 1, 600_000, 0, 60, [0], now)).decision.admitted
        for n in range(11)
    ]
    assert admitted == [True] * 10 + [False]


async def test_a_call_under_several_budgets_is_reserved_in_all_or_none(budgets: RedisBudgets) -> None:
    """The user's budget refuses after 10 calls; the org's is left as it was."""
    outcomes = [await reserve(budgets, [ORG, ANN], f"r{n}") for n in range(11)]
    assert [admitted for admitted, _, _ in outcomes] == [True] * 10 + [False]
    assert outcomes[-1][1] == 1  # refused by the user's budget
    assert await budgets.read(ORG, PERIOD) == (0, 1_000)
    assert await budgets.read(ANN, PERIOD) == (0, 1_000)


async def test_settlements_delivered_twice_and_out_of_order_count_once(budgets: RedisBudgets) -> None:
    """Each settlement counts once, in whatever order and however often it arrives."""
    for rid in ("a", "b", "c"):
        await reserve(budgets, [ORG, ANN], rid)
    for rid, cost in (("c", 30), ("a", 10), ("c", 30), ("b", 20), ("a", 10)):
        await budgets.settle([(ORG, PERIOD, 0.0), (ANN, PERIOD, 0.0)], rid, cost)
    assert await budgets.read(ORG, PERIOD) == (60, 0)
    assert await budgets.read(ANN, PERIOD) == (60, 0)


async def test_a_lease_that_ends_is_released_and_a_late_settlement_still_counts(
    budgets: RedisBudgets,
) -> None:
    """A dead process's reservation leaves at its lease's end (on Redis's clock)."""
    await reserve(budgets, [ORG], "dead", lease_s=0.05)
    await asyncio.sleep(0.1)
    admitted, _, after = await reserve(budgets, [ORG], "next")
    assert admitted and after == [(0, 100)]  # the reservation of "dead" was released first
    [(counted, spent, reserved)] = await budgets.settle([(ORG, PERIOD, 0.0)], "dead", 70)
    assert counted and (spent, reserved) == (70, 100)


async def test_a_periods_keys_expire_a_week_after_it_ends(budgets: RedisBudgets) -> None:
    """The period's hash gets its expiry when it is made, the set of leases each time it is made
    again (its last lease settled deletes it)."""
    key = book_key(ORG, PERIOD)
    for round_ in range(2):
        await reserve(budgets, [ORG], f"r{round_}")
        for name in (key, key + ":leases"):
            ttl = await budgets.redis.ttl(name)
            assert 3600 + 7 * 86_400 - 60 < ttl <= 3600 + 7 * 86_400, (name, ttl)
        await budgets.settle([(ORG, PERIOD, 0.0)], f"r{round_}", 5)
        assert not await budgets.redis.exists(key + ":leases")
    assert await budgets.read(ORG, PERIOD) == (10, 0)


async def test_a_period_redis_does_not_hold_asks_for_its_floor(budgets: RedisBudgets) -> None:
    """Without a floor, an unknown period is not counted from zero."""
    now = time.time()
    with pytest.raises(NeedsFloor):
        await budgets.reserve([(ORG, "2026-12", now + 60)], "r", 0, 1_000_000, 10, 60, [None], now)
    assert await budgets.read(ORG, "2026-12") is None


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["redis", "database"])
async def counter(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Redis | None]:
    """Where a `BudgetStore` counts: a client of the real Redis, or None (the database)."""
    client: Redis | None = create_redis(redis_url) if request.param == "redis" else None
    yield client
    if client is not None:
        await client.aclose()


async def spend(engine: AsyncEngine, rid: str, cost: int, user: str = "ann") -> None:
    """A ledger row of ``cost`` for acme's ``user``, now."""
    row = (
        rid,
        1,
        time.time(),
        "acme",
        user,
        None,
        "chat",
        "m",
        "p",
        1,
        0,
        1,
        0,
        cost,
        0,
        "miss",
        200,
        1,
        "usage",
    )
    await insert_rows(engine, [row])


def config() -> BudgetsConfig:
    return BudgetsConfig(
        orgs=(
            {"org": "acme", "limit_usd": Decimal("0.01")},
            {"org": "acme", "user": "ann", "limit_usd": "0.001"},
        ),  # type: ignore[arg-type]
        redis_timeout_ms=300,
    )


async def test_a_new_period_starts_from_what_the_ledger_recorded(engine: AsyncEngine, redis_url: str) -> None:
    """Redis lost its counters (a restart): they are rebuilt from the ledger before the next call."""
    await spend(engine, "earlier", 600)
    client: Redis = create_redis(redis_url)
    store = BudgetStore(engine, config(), redis=client)
    found = store.budgets_for(RequestContext("acme", "ann", "chat"))
    assert [b.scope for b in found] == ["org:acme", "org:acme/user:ann"]
    held = await store.reserve(found, "r1:1", 0, 1_000_000, 100)
    assert held.decision.admitted
    assert [(u.spent_micro, u.reserved_micro) for u in held.usages] == [(600, 100), (600, 100)]
    assert (await store.reserve(found, "r2:1", 0, 1_000_000, 300)).decision.admitted  # ann's last 300
    refused = await store.reserve(found, "r3:1", 0, 1_000_000, 100)
    assert not refused.decision.admitted and refused.refused_by == 1
    store.close()
    await client.aclose()


async def test_a_settlement_sent_without_waiting_counts_and_reports(
    engine: AsyncEngine, redis_url: str
) -> None:
    """`settle_soon` sends the settlement with the turn's other commands; what it counted comes
    to the callback. A reservation the database holds is left to `settle`."""
    client: Redis = create_redis(redis_url)
    store = BudgetStore(engine, config(), redis=client)
    found = store.budgets_for(RequestContext("acme", "ann", "chat"))
    await store.reserve(found, "r1:1", 0, 1_000_000, 100)
    reports: list[tuple[list[tuple[int, int]], BaseException | None]] = []
    arrived = asyncio.Event()

    def done(usages: list[Any], error: BaseException | None) -> None:
        reports.append(([(u.spent_micro, u.reserved_micro) for u in usages], error))
        arrived.set()

    assert store.settle_soon("r1:1", 40, done)
    assert not reports  # nothing waited for
    async with asyncio.timeout(5):
        await arrived.wait()
    assert reports == [([(40, 0), (40, 0)], None)]
    assert not store.settle_soon("r1:1", 40, done)  # settled already: not held any more
    assert (await store.usage(found[0])).spent_micro == 40
    store.close()
    await client.aclose()


async def test_the_database_takes_over_while_redis_is_down_and_hands_back(
    engine: AsyncEngine, redis_url: str
) -> None:
    """Spend counted by the database during an outage is in Redis's count when it returns."""
    db = redis_url.rsplit("/", 1)[1]
    with FaultProxy("127.0.0.1", 6379) as proxy:
        client: Redis = create_redis(f"redis://127.0.0.1:{proxy.port}/{db}", timeout=1)
        now = [time.time()]
        store = BudgetStore(engine, config(), clock=lambda: now[0], redis=client)
        org = [store.budgets["org:acme"]]
        assert (await store.reserve(org, "r1:1", 0, 1_000_000, 100)).decision.admitted  # in Redis
        await store.settle("r1:1", 100)
        await spend(engine, "r1", 100, user="bob")
        proxy.cut()
        held = await store.reserve(org, "r2:1", 0, 1_000_000, 100)  # in the database
        assert held.decision.admitted and held.usages[0].spent_micro == 100  # caught up from the ledger
        await store.settle("r2:1", 250)
        await spend(engine, "r2", 250, user="bob")
        proxy.restore()
        now[0] += 2  # past the pause after a failure
        back = await store.reserve(org, "r3:1", 0, 1_000_000, 100)
        assert back.decision.admitted and back.usages[0].spent_micro == 350  # Redis caught up
        assert (await store.usage(org[0])).spent_micro == 350
        await store.settle("r3:1", 0)
        now[0] += 10  # Redis is asked again (the first call after the cut may have found it closed)
        # A budget that changes after the outage still counts its period from the ledger: bob's,
        # set, deleted (and bob spends meanwhile), then set again.
        bob = await store.set_limit(Budget("org:acme/user:bob", 10_000, "month"))
        first = await store.reserve([bob], "r4:1", 0, 1_000_000, 10)
        assert first.decision.admitted and first.usages[0].spent_micro == 350  # r1 and r2 were bob's
        assert await client.hexists(book_key(bob, first.books[0][1]), "r:r4:1")  # counted in Redis
        await store.settle("r4:1", 50)
        await spend(engine, "r4", 50, user="bob")
        assert await store.remove_limit(bob.scope) is None
        await spend(engine, "r5", 25, user="bob")  # no budget of bob's in force
        await store.set_limit(bob)
        again = await store.reserve([bob], "r6:1", 0, 1_000_000, 10)
        assert again.decision.admitted and again.usages[0].spent_micro == 425
        store.close()
        await client.aclose()


async def test_with_redis_and_the_database_down_budgets_fail_closed(tmp_path: Path) -> None:
    """Neither store answers: the call is refused, and the error says why."""
    engine = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    client: Redis = create_redis("redis://127.0.0.1:1/0", timeout=0.2)
    store = BudgetStore(engine, config(), redis=client)
    with pytest.raises(BudgetUnavailable) as caught:
        await store.reserve([store.budgets["org:acme"]], "r1:1", 0, 1_000_000, 100)
    assert caught.value.status == 503 and caught.value.code == "budget_unavailable"
    assert "Redis failed lately (it is tried again every 5 s), and the database is unreachable" in (
        caught.value.message
    )
    assert caught.value.headers == {"retry-after": "1"}
    store.close()
    await client.aclose()
    await engine.dispose()


async def test_past_the_throttle_share_only_the_cap_of_calls_run_at_once(
    engine: AsyncEngine, counter: Redis | None
) -> None:
    """Past 95 %, with a concurrency cap of 3: of 20 concurrent calls exactly 3 are admitted,
    and one more once a call settles."""
    config = BudgetsConfig(
        orgs=({"org": "acme", "limit_usd": Decimal("0.01")},),  # type: ignore[arg-type]
        throttle_concurrency=3,
    )
    store = BudgetStore(engine, config, redis=counter)
    org = [store.budgets["org:acme"]]
    assert (await store.reserve(org, "big:1", 0, 1_000_000, 9_600)).decision.admitted
    await store.settle("big:1", 9_600)  # 96 % spent
    held = await asyncio.gather(*(store.reserve(org, f"r{n}:1", 0, 1_000_000, 20) for n in range(20)))
    admitted = [n for n, h in enumerate(held) if h.decision.admitted]
    assert len(admitted) == 3
    assert all(h.throttled == "concurrency" for h in held if not h.decision.admitted)
    await store.settle(f"r{admitted[0]}:1", 20)
    assert (await store.reserve(org, "after:1", 0, 1_000_000, 20)).decision.admitted
    store.close()


async def test_past_the_throttle_share_only_so_many_calls_a_minute(
    engine: AsyncEngine, counter: Redis | None
) -> None:
    """Past 95 %, with 4 calls a minute: the calls admitted in the last minute count, settled
    or not, and the fifth is refused as throttled."""
    config = BudgetsConfig(
        orgs=({"org": "acme", "limit_usd": Decimal("0.01")},),  # type: ignore[arg-type]
        throttle_per_minute=4,
    )
    store = BudgetStore(engine, config, redis=counter)
    org = [store.budgets["org:acme"]]
    assert (await store.reserve(org, "big:1", 0, 1_000_000, 9_600)).decision.admitted  # call 1
    await store.settle("big:1", 9_600)  # 96 % spent
    for n in range(3):  # calls 2 to 4, each settled at once
        assert (await store.reserve(org, f"r{n}:1", 0, 1_000_000, 20)).decision.admitted
        await store.settle(f"r{n}:1", 20)
    refused = await store.reserve(org, "r9:1", 0, 1_000_000, 20)
    assert not refused.decision.admitted and refused.throttled == "per_minute"
    store.close()


async def test_a_reservation_a_stalled_redis_applies_late_is_released(redis_url: str, tmp_path: Path) -> None:
    """Redis stalls: the reservation times out here and goes to the database, but Redis runs it
    when it resumes. It held the call's worst case for the lease (600 s), counted twice; it is
    released, at no cost, at the first reservation after Redis answers again."""
    host_port = redis_url.split("//")[1].split("/")[0]
    host, port = host_port.split(":")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'stall.db'}")
    await migrate(engine)
    direct: Redis = create_redis(redis_url)
    now = [time.time()]
    budget = Budget("org:stall", 1_000_000, "month")
    with FaultProxy(host, int(port)) as proxy:
        client: Redis = create_redis(redis_url.replace(host_port, f"127.0.0.1:{proxy.port}"))
        store = BudgetStore(engine, BudgetsConfig(redis_timeout_ms=200), clock=lambda: now[0], redis=client)
        try:
            assert (await store.reserve([budget], "r0", 10, 600_000, 100)).decision.admitted
            proxy.set(latency_ms=600)  # Redis stalls, then runs what it was sent
            assert (
                await store.reserve([budget], "r1", 10, 600_000, 100)
            ).decision.admitted  # by the database
            await store.settle("r1", 50)
            (book,) = [k for k in await direct.keys("*stall*") if not k.endswith((b":leases", b":rate"))]
            for _ in range(100):
                if await direct.hexists(book, "r:r1"):
                    break
                await asyncio.sleep(0.02)
            assert await direct.hexists(book, "r:r1")  # applied late: a phantom reservation
            for _ in range(100):  # and its reply, held as long on the way back, has come
                if not client.wire.waiting:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.02)
            proxy.clear()
            now[0] += 10  # past the outage's back-off: Redis is asked again
            assert (await store.reserve([budget], "r2", 10, 600_000, 100)).decision.admitted
            for _ in range(100):
                if not await direct.hexists(book, "r:r1"):
                    break
                await asyncio.sleep(0.02)
            held = {k: v for k, v in (await direct.hgetall(book)).items() if k.startswith(b"r:")}
            assert sorted(held) == [b"r:r0", b"r:r2"]
            assert int(await direct.hget(book, "reserved")) == sum(int(v) for v in held.values())
        finally:
            store.close()
            await client.aclose()
            await direct.aclose()
            await engine.dispose()


async def test_a_budget_that_comes_back_counts_what_was_spent_meanwhile(
    engine: AsyncEngine, counter: Redis | None
) -> None:
    """A run-time day budget over the config's month budget, then deleted: the month's comes
    back counting the day's spend. A user's budget deleted, then set again: the spend made
    while it was not in force counts too."""
    store = BudgetStore(
        engine,
        BudgetsConfig(orgs=({"org": "acme", "limit_usd": "0.01"},)),  # type: ignore[arg-type]
        redis=counter,
    )
    month = store.budgets["org:acme"]

    async def charged(budget: Budget, rid: str, cost: int, user: str = "ann") -> list[int]:
        held = await store.reserve([budget], f"{rid}:1", 0, 1_000_000, 10)
        assert held.decision.admitted
        await store.settle(f"{rid}:1", cost)
        await spend(engine, rid, cost, user)
        return [usage.spent_micro for usage in held.usages]

    await charged(month, "r1", 100)
    day = await store.set_limit(Budget("org:acme", 5_000, "day"))
    await charged(day, "r2", 250)
    assert await store.remove_limit("org:acme") == month  # the config's applies again
    assert await charged(month, "r3", 1) == [350]
    bob = await store.set_limit(Budget("org:acme/user:bob", 10_000, "month"))
    await charged(bob, "r4", 100, "bob")
    assert await store.remove_limit(bob.scope) is None
    await spend(engine, "r5", 250, "bob")  # no budget of bob's in force
    await store.set_limit(bob)
    assert await charged(bob, "r6", 1, "bob") == [350]
    store.close()


async def test_a_budget_that_comes_back_counts_spend_the_ledger_records_late(
    engine: AsyncEngine, counter: Redis | None
) -> None:
    """The ledger lags (its flush interval, calls under way at the change, another replica not
    yet polled): for a while after the change, reservations raise the period again, at most
    once a second, so a row written late still counts."""
    now = [time.time()]
    config = BudgetsConfig(orgs=({"org": "acme", "limit_usd": "0.01"},))  # type: ignore[arg-type]
    store = BudgetStore(engine, config, clock=lambda: now[0], redis=counter)
    month = store.budgets["org:acme"]

    async def reserved(rid: str) -> int:
        held = await store.reserve([month], f"{rid}:1", 0, 1_000_000, 10)
        assert held.decision.admitted
        await store.settle(f"{rid}:1", 1)
        await spend(engine, rid, 1)
        return held.usages[0].spent_micro

    day = await store.set_limit(Budget("org:acme", 5_000, "day"))
    held = await store.reserve([day], "r1:1", 0, 1_000_000, 10)
    await store.settle("r1:1", 250)  # its ledger row is not written yet
    await store.remove_limit("org:acme")
    assert await reserved("r2") == 0
    await spend(engine, "r1", 250)  # the ledger's late row
    assert await reserved("r3") == 1  # raised less than a second ago: not again yet
    now[0] += 1.5
    assert await reserved("r4") == 252  # raised again: r1's 250, r2 and r3
    assert held.decision.admitted
    store.close()


def test_no_two_tenants_share_a_budget_hash() -> None:
    """An org named ``theta}:user:evil`` and the user ``evil}`` of org ``theta`` had one hash in
    Redis: one tenant's calls spent the other's budget."""
    org = Budget(scope_of("theta}:user:evil"), 1_000, "day")
    user = Budget(scope_of("theta", "user", "evil}"), 1_000, "day")
    assert org.scope != user.scope
    assert book_key(org, "2026-11-26") != book_key(user, "2026-11-26")
    assert book_key(ORG, "2026-11") == "sg:budget:{acme}:2026-11"  # plain names keep their keys
    assert book_key(ANN, "2026-11-26") == "sg:budget:{acme}:user:ann:2026-11-26"

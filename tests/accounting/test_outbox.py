"""The ledger's outbox: spooled first, written in batches, idempotent, and replayed after a crash."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from sluicegate import RequestContext, create_gateway
from sluicegate.accounting.ledger import COLUMNS, Row
from sluicegate.accounting.outbox import Outbox, insert_rows
from sluicegate.store.db import create_engine, migrate
from sluicegate.store.tables import usage_ledger
from sluicegate.testing import mock_settings


def make_row(request_id: str, attempt: int = 1, cost: int = 100, priced_from: str = "usage") -> Row:
    values = {
        "request_id": request_id,
        "attempt": attempt,
        "at": 1_700_000_000.0,
        "org": "acme",
        "user": None,
        "key_id": None,
        "feature": "chat",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "prompt_tokens": 10,
        "cached_tokens": 0,
        "completion_tokens": 5,
        "reasoning_tokens": 0,
        "cost_micro": cost,
        "saved_micro": 0,
        "cache": "miss",
        "status": 200,
        "latency_ms": 3,
        "priced_from": priced_from,
    }
    return tuple(values[name] for name in COLUMNS)


async def totals(engine: AsyncEngine) -> tuple[int, int]:
    """Rows and their summed cost."""
    async with engine.connect() as connection:
        result = await connection.execute(
            select(func.count(), func.coalesce(func.sum(usage_ledger.c.cost_micro), 0))
        )
        count, cost = result.one()
    return int(count), int(cost)


async def test_rows_go_in_exactly_as_they_were_recorded(engine: AsyncEngine) -> None:
    """Every value comes back with its type: None, a float time to the last digit, an
    amount past 32 bits, quotes and non-ASCII text."""
    odd = dict(zip(COLUMNS, make_row("r-odd"), strict=True))
    odd.update(
        at=1_795_670_544.464593, user='ann "the boss" Ünal', key_id="k_1", cost_micro=9_000_000_000_123
    )
    rows = [make_row("r-plain"), tuple(odd[name] for name in COLUMNS), make_row("r-plain")]  # twice: once in
    await insert_rows(engine, rows)
    async with engine.connect() as connection:
        found = (await connection.execute(select(*(usage_ledger.c[n] for n in COLUMNS)).order_by("id"))).all()
    assert [tuple(row) for row in found] == rows[:2]


async def test_a_batch_of_any_size_goes_in_whole_and_once(engine: AsyncEngine) -> None:
    """101 rows (SQLite: statements of 64, 32, 4 and 1 rows), with a row repeated across two
    of those statements and rows already there: each row once, in order."""
    rows = [make_row(f"r{n}", cost=n) for n in range(100)]
    await insert_rows(engine, rows[:3])
    await insert_rows(engine, [*rows, rows[70]])
    assert await totals(engine) == (100, sum(range(100)))
    async with engine.connect() as connection:
        found = (await connection.execute(select(usage_ledger.c.request_id).order_by("id"))).scalars().all()
    assert found == [f"r{n}" for n in range(100)]


async def test_rows_are_spooled_at_the_end_of_the_turn_then_written_and_the_spool_emptied(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    outbox = Outbox(engine, tmp_path / "spool", batch=2)
    await outbox.start()
    for n in range(5):
        outbox.add(make_row(f"r{n}"))
    spool = list((tmp_path / "spool").glob("*.jsonl"))
    assert spool == []  # nothing written yet this turn
    await asyncio.sleep(0)
    (path,) = (tmp_path / "spool").glob("*.jsonl")
    assert len(path.read_bytes().splitlines()) == 5  # durable before the database has them
    await outbox.flush()
    assert await totals(engine) == (5, 500)
    assert path.stat().st_size == 0
    await outbox.aclose()
    assert not path.exists()


async def test_a_row_the_database_refuses_does_not_hold_back_the_others(
    engine: AsyncEngine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row PostgreSQL refuses (a user longer than its column, a NUL byte) is dropped, logged;
    the rows of its batch around it go in (SQLite takes them all)."""
    bad = [dict(zip(COLUMNS, make_row(f"bad{n}"), strict=True)) for n in range(2)]
    bad[0]["user"], bad[1]["user"] = "u" * 200, "a\x00b"
    rows = [make_row("good1"), *(tuple(b[n] for n in COLUMNS) for b in bad), make_row("good2")]
    outbox = Outbox(engine, tmp_path / "spool", batch=10)
    await outbox.start()
    for row in rows:
        outbox.add(row)
    await outbox.flush()
    count, _ = await totals(engine)
    await outbox.aclose()
    if engine.dialect.name == "postgresql":
        assert count == 2 and sum("refused a row" in r.getMessage() for r in caplog.records) == 2
    else:
        assert count == 4


async def test_a_row_delivered_twice_and_out_of_order_counts_once(engine: AsyncEngine) -> None:
    rows = [make_row("a"), make_row("b"), make_row("a", attempt=2, cost=7)]
    await insert_rows(engine, rows)
    await insert_rows(engine, [rows[2], rows[0], rows[1], rows[0]])
    assert await totals(engine) == (3, 207)


async def test_rows_wait_while_the_database_is_down_and_go_in_when_it_returns(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'late.db'}")  # no table yet: "down"
    outbox = Outbox(engine, tmp_path / "spool", max_pending=3)
    try:
        for n in range(10):  # more than max_pending: the spool file is then the only full copy
            outbox.add(make_row(f"r{n}"))
        await asyncio.sleep(0)
        with pytest.raises(OperationalError, match="no such table"):
            await outbox.flush()
        assert outbox.backlog > 0
        await migrate(engine)  # the database is back
        await outbox.flush()
        assert await totals(engine) == (10, 1000)
        assert outbox.backlog == 0
        outbox.add(make_row("after"))
        await outbox.flush()
        assert await totals(engine) == (11, 1100)
    finally:
        await outbox.aclose()
        await engine.dispose()


async def test_a_process_started_while_the_database_is_down_writes_once_it_is_back(tmp_path: Path) -> None:
    """Its start could not replay a dead process's rows: its writer runs all the same, and
    writes its own rows when the database returns (the orphans at the next replay)."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'late.db'}")  # no table yet: "down"
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "1-dead.jsonl").write_bytes(orjson.dumps(make_row("orphan")) + b"\n")
    outbox = Outbox(engine, spool, interval_s=0.05, replay_interval_s=0.2)
    try:
        with pytest.raises(OperationalError):
            await outbox.start()
        outbox.add(make_row("mine"))
        await migrate(engine)  # the database is back
        for _ in range(100):
            if await totals(engine) == (2, 200):
                break
            await asyncio.sleep(0.05)
        assert await totals(engine) == (2, 200)
    finally:
        await outbox.aclose()
        await engine.dispose()


async def test_a_live_process_spool_is_left_alone(engine: AsyncEngine, tmp_path: Path) -> None:
    alive = Outbox(engine, tmp_path / "spool")
    alive.add(make_row("held"))
    await asyncio.sleep(0)  # spooled, and locked by `alive`
    other = Outbox(engine, tmp_path / "spool")
    assert await other.replay_orphans() == 0
    assert await totals(engine) == (0, 0)
    await alive.aclose()
    assert await totals(engine) == (1, 100)


_CRASHER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from pathlib import Path
    from sluicegate.accounting.outbox import Outbox
    from sluicegate.store.db import create_engine
    sys.path.insert(0, {tests!r})
    from test_outbox import make_row

    async def main():
        outbox = Outbox(create_engine({url!r}), Path({spool!r}), interval_s=3600)
        for n in range(20):
            outbox.add(make_row(f"crash-{{n}}"))
        await asyncio.sleep(0)  # spooled: the rows are durable
        await outbox.flush() if {flush_some} else None
        for n in range(20, 25):
            outbox.add(make_row(f"crash-{{n}}"))
        for n in range(3):  # attempts under way: upstream has them, their outcome never comes
            outbox.begin(make_row(f"inflight-{{n}}", cost=7, priced_from="pending"))
        outbox.begin(make_row("answered", priced_from="pending"))
        outbox.add(make_row("answered", cost=50))
        outbox.begin(make_row("refused", priced_from="pending"))
        outbox.drop("refused", 1)
        await asyncio.sleep(0)
        os.kill(os.getpid(), signal.SIGKILL)  # before the rest reaches the database

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("flush_some", [False, True])
async def test_rows_of_a_killed_process_are_replayed_once(
    engine: AsyncEngine, store_url: str, tmp_path: Path, flush_some: bool
) -> None:
    spool = tmp_path / "spool"
    script = _CRASHER.format(
        tests=str(Path(__file__).parent), url=store_url, spool=str(spool), flush_some=flush_some
    )
    process = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, timeout=60
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    assert await totals(engine) == ((20, 2000) if flush_some else (0, 0))
    survivor = Outbox(engine, spool)
    await survivor.start()  # replays what the dead process left
    try:
        # 25 rows, "answered" once at its real cost, 3 interrupted at their estimate, no "refused"
        assert await totals(engine) == (29, 2500 + 50 + 3 * 7)
        async with engine.connect() as connection:
            result = await connection.execute(
                select(usage_ledger.c.request_id, usage_ledger.c.priced_from).where(
                    usage_ledger.c.priced_from != "usage"
                )
            )
            assert sorted(result.all()) == [(f"inflight-{n}", "interrupted") for n in range(3)]
        assert not [p for p in spool.glob("*.jsonl") if p.stat().st_size]
        assert await survivor.replay_orphans() == 0
    finally:
        await survivor.aclose()


async def test_a_pending_attempt_is_spooled_at_once_and_kept_through_truncation(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    outbox = Outbox(engine, tmp_path / "spool")
    await outbox.start()
    outbox.begin(make_row("slow", priced_from="pending"))
    (path,) = (tmp_path / "spool").glob("*.jsonl")
    assert b'"slow"' in path.read_bytes()  # no loop turn needed
    outbox.add(make_row("quick"))
    await outbox.flush()
    assert await totals(engine) == (1, 100)  # a pending row never goes in from a live process
    assert b'"slow"' in path.read_bytes() and b'"quick"' not in path.read_bytes()
    outbox.add(make_row("slow", cost=30))  # its outcome
    await outbox.flush()
    assert await totals(engine) == (2, 130) and path.stat().st_size == 0
    outbox.begin(make_row("left-open", cost=9, priced_from="pending"))
    await outbox.aclose()  # a clean stop with an attempt still open: recorded as interrupted
    assert await totals(engine) == (3, 139)


async def test_a_gateway_closed_under_load_writes_every_row_at_once(tmp_path: Path) -> None:
    """The embedded default (SQLite), closed right after 3,000 calls: every row is in the
    database when close returns, and close does not wait out SQLite's busy timeout. (A write of
    the outbox's background task cut short by the shutdown left the database's write lock held:
    the last flush waited 5 s, failed with "database is locked", and left the rows spooled for
    the next start.)"""
    settings = mock_settings(data_dir=tmp_path / "data", cache={"sql": {"enabled": False}})
    async with create_gateway(settings) as gateway:
        context = RequestContext("acme", None, "chat")
        for n in range(3000):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q {n}"}]}
            await gateway.send(gateway.new_call("chat", body, context))
        closing = time.monotonic()
    assert time.monotonic() - closing < 4
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'sluicegate.db'}")
    try:
        rows, _ = await totals(engine)
        assert rows == 3000
    finally:
        await engine.dispose()

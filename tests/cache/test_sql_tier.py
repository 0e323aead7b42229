"""Tests for sluicegate.cache.sql_tier on SQLite (a file) and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from sluicegate.cache.entry import Entry, encode
from sluicegate.cache.sql_tier import SqlTier
from sluicegate.store.db import create_engine, migrate
from sluicegate.store.tables import cache_entries

pytestmark = pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")

COMPRESS = 256


@pytest.fixture
async def sql(engine: AsyncEngine) -> AsyncIterator[SqlTier]:
    """The tier; anything still queued is flushed afterwards."""
    tier = SqlTier(engine, COMPRESS)
    yield tier
    await tier.flush(timeout_s=2)


def key(
    digest: str, org: str = "acme", feature: str = "chat", namespace: int = 0, model: str = "gpt-4o-mini"
) -> str:
    """A key in the layout `cache_key` builds."""
    return f"sg:c:{{o:{org}}}:{feature}:{namespace}:{model}:{digest}"


def entry(**changes: object) -> Entry:
    """An entry created at t=1000 that expires an hour later, with ``changes``."""
    base = Entry("chat", b'{"choices":[]}', 1000.0, 4600.0, '"e"', "chat", "acme", None, "gpt-4o-mini")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def rows(engine: AsyncEngine) -> int:
    """How many rows cache_entries holds."""
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(cache_entries))).scalar_one())


async def test_set_and_get(sql: SqlTier) -> None:
    """A written entry reads back equal; an unknown key is None."""
    stored = entry(user="ann", tags=("q3",), body=b'{"content":"' + b"okr " * 200 + b'"}')
    await sql.set(key("a"), stored, 3600)
    assert await sql.get(key("a")) == stored
    assert await sql.get(key("missing")) is None


async def test_row_facts_come_from_the_key_and_entry(sql: SqlTier, engine: AsyncEngine) -> None:
    """The row holds the key's namespace, the entry's facts, its stored size and keep_until."""
    stored = entry(feature="insights", org="globex", user="bob", model="gpt-4o", tags=("a", "b"))
    await sql.set(key("a", "globex", "insights", 7, "gpt-4o"), stored, 7200)
    c = cache_entries.c
    query = select(c.namespace, c.feature, c.org, c.user, c.model, c.tags, c.size_bytes, c.keep_until)
    async with engine.connect() as conn:
        row = (await conn.execute(query)).one()
    assert tuple(row) == (
        7,
        "insights",
        "globex",
        "bob",
        "gpt-4o",
        "|a|b|",
        len(encode(stored, COMPRESS)),
        8200.0,
    )


async def test_upsert_replaces_the_value_and_keeps_the_hits(sql: SqlTier) -> None:
    """Writing a key again replaces its answer, but the hits counted on the row are kept."""
    await sql.set(key("a"), entry(), 3600)
    await sql.add_hits({key("a"): 5, key("missing"): 1})
    await sql.touch(key("a"), 1)
    newer = entry(body=b'{"choices":[1]}', created_at=2000.0, expires_at=5600.0)
    await sql.set(key("a"), newer, 3600)
    found = await sql.get(key("a"))
    assert found is not None
    assert found.body == newer.body and found.created_at == 2000.0
    assert found.hits == 6


async def test_enqueue_is_written_behind_and_flushed(sql: SqlTier, engine: AsyncEngine) -> None:
    """Queued rows wait for the writer; a later write of a key replaces its queued row; flush writes all."""
    for i in range(5):
        sql.enqueue(key(f"k{i}"), entry(), 3600)
    sql.enqueue(key("k0"), entry(body=b'{"latest":true}'), 3600)
    assert sql.pending == 5
    await sql.flush()
    assert sql.pending == 0
    assert await rows(engine) == 5
    assert (await sql.get(key("k0"))).body == b'{"latest":true}'  # type: ignore[union-attr]


async def test_background_writer_needs_no_flush(sql: SqlTier) -> None:
    """The writer task writes a queued row on its own, shortly after."""
    sql.enqueue(key("a"), entry(), 3600)
    for _ in range(500):
        if await sql.get(key("a")) is not None:
            break
        await asyncio.sleep(0.01)
    assert await sql.get(key("a")) is not None
    assert sql.pending == 0


ENTRIES = {
    "a": entry(feature="chat", org="acme", user="ann", model="gpt-4o-mini", tags=("q3", "okr")),
    "b": entry(feature="insights", org="acme", user="bob", model="gpt-4o", tags=("okr",)),
    "c": entry(feature="chat", org="globex", user=None, model="gpt-4o-mini", tags=("q4",)),
}


@pytest.mark.parametrize(
    ("match", "deleted"),
    [
        ({"feature": "chat"}, {"a", "c"}),
        ({"org": "acme"}, {"a", "b"}),
        ({"user": "bob"}, {"b"}),
        ({"model": "gpt-4o-mini"}, {"a", "c"}),
        ({"key": key("c", "globex")}, {"c"}),
        ({"tag": "okr"}, {"a", "b"}),
        ({"tag": "q"}, set()),
        ({"feature": "chat", "org": "acme"}, {"a"}),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
async def test_delete_where_by_each_field(sql: SqlTier, match: dict[str, str], deleted: set[str]) -> None:
    """delete_where removes exactly the rows every given field matches, and counts them."""
    for name, stored in ENTRIES.items():
        await sql.set(key(name, stored.org), stored, 3600)
    assert await sql.delete_where(**match) == len(deleted)
    left = {name for name, stored in ENTRIES.items() if await sql.get(key(name, stored.org)) is not None}
    assert left == set(ENTRIES) - deleted


async def test_delete_where_drops_queued_rows(sql: SqlTier) -> None:
    """A queued row that matches is dropped before it is ever written; the others are kept."""
    sql.enqueue(key("a"), entry(org="acme"), 3600)
    sql.enqueue(key("b", "globex"), entry(org="globex", tags=("q3",)), 3600)
    sql.enqueue(key("c", "initech"), entry(org="initech", feature="insights"), 3600)
    await sql.delete_where(feature="chat")
    await sql.flush()
    assert await sql.get(key("a")) is None
    assert await sql.get(key("b", "globex")) is None
    assert await sql.get(key("c", "initech")) is not None


async def test_an_invalidation_elsewhere_drops_every_queued_row(sql: SqlTier) -> None:
    """Another process's invalidation cannot say which rows it deletes: none queued here lands."""
    sql.enqueue(key("a"), entry(org="acme"), 3600)
    sql.enqueue(key("b", "globex"), entry(org="globex"), 3600)
    await sql.drop_queued()
    assert sql.pending == 0
    await sql.flush()
    assert await sql.get(key("a")) is None and await sql.get(key("b", "globex")) is None


@pytest.mark.postgres
async def test_delete_where_wins_over_a_write_in_flight(database_url: str) -> None:
    """A row the writer is busy writing when an invalidation runs does not survive it."""
    # A second transaction holds the writer's INSERT on the key's unique index while the
    # invalidation runs, which makes the race certain: the DELETE must wait for the write.
    engine = create_engine(database_url)
    await migrate(engine)
    sql = SqlTier(engine, COMPRESS)
    wanted = key("b", "globex")
    try:
        async with engine.connect() as blocker:
            blocked = await blocker.begin()
            row = sql._row(wanted, entry(org="globex"), 3600)
            await blocker.execute(insert(cache_entries).values(**row))
            sql.enqueue(wanted, entry(org="globex", tags=("q3",)), 3600)
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO cache_entries%'"
            )
            async with engine.connect() as watcher:
                for _ in range(500):
                    if (await watcher.execute(waiting)).scalar_one():
                        break
                    await watcher.rollback()  # pg_stat_activity is a snapshot per transaction
                    await asyncio.sleep(0.01)
                else:
                    pytest.fail("the writer's INSERT never waited on the held row")
            invalidation = asyncio.ensure_future(sql.delete_where(tag="q3"))
            await asyncio.sleep(0.2)
            await blocked.rollback()
        await asyncio.wait_for(invalidation, 5)
        await sql.flush(timeout_s=5)
        assert await sql.get(wanted) is None
    finally:
        await sql.flush(timeout_s=1)
        await engine.dispose()


@pytest.mark.parametrize(("wanted", "other"), [("q_", "qa"), ("50%", "50%-off"), ("a", "a|b")])
async def test_tags_match_exactly(sql: SqlTier, wanted: str, other: str) -> None:
    """Deleting a tag never deletes entries that only carry a look-alike tag (LIKE wildcards, bars)."""
    await sql.set(key("wanted"), entry(tags=(wanted,)), 3600)
    await sql.set(key("other"), entry(tags=(other,)), 3600)
    assert await sql.delete_where(tag=wanted) == 1
    assert await sql.get(key("wanted")) is None
    assert await sql.get(key("other")) is not None


LOOK_ALIKE_TAGS = ["a", "a_", "a%", "a|b", "b", "a\\", "a\\_", "%7C", "a%7Cb", "a%257Cb", "_", "%"]


async def test_every_look_alike_tag_is_its_own(sql: SqlTier) -> None:
    """Among tags that differ only by wildcards, bars, backslashes and escapes, each deletes only itself."""
    for index, tag in enumerate(LOOK_ALIKE_TAGS):
        await sql.set(key(f"t{index}"), entry(tags=(tag, "common")), 3600)
    for index, tag in enumerate(LOOK_ALIKE_TAGS):
        assert await sql.delete_where(tag=tag) == 1, tag
        assert await sql.get(key(f"t{index}")) is None
    assert await sql.delete_where(tag="common") == 0


@pytest.mark.parametrize("old", [25, 20])
async def test_purge_deletes_expired_rows_in_batches(sql: SqlTier, engine: AsyncEngine, old: int) -> None:
    """Rows past keep_until go, batch after batch, until none is left; kept rows stay."""
    for i in range(old):
        await sql.set(key(f"old{i}"), entry(), 10)  # kept until t=1010
    for i in range(2):
        await sql.set(key(f"new{i}"), entry(created_at=5000.0, expires_at=8600.0), 3600)
    assert await sql.purge(now=2000.0, batch=10) == old
    assert await rows(engine) == 2
    assert await sql.purge(now=2000.0, batch=10) == 0


async def test_size_per_feature(sql: SqlTier) -> None:
    """size reports entries and stored bytes per feature."""
    big = entry(body=b"[" + b"1," * 400 + b"1]")
    await sql.set(key("a"), entry(), 3600)
    await sql.set(key("b"), big, 3600)
    await sql.set(key("c", feature="insights"), entry(feature="insights"), 3600)
    sizes = await sql.size()
    expected_chat = len(encode(entry(), COMPRESS)) + len(encode(big, COMPRESS))
    assert sizes == {
        "chat": (2, expected_chat),
        "insights": (1, len(encode(entry(feature="insights"), COMPRESS))),
    }


async def test_bump_and_namespaces(sql: SqlTier) -> None:
    """Bumping a feature returns its new version; namespaces lists every bumped feature."""
    assert await sql.namespaces() == {}
    assert await sql.bump("chat") == 1
    assert await sql.bump("chat") == 2
    assert await sql.bump("insights") == 1
    assert await sql.namespaces() == {"chat": 2, "insights": 1}


async def test_concurrent_bumps_are_not_lost(sql: SqlTier) -> None:
    """Bumps from several callers at once all count."""
    versions = await asyncio.gather(*(sql.bump("chat") for _ in range(10)))
    assert sorted(versions) == list(range(1, 11))
    assert await sql.namespaces() == {"chat": 10}


async def test_add_stats_sums_counters(sql: SqlTier) -> None:
    """Counters added twice are summed per feature and metric."""
    await sql.add_stats({("chat", "misses"): 2, ("chat", "hits_memory"): 5})
    await sql.add_stats({("chat", "misses"): 1, ("insights", "bypass"): 4})
    assert await sql.stats() == {
        ("chat", "misses"): 3,
        ("chat", "hits_memory"): 5,
        ("insights", "bypass"): 4,
    }

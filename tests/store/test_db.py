"""The SQL engine, migrations and the ping probe, on SQLite."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError

from sluicegate.store.db import create_engine, each_alone, migrate, ping, refused_for_content


async def test_sqlite_folder_is_created(tmp_path: Path) -> None:
    """The embedded default's folder is made when the engine is created."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'deep' / 'er' / 'db.sqlite'}")
    assert (tmp_path / "deep" / "er").is_dir()
    await engine.dispose()


async def test_a_new_sqlite_file_is_its_owners_alone(tmp_path: Path) -> None:
    """It holds cached answers and key digests: mode 0600, as its WAL files then are."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await migrate(engine)
    await engine.dispose()
    for name in ("db.sqlite", "db.sqlite-wal", "db.sqlite-shm"):
        if (tmp_path / name).exists():
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


async def test_migrate_is_idempotent_and_creates_the_tables(tmp_path: Path) -> None:
    """Migrating twice leaves the schema at head with the virtual_keys table."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await migrate(engine)
    await migrate(engine)
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    assert {"virtual_keys", "alembic_version"} <= set(tables)
    await engine.dispose()


async def test_ping(tmp_path: Path) -> None:
    """ping succeeds on a reachable database and raises on an unreachable one."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await ping(engine)
    await engine.dispose()
    unreachable = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    with pytest.raises(ConnectionRefusedError):
        await ping(unreachable)
    await unreachable.dispose()


class _Orig(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "content"),
    [("22001", True), ("22021", True), ("23502", True), ("25006", False), ("40P01", False), ("53300", False)],
)
async def test_only_a_row_refused_for_what_it_holds_is_dropped(sqlstate: str, content: bool) -> None:
    """A string too long or a NUL (classes 22, 23) drops that row; a read-only database, a
    deadlock or too many connections drop nothing: the rows wait for the next try."""
    error = DBAPIError("INSERT …", {}, _Orig(sqlstate))
    assert refused_for_content(error) is content
    written: list[int] = []

    async def write(rows: Sequence[int]) -> None:
        if rows[0] == 2:
            raise error
        written.extend(rows)

    if content:
        assert await each_alone([1, 2, 3], write, "test") == 1 and written == [1, 3]
    else:
        with pytest.raises(DBAPIError):
            await each_alone([1, 2, 3], write, "test")

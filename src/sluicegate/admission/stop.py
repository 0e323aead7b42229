"""The emergency stop: no more upstream calls, globally or for one org, on every replica within
a second; cached answers are still served.

Stops live in the ``emergency_stops`` table. Every worker reads it every
``controls.poll_interval_s`` (0.5 s by default) in the same query round that picks up key
revocations, so a stop or a revocation set on any replica, by the admin API or the CLI, is
obeyed everywhere within that interval plus one query. The stage sits between the cache and
the provider: a hit never reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, or_, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from ..background import cancel_and_wait
from ..calls import Call, Reply
from ..config import SpendBreakerConfig
from ..config_money import org_of_request
from ..errors import EmergencyStopped, InvalidRequest
from ..store.tables import emergency_stops, stop_lifts, virtual_keys

__all__ = [
    "Controls",
    "SpendBreaker",
    "Stop",
    "StopUpstream",
    "clear_stop",
    "list_stops",
    "scope_of",
    "set_stop",
]

logger = logging.getLogger("sluicegate.controls")
Send = Callable[[Call], Awaitable[Reply]]
GLOBAL = "global"
_CLOCK_SKEW = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class Stop:
    """A stop in force: its scope (``global`` or ``org:<org>``), why, and since when."""

    scope: str
    reason: str
    since: float

    def to_dict(self) -> dict[str, object]:
        return {"scope": self.scope, "reason": self.reason, "since": self.since}


# Stands for the stops of a worker that could not read them at start (`Controls.unread`).
UNREAD = Stop(GLOBAL, "the emergency stops could not be read", 0.0)


def scope_of(org: str | None) -> str:
    """The scope of a stop for ``org``, or the global one."""
    if org is not None and not org:
        raise InvalidRequest("org must be a non-empty string", param="org")
    return GLOBAL if org is None else "org:" + org


async def set_stop(engine: AsyncEngine, org: str | None, reason: str, now: float | None = None) -> Stop:
    """Stop upstream calls for ``org`` (None: everyone), or update the reason of a stop in force."""
    if not reason.strip():
        raise InvalidRequest("say why: the reason is shown to every refused caller", param="reason")
    if org is not None:
        org_of_request(org)
    stop = Stop(scope_of(org), reason.strip(), time.time() if now is None else now)
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    statement = insert(emergency_stops).values(scope=stop.scope, reason=stop.reason, since=stop.since)
    statement = statement.on_conflict_do_update(index_elements=["scope"], set_={"reason": stop.reason})
    async with engine.begin() as connection:
        await connection.execute(statement)
    return stop


async def clear_stop(engine: AsyncEngine, org: str | None, now: float | None = None) -> bool:
    """Lift the stop for ``org`` (None: the global one); whether there was one. The time is
    kept: the spend-rate breaker counts only what the org spends from then on."""
    scope = scope_of(org)
    at = time.time() if now is None else now
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    lifted = insert(stop_lifts).values(scope=scope, at=at)
    lifted = lifted.on_conflict_do_update(index_elements=["scope"], set_={"at": at})
    async with engine.begin() as connection:
        result = await connection.execute(delete(emergency_stops).where(emergency_stops.c.scope == scope))
        if result.rowcount:
            await connection.execute(lifted)
    return bool(result.rowcount)


async def list_stops(engine: AsyncEngine) -> list[Stop]:
    """The stops in force."""
    async with engine.connect() as connection:
        rows = await connection.execute(select(emergency_stops).order_by(emergency_stops.c.scope))
        return [Stop(row.scope, row.reason, float(row.since)) for row in rows]


class Controls:
    """This worker's copy of the stops in force, and the poll that keeps it (and the key cache)
    current."""

    def __init__(
        self,
        engine: AsyncEngine,
        forget_keys: Callable[[set[str]], None],
        interval_s: float = 0.5,
        also: tuple[Callable[[], Awaitable[object]], ...] = (),
    ) -> None:
        self._engine = engine
        self._forget_keys = forget_keys
        self._also = also  # more to refresh on each poll (the budgets)
        self._interval = interval_s
        self.stops: dict[str, Stop] = {}
        self._revoked_since = datetime.now(UTC)
        self._expired_since = self._revoked_since
        self._task: asyncio.Task[None] | None = None

    @property
    def unread_since_start(self) -> bool:
        """Whether the stops could not be read yet (`unread`): no upstream calls meanwhile."""
        return self.stops.get(GLOBAL) is UNREAD

    def stop_for(self, org: str) -> Stop | None:
        """The stop that covers ``org``, if any (hot path: two dictionary lookups)."""
        stops = self.stops
        if not stops:
            return None
        return stops.get(GLOBAL) or stops.get("org:" + org)

    def unread(self, error: BaseException) -> None:
        """The stops (and the budgets set at run time) could not be read when this worker
        started: until a poll reads them all, it makes no upstream call (it would not know a
        stop or a hard cap in force). Cached answers are still served."""
        logger.warning(
            "controls: could not read the emergency stops and budgets at start (%s); no upstream "
            "calls from this worker until they are read",
            error,
        )
        self.stops = {GLOBAL: UNREAD}

    async def refresh(self) -> None:
        """Read the stops, and forget cached keys revoked, or whose expiry passed, since the
        last read."""
        stops = {stop.scope: stop for stop in await list_stops(self._engine)}
        unread = self.stops.get(GLOBAL) is UNREAD
        if stops.keys() != self.stops.keys() and not unread:
            logger.warning("emergency stops in force: %s", ", ".join(stops) or "none")
        # Until the whole round has been read (the budgets too), an unread worker stays stopped.
        self.stops = {**stops, GLOBAL: UNREAD} if unread else stops
        since = self._revoked_since - _CLOCK_SKEW  # replicas' clocks differ a little
        now = datetime.now(UTC)
        keys = virtual_keys.c
        # A key cached before its rotation holds no expiry: forget it as the expiry passes.
        expiring = and_(keys.expires_at >= self._expired_since - _CLOCK_SKEW, keys.expires_at <= now)
        async with self._engine.connect() as connection:
            rows = list(
                await connection.execute(
                    select(keys.id, keys.revoked_at).where(or_(keys.revoked_at >= since, expiring))
                )
            )
        if rows:
            self._forget_keys({str(row.id) for row in rows})
        revoked = [_aware(row.revoked_at) for row in rows if row.revoked_at is not None]
        if revoked:
            self._revoked_since = max(self._revoked_since, *revoked)
        self._expired_since = now
        for refresh in self._also:
            await refresh()
        if unread:
            self.stops = stops
            logger.warning("controls: read; emergency stops in force: %s", ", ".join(stops) or "none")

    def start(self) -> None:
        """Poll in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except Exception as exc:  # the database is down: keep what we know
                logger.debug("controls: not refreshed (%s)", exc)

    async def stop(self) -> None:
        """Stop polling."""
        await cancel_and_wait(self._task)
        self._task = None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class StopUpstream:
    """The stage before the provider: refuses upstream calls an emergency stop covers."""

    def __init__(self, send: Send, controls: Controls) -> None:
        self._send = send
        self._controls = controls

    async def __call__(self, call: Call) -> Reply:
        stop = self._controls.stop_for(call.context.org)
        if stop is not None:
            if stop is UNREAD:
                raise EmergencyStopped(
                    "this gateway worker could not read the emergency stops and budgets when it "
                    "started (its database was unreachable), so it makes no upstream call until it "
                    "can; cached answers are still served; try again shortly",
                    code="controls_unavailable",
                    headers={"retry-after": "1"},
                )
            if stop.scope == GLOBAL:
                who, lift = "every org", "sluicegate resume"
            else:
                who, lift = f"the org {call.context.org!r}", f"sluicegate resume --org {call.context.org}"
            raise EmergencyStopped(
                f"upstream calls are stopped for {who} (emergency stop since "
                f"{datetime.fromtimestamp(stop.since, UTC):%Y-%m-%d %H:%M:%S} UTC: {stop.reason}); "
                f"cached answers are still served; an admin lifts it with `{lift}`",
            )
        return await self._send(call)


_SPEND_OF_ORG = "SELECT sum(cost_micro) FROM usage_ledger WHERE org = :org AND at > :since AND attempt >= 1"
_SPEND_BY_ORG = (
    "SELECT org, sum(cost_micro) FROM usage_ledger WHERE at > :since AND attempt >= 1 "
    "GROUP BY org HAVING sum(cost_micro) > :most"
)


class SpendBreaker:
    """Engages an org's emergency stop when the ledger shows it spent more than
    ``spend_breaker.max_usd`` within the last ``window_minutes`` (checked every 5 s on each
    worker; the stop is one row, whichever worker sets it first)."""

    def __init__(
        self, engine: AsyncEngine, config: SpendBreakerConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._config = config
        self._clock = clock
        self._checked_at = 0.0

    async def check(self, stops: dict[str, Stop] | None = None, *, now_please: bool = False) -> list[str]:
        """Stop the orgs over the rate (at most every 5 s, unless ``now_please``); the orgs it
        stopped now."""
        if self._config.max_usd is None:
            return []
        now = self._clock()
        if now - self._checked_at < 5.0 and not now_please:
            return []
        self._checked_at = now
        window_s = self._config.window_minutes * 60
        most = int(self._config.max_usd * 1_000_000)
        since = now - window_s
        async with self._engine.connect() as connection:
            found = await connection.execute(text(_SPEND_BY_ORG), {"since": since, "most": most})
            over = {str(org): int(spent) for org, spent in found.all()}
            if over:  # an org whose stop was lifted within the window: only what it spent since counts
                lifted = select(stop_lifts.c.scope, stop_lifts.c.at).where(stop_lifts.c.at > since)
                for scope, at in (await connection.execute(lifted)).all():
                    org = str(scope).removeprefix("org:")
                    if str(scope).startswith("org:") and org in over:
                        spent = await connection.scalar(text(_SPEND_OF_ORG), {"org": org, "since": at})
                        over[org] = int(spent or 0)
        stopped = []
        for org, spent in over.items():
            if spent <= most or (stops is not None and ("org:" + org) in stops):
                continue
            reason = (
                f"spend-rate breaker: ${int(spent) / 1_000_000:,.4f} in the last "
                f"{self._config.window_minutes:g} minutes (more than ${self._config.max_usd})"
            )
            await set_stop(self._engine, str(org), reason, now)
            logger.warning("emergency stop engaged for org %s by the %s", org, reason)
            stopped.append(str(org))
        return stopped

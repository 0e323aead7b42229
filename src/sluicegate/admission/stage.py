"""The rate-limit stage: before the cache, every request counts against its limits.

With Redis configured the limits live there (`RedisLimiter`), exact across every replica.
While Redis is down each process admits its ``limits.local_share`` of each limit on its own
(`LocalLog`), logs a warning once, and goes back to Redis when it answers again. Without
Redis the limits live in the database (`SqlLimiter`), exact across the workers that share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..calls import Call, Reply
from ..config import RequestLimit
from ..errors import RateLimited, SluicegateError
from ..observe.alerts import Alerts
from .limits import Check, LocalLog, Verdict, checks_for, headers_for
from .outage import DATABASE_ERRORS, REDIS_ERRORS, Outage, shared_or_alone
from .redis_limits import RedisLimiter, verdict_of
from .sql_limits import SqlLimiter

__all__ = ["LimitRequests"]

_WHAT, _ALONE = "rate limits", "this process enforces its share (limits.local_share) of each limit"
Send = Callable[[Call], Awaitable[Reply]]


class LimitRequests:
    """Refuses a request over any of its limits with a 429; adds the RateLimit headers.

    With ``defer`` (the cache stage follows, with a shared tier), the limits' script is sent and
    the call handed on at once: the script leaves with the cache's lookup, in one round trip, and
    the cache stage awaits the verdict (`Call.admit`) before it answers or goes upstream.
    """

    def __init__(
        self,
        send: Send,
        rules: Sequence[RequestLimit],
        redis: RedisLimiter | None,
        sql: SqlLimiter | None,
        local_share: float,
        alerts: Alerts | None = None,
        defer: bool = False,
    ) -> None:
        self._send = send
        self._rules = tuple(rules)
        self._redis = redis
        self._sql = sql
        self._local = LocalLog(local_share)
        self._defer = defer
        alerts = alerts or Alerts()
        self._redis_outage = Outage(alerts, "redis-down:rate-limits", _WHAT, _ALONE)
        self._sql_outage = Outage(alerts, "database-down:rate-limits", _WHAT, _ALONE, "the database", 0)

    async def __call__(self, call: Call) -> Reply:
        checks = checks_for(self._rules, call.context)
        if not checks or call.warming:
            return await self._send(call)
        redis = self._redis
        if redis is not None:
            outage = self._redis_outage
            now = time.monotonic()
            if outage.usable(now):
                if self._defer:
                    return await self._deferred(call, checks, redis.admit_soon(checks, call.request_id), now)
                # `shared_or_alone` inlined: one coroutine fewer on every limited request.
                try:  # the shared count; this process's share while Redis fails
                    verdict = await redis.admit(checks, call.request_id)
                except REDIS_ERRORS as exc:
                    outage.failed(exc, now)
                    verdict = self._local.check(checks, time.time())
                else:
                    outage.answered()
            else:  # Redis failed a moment ago: this process's share
                verdict = self._local.check(checks, time.time())
        elif self._sql is not None:
            verdict = await shared_or_alone(
                self._sql.admit(checks, call.request_id),
                lambda: self._local.check(checks, time.time()),
                self._sql_outage,
                time.monotonic(),
                DATABASE_ERRORS,
            )
        else:
            verdict = self._local.check(checks, time.time())
        headers = headers_for(checks, verdict)
        if not verdict.admitted:
            raise _refusal(checks, verdict, headers)
        try:
            reply = await self._send(call)
        except SluicegateError as exc:  # counted all the same: its answer says so too
            raise exc.with_headers(headers) from exc.__cause__
        reply.headers.update(headers)
        return reply

    async def _deferred(
        self, call: Call, checks: Sequence[Check], pending: asyncio.Future[Any], now: float
    ) -> Reply:
        """Hand the call on with its limits' verdict to come (see the class's docstring)."""
        decided: list[dict[str, str]] = []  # the headers, once the verdict is read

        async def admit() -> None:
            call.admit = None
            try:
                verdict = verdict_of(await pending)
            except REDIS_ERRORS as exc:
                self._redis_outage.failed(exc, now)
                verdict = self._local.check(checks, time.time())
            else:
                self._redis_outage.answered()
            headers = headers_for(checks, verdict)
            decided.append(headers)
            if not verdict.admitted:
                raise _refusal(checks, verdict, headers)

        call.admit = admit
        try:
            reply = await self._send(call)
            if call.admit is admit:  # answered without reading it (none of the cache's ways does)
                await admit()
        except SluicegateError as exc:
            if call.admit is admit:  # failed before it was read: read now, for the headers
                with contextlib.suppress(SluicegateError):
                    await admit()
            if decided:  # counted all the same: its answer says so too
                raise exc.with_headers(decided[0]) from exc.__cause__
            raise
        finally:
            if call.admit is admit:  # cancelled before it was read: the script ran all the same
                call.admit = None
                pending.cancel()
        reply.headers.update(decided[0])
        return reply


def _refusal(checks: Sequence[Check], verdict: Verdict, headers: dict[str, str]) -> RateLimited:
    assert verdict.blocked is not None
    rule = checks[verdict.blocked].rule
    return RateLimited(
        f"rate limit reached: at most {rule.limit} requests per {rule.window_s} s for each "
        f"{rule.per}{' in feature ' + rule.feature if rule.feature else ''}; "
        f"try again in {verdict.retry_after_s} s",
        headers=headers,
    )

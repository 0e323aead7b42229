"""The rate-limit stage: before the cache, every request counts against its limits.

With Redis configured the limits live there (`RedisLimiter`), exact across every replica.
While Redis is down each replica admits its ``limits.local_share`` of each limit on its own
(`LocalLog`), logs a warning once, and goes back to Redis when it answers again. Without
Redis the limits live in the database (`SqlLimiter`), exact across the workers that share it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from ..calls import Call, Reply
from ..config import RequestLimit
from ..errors import RateLimited
from ..observe.alerts import Alerts
from .limits import LocalLog, checks_for, headers_for
from .redis_limits import RedisLimiter
from .sql_limits import SqlLimiter

__all__ = [
    "DATABASE_ERRORS",
    "REDIS_RETRY_S",
    "LimitRequests",
    "global_or_share",
    "redis_answered",
    "redis_failed",
]

_REDIS_DOWN = "redis-down:rate-limits"
_WHAT, _HOLDS = "rate limits", "enforces its share (limits.local_share) of each limit"
_REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, TimeoutError)
_DB_DOWN = "database-down:rate-limits"
# After Redis fails (a timeout: it is stopped or unreachable), how long a replica counts alone
# before it tries Redis again: a stalled Redis costs one request its timeout, not every one.
REDIS_RETRY_S = 5.0
Send = Callable[[Call], Awaitable[Reply]]
T = TypeVar("T")


def redis_failed(
    alerts: Alerts, key: str, what: str, holds: str, error: BaseException, store: str = "Redis"
) -> None:
    """Raise the operator alert ``key``: the shared store failed, so this replica counts alone."""
    alerts.alert(
        key, f"{what}: {store} is unreachable ({error}); this replica {holds} alone until it is back"
    )


def redis_answered(alerts: Alerts, key: str, what: str, store: str = "Redis") -> None:
    """Resolve the alert ``key`` if it is raised: the shared store answers again."""
    if key in alerts.active:
        alerts.resolve(key, f"{what}: {store} is back; limits are global again")


async def global_or_share(
    shared: Awaitable[T],
    alone: Callable[[], T],
    alerts: Alerts,
    key: str,
    what: str,
    holds: str,
    store: str = "Redis",
    errors: tuple[type[BaseException], ...] = _REDIS_ERRORS,
) -> T:
    """``await shared`` (the count every replica or worker shares, in Redis or the database);
    when ``store`` fails, raise the operator alert ``key`` and answer with ``alone()`` (this
    process's share) instead. The alert is resolved once it answers again."""
    try:
        result = await shared
    except errors as exc:
        redis_failed(alerts, key, what, holds, exc, store)
        return alone()
    redis_answered(alerts, key, what, store)
    return result


class LimitRequests:
    """Refuses a request over any of its limits with a 429; adds the RateLimit headers."""

    def __init__(
        self,
        send: Send,
        rules: Sequence[RequestLimit],
        redis: RedisLimiter | None,
        sql: SqlLimiter | None,
        local_share: float,
        alerts: Alerts | None = None,
    ) -> None:
        self._send = send
        self._rules = tuple(rules)
        self._redis = redis
        self._sql = sql
        self._local = LocalLog(local_share)
        self._alerts = alerts or Alerts()
        self._redis_down_until = 0.0

    async def __call__(self, call: Call) -> Reply:
        checks = checks_for(self._rules, call.context)
        if not checks:
            return await self._send(call)
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:  # the shared count; this replica's share while Redis fails
                verdict = await self._redis.admit(checks, call.request_id)
            except _REDIS_ERRORS as exc:
                self._redis_down_until = time.monotonic() + REDIS_RETRY_S
                redis_failed(self._alerts, _REDIS_DOWN, _WHAT, _HOLDS, exc)
                verdict = self._local.check(checks, time.time())
            else:
                redis_answered(self._alerts, _REDIS_DOWN, _WHAT)
        elif self._redis is not None:  # Redis failed a moment ago: this replica's share
            verdict = self._local.check(checks, time.time())
        elif self._sql is not None:
            verdict = await global_or_share(
                self._sql.admit(checks, call.request_id),
                lambda: self._local.check(checks, time.time()),
                self._alerts,
                _DB_DOWN,
                _WHAT,
                _HOLDS,
                "the database",
                DATABASE_ERRORS,
            )
        else:
            verdict = self._local.check(checks, time.time())
        headers = headers_for(checks, verdict)
        if not verdict.admitted:
            assert verdict.blocked is not None
            rule = checks[verdict.blocked].rule
            raise RateLimited(
                f"rate limit reached: at most {rule.limit} requests per {rule.window_s} s for each "
                f"{rule.per}{' in feature ' + rule.feature if rule.feature else ''}; "
                f"try again in {verdict.retry_after_s} s",
                headers=headers,
            )
        reply = await self._send(call)
        reply.headers.update(headers)
        return reply

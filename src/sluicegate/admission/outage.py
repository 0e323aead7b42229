"""What a stage does when the store it shares with every replica (Redis, or the database) fails.

One `Outage` per stage and store: it raises the operator alert when the store fails, resolves
it when the store answers again, and says whether to ask the store at all. After a Redis
failure (a timeout: Redis is stopped or unreachable) a replica counts alone for `REDIS_RETRY_S`
before it asks again, and then one request asks (the others go on counting alone until it is
answered), so that a stalled Redis costs one request its timeout, not every one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from ..observe.alerts import Alerts

__all__ = ["DATABASE_ERRORS", "REDIS_ERRORS", "REDIS_RETRY_S", "Outage", "shared_or_alone"]

REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, TimeoutError)
REDIS_RETRY_S = 5.0
T = TypeVar("T")


class Outage:
    """A shared store's state as one stage of this process sees it.

    ``alert`` names the operator alert (``redis-down:budgets``), ``what`` the stage (``budgets``),
    ``fallback`` what the stage does meanwhile (``the database counts budgets``). ``retry_s``:
    how long after a failure `usable` says no (0: ask the store on every call).
    """

    __slots__ = ("_alerts", "_fallback", "_what", "alert", "failing", "retry_s", "store", "until")

    def __init__(
        self,
        alerts: Alerts,
        alert: str,
        what: str,
        fallback: str,
        store: str = "Redis",
        retry_s: float = REDIS_RETRY_S,
    ) -> None:
        self._alerts = alerts
        self._what = what
        self._fallback = fallback
        self.alert = alert
        self.store = store
        self.retry_s = retry_s
        self.failing = False  # it failed, and has not answered since
        self.until = 0.0  # the store is not asked before this time (the caller's clock)

    def usable(self, now: float) -> bool:
        """Whether to ask the store at ``now``: not within `retry_s` of its last failure, and
        after one only the first caller (the probe: the others wait `retry_s` more, unless it
        is answered first)."""
        if now < self.until:
            return False
        if self.failing:
            self.until = now + self.retry_s
        return True

    def failed(self, error: BaseException, now: float) -> None:
        """The store failed at ``now``: raise the alert (once), and count alone for a while."""
        self.failing = True
        self.until = now + self.retry_s
        self._alerts.alert(
            self.alert,
            f"{self._what}: {self.store} is unreachable or slow ({type(error).__name__}: {error}); "
            f"{self._fallback} until it answers again",
        )

    def answered(self) -> None:
        """The store answered: resolve the alert if it was raised."""
        if self.failing:
            self.failing = False
            self.until = 0.0
            self._alerts.resolve(self.alert, f"{self._what}: {self.store} is back")


async def shared_or_alone(
    shared: Awaitable[T],
    alone: Callable[[], T],
    outage: Outage,
    now: float,
    errors: tuple[type[BaseException], ...] = REDIS_ERRORS,
) -> T:
    """``await shared`` (the count every replica or worker shares); when the store fails with
    one of ``errors``, tell ``outage`` and answer with ``alone()`` (this process's share)."""
    try:
        result = await shared
    except errors as exc:
        outage.failed(exc, now)
        return alone()
    outage.answered()
    return result

"""Keeping a slow or dead cache tier from slowing requests: a timeout and a local breaker.

Each call to Redis or SQL runs under a short timeout. After ``failures`` failures in a row the
breaker opens and the tier is skipped (a miss, or a write left undone) for ``open_s`` seconds;
then one call probes it, and a success closes the breaker. A paused Redis therefore costs a
few timeouts, then nothing, and recovery needs no one's help.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from ..config import RemoteTierConfig

__all__ = ["Breaker", "TierGuard"]

T = TypeVar("T")
logger = logging.getLogger("sluicegate.cache")
_FAILURES = (TimeoutError, RedisError, SQLAlchemyError, OSError, ConnectionError)


class Breaker:
    """Pure breaker state: closed until ``failures`` in a row, then open for ``open_s``."""

    def __init__(self, failures: int, open_s: float) -> None:
        self.threshold = failures
        self.open_s = open_s
        self.failures = 0
        self.open_until = 0.0
        self.last_error: str | None = None

    def allows(self, now: float) -> bool:
        """Whether a call may go through now (when open, one probe goes once the wait is over)."""
        if self.failures < self.threshold:
            return True
        if now >= self.open_until:
            # Half-open: let this call probe, and hold the others back until it reports.
            self.open_until = now + self.open_s
            return True
        return False

    def record(self, ok: bool, now: float, error: str | None = None) -> bool:
        """Note a call's outcome; True when this outcome opened the breaker."""
        if ok:
            self.failures = 0
            return False
        self.failures += 1
        self.last_error = error
        if self.failures == self.threshold or (self.failures > self.threshold and now >= self.open_until):
            self.open_until = now + self.open_s
            return True
        return False

    def state(self, now: float) -> str:
        """``closed``, ``open`` or ``half-open``."""
        if self.failures < self.threshold:
            return "closed"
        return "open" if now < self.open_until else "half-open"


class TierGuard:
    """Runs a tier's calls under a timeout and a `Breaker`; a failed call yields a default."""

    def __init__(
        self,
        name: str,
        timeout_s: float,
        failures: int,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.breaker = Breaker(failures, open_s)
        self._clock = clock

    @classmethod
    def for_tier(cls, name: str, config: RemoteTierConfig) -> TierGuard:
        """The guard a tier's settings describe."""
        return cls(name, config.timeout_ms / 1000, config.breaker_failures, config.breaker_open_s)

    @property
    def available(self) -> bool:
        """Whether calls currently go through."""
        return self.breaker.state(self._clock()) != "open"

    async def run(self, call: Callable[[], Awaitable[T]], default: T, *, timed: bool = True) -> T:
        """``await call()``, or ``default`` when the breaker is open or the call fails or is slow.

        With ``timed`` false the call must bound itself (a batched call shares one timeout with
        its batch, which saves a timer per call).
        """
        if self._skipping():
            return default
        try:
            if timed:
                async with asyncio.timeout(self.timeout_s):
                    result = await call()
            else:
                result = await call()
        except _FAILURES as exc:
            self._failed(exc)
            return default
        if self.breaker.failures:
            self._recovered()
        return result

    def send(self, start: Callable[[Callable[[object, BaseException | None], None]], bool]) -> bool | None:
        """Start a call that is not awaited: ``start(done)`` sends it and returns whether it
        could (the call then reports to ``done``, which keeps the breaker's count). None when
        the breaker is open and nothing was sent."""
        if self._skipping():
            return None
        return start(self._done)

    def _skipping(self) -> bool:
        """Whether the breaker is open: the call is not made."""
        breaker = self.breaker
        return bool(breaker.failures) and not breaker.allows(self._clock())

    def _done(self, _result: object, error: BaseException | None) -> None:
        if error is None:
            if self.breaker.failures:
                self._recovered()
        elif isinstance(error, _FAILURES):
            self._failed(error)
        else:
            logger.error("cache tier %s: unexpected error %r", self.name, error)

    def _failed(self, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.breaker.record(False, self._clock(), reason):
            logger.warning(
                "cache tier %s is failing (%s); skipping it for %gs", self.name, reason, self.breaker.open_s
            )

    def _recovered(self) -> None:
        self.breaker.record(True, self._clock())
        logger.warning("cache tier %s is back", self.name)

    def status(self) -> dict[str, object]:
        """The guard's state for ``/api/ai/status``."""
        breaker = self.breaker
        return {
            "state": breaker.state(self._clock()),
            "consecutive_failures": breaker.failures,
            "last_error": breaker.last_error,
        }

"""Tests for sluicegate.cache.guard: the breaker's pure state, and the guard's timeout and recovery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from sluicegate.cache.guard import Breaker, TierGuard

# Breaker


def opened(threshold: int = 3, open_s: float = 10.0, at: float = 100.0) -> Breaker:
    """A breaker that has just opened at ``at``."""
    breaker = Breaker(threshold, open_s)
    for _ in range(threshold):
        breaker.record(False, at, "boom")
    return breaker


def test_breaker_stays_closed_below_the_threshold() -> None:
    """Fewer failures in a row than the threshold keep the breaker closed and calls flowing."""
    breaker = Breaker(3, 10.0)
    assert not breaker.record(False, 0.0, "one")
    assert not breaker.record(False, 0.0, "two")
    assert breaker.state(0.0) == "closed"
    assert breaker.allows(0.0)
    assert breaker.last_error == "two"


def test_a_success_resets_the_count() -> None:
    """A success between failures means they are no longer in a row."""
    breaker = Breaker(3, 10.0)
    for _ in range(2):
        breaker.record(False, 0.0)
    breaker.record(True, 0.0)
    for _ in range(2):
        breaker.record(False, 0.0)
    assert breaker.state(0.0) == "closed"


def test_threshold_failure_opens_the_breaker() -> None:
    """The failure that reaches the threshold opens the breaker, and says so once."""
    breaker = Breaker(3, 10.0)
    breaker.record(False, 100.0)
    breaker.record(False, 100.0)
    assert breaker.record(False, 100.0, "timeout")
    assert breaker.state(100.0) == "open"
    assert not breaker.allows(105.0)
    assert breaker.state(109.999) == "open"
    assert not breaker.record(False, 105.0)  # a late failure while open does not reopen it


def test_half_open_lets_exactly_one_probe_through() -> None:
    """Once open_s has passed, one call probes; the others are held back meanwhile."""
    breaker = opened(at=100.0)
    assert breaker.state(110.0) == "half-open"
    assert breaker.allows(110.0)
    assert not breaker.allows(110.0)
    assert not breaker.allows(115.0)
    assert breaker.state(110.0) == "open"


def test_probe_success_closes_the_breaker() -> None:
    """A successful probe closes the breaker and forgets the failures."""
    breaker = opened(at=100.0)
    assert breaker.allows(110.0)
    breaker.record(True, 110.5)
    assert breaker.state(110.5) == "closed"
    assert breaker.failures == 0
    assert breaker.allows(110.5) and breaker.allows(110.5)


def test_probe_failure_reopens_for_another_period() -> None:
    """A failed probe keeps the breaker open for open_s more, then allows another probe."""
    breaker = opened(at=100.0)
    assert breaker.allows(110.0)
    breaker.record(False, 110.2, "still down")
    assert breaker.state(119.0) == "open"
    assert not breaker.allows(119.0)
    assert breaker.state(120.0) == "half-open"
    assert breaker.allows(120.0)
    assert breaker.last_error == "still down"


# TierGuard


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tier:
    """A fake tier call: counts calls, and fails, hangs or answers as told."""

    def __init__(self) -> None:
        self.calls = 0
        self.mode = "ok"

    async def __call__(self) -> str:
        self.calls += 1
        if self.mode == "hang":
            await asyncio.sleep(10)
        if self.mode == "redis":
            raise RedisConnectionError("connection refused")
        if self.mode == "sql":
            raise OperationalError("SELECT 1", {}, Exception("database is locked"))
        if self.mode == "bug":
            raise ValueError("a programming error")
        return "value"


@pytest.fixture
def clock() -> Clock:
    """The guard's clock."""
    return Clock()


@pytest.fixture
def guard(clock: Clock) -> TierGuard:
    """A guard with a 20 ms timeout that opens after 2 failures, for 5 s."""
    return TierGuard("redis", timeout_s=0.02, failures=2, open_s=5.0, clock=clock)


async def test_success_passes_the_value_through(guard: TierGuard) -> None:
    """A working tier's answer is returned and the guard stays closed."""
    assert await guard.run(Tier(), "default") == "value"
    assert guard.status() == {"state": "closed", "consecutive_failures": 0, "last_error": None}


async def test_timeout_counts_as_a_failure(guard: TierGuard) -> None:
    """A call slower than the timeout yields the default and counts one failure."""
    tier = Tier()
    tier.mode = "hang"
    assert await asyncio.wait_for(guard.run(tier, "default"), 1.0) == "default"
    assert guard.breaker.failures == 1
    assert guard.status()["last_error"] == "TimeoutError"
    assert guard.available


@pytest.mark.parametrize("mode", ["redis", "sql"])
async def test_store_errors_count_as_failures(guard: TierGuard, mode: str) -> None:
    """Redis and SQLAlchemy errors yield the default and are recorded."""
    tier = Tier()
    tier.mode = mode
    assert await guard.run(tier, None) is None
    assert guard.breaker.failures == 1
    assert "Error" in str(guard.status()["last_error"])


async def test_programming_errors_are_not_swallowed(guard: TierGuard) -> None:
    """An exception that is not a tier failure propagates and is not counted."""
    tier = Tier()
    tier.mode = "bug"
    with pytest.raises(ValueError, match="programming error"):
        await guard.run(tier, None)
    assert guard.breaker.failures == 0


async def test_open_breaker_returns_the_default_without_calling(guard: TierGuard, clock: Clock) -> None:
    """After the threshold, calls are skipped (the tier is not called) until open_s has passed."""
    tier = Tier()
    tier.mode = "redis"
    for _ in range(2):
        await guard.run(tier, "default")
    assert guard.status()["state"] == "open"
    assert not guard.available
    tier.mode = "ok"
    clock.now += 4.9
    assert [await guard.run(tier, "default") for _ in range(5)] == ["default"] * 5
    assert tier.calls == 2


async def test_recovery_after_open_s(guard: TierGuard, clock: Clock) -> None:
    """Once open_s has passed a probe goes through, and its success closes the guard."""
    tier = Tier()
    tier.mode = "redis"
    for _ in range(2):
        await guard.run(tier, "default")
    clock.now += 5.0
    assert guard.status()["state"] == "half-open"
    assert guard.available
    tier.mode = "ok"
    assert await guard.run(tier, "default") == "value"
    assert guard.status()["state"] == "closed"
    assert guard.breaker.failures == 0
    assert await guard.run(tier, "default") == "value"
    assert tier.calls == 4


async def test_failed_probe_reopens(guard: TierGuard, clock: Clock) -> None:
    """A probe that fails sends the guard back to skipping the tier for open_s."""
    tier = Tier()
    tier.mode = "hang"
    for _ in range(2):
        await guard.run(tier, "default")
    clock.now += 5.0
    assert await guard.run(tier, "default") == "default"
    assert tier.calls == 3
    assert guard.status()["state"] == "open"
    clock.now += 4.0
    assert await guard.run(tier, "default") == "default"
    assert tier.calls == 3


def test_a_call_that_is_not_awaited_reports_to_the_breaker(guard: TierGuard, clock: Clock) -> None:
    """`send`: the call's callback counts failures and the success that closes the guard again;
    an open guard sends nothing."""
    callbacks: list[Callable[[object, BaseException | None], None]] = []

    def start(done: Callable[[object, BaseException | None], None]) -> bool:
        callbacks.append(done)
        return True

    for _ in range(2):
        assert guard.send(start) is True
        callbacks[-1](None, RedisConnectionError("connection refused"))
    assert guard.status()["state"] == "open"
    assert guard.send(start) is None and len(callbacks) == 2
    clock.now += 5.0
    assert guard.send(start) is True
    callbacks[-1]("value", None)
    assert guard.status()["state"] == "closed"
    callbacks[-1](None, ValueError("a programming error"))  # logged, not counted
    assert guard.breaker.failures == 0

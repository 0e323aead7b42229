"""Tests for sluicegate.observe.health: background probes whose results are read without waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sluicegate.observe.health import HealthProbes, ProbeResult


async def healthy() -> None:
    """A probe that succeeds."""


async def broken() -> None:
    """A probe that fails."""
    raise ConnectionRefusedError("connection refused")


async def until(condition: Callable[[], bool], tries: int = 2000) -> None:
    """Yield to the loop until ``condition()`` holds, failing after ``tries`` short sleeps."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


async def test_check_once_records_up_and_down() -> None:
    """A passing probe is up with a latency; a failing one is down with its error."""
    probes = HealthProbes({"db": healthy, "redis": broken}, interval=60)
    assert probes.snapshot() == {"db": None, "redis": None}
    await probes.check_once()
    snapshot = probes.snapshot()
    db, redis = snapshot["db"], snapshot["redis"]
    assert db is not None
    assert db.up
    assert db.error is None
    assert db.latency_ms is not None
    assert redis is not None
    assert not redis.up
    assert redis.error == "ConnectionRefusedError: connection refused"
    assert redis.latency_ms is None


async def test_later_check_replaces_the_result() -> None:
    """A probe that recovers is reported up on the next check."""
    state = {"fail": True}

    async def flaky() -> None:
        if state["fail"]:
            raise RuntimeError("down for now")

    probes = HealthProbes({"flaky": flaky}, interval=60)
    await probes.check_once()
    first = probes.snapshot()["flaky"]
    state["fail"] = False
    await probes.check_once()
    second = probes.snapshot()["flaky"]
    assert first is not None and not first.up
    assert second is not None and second.up


async def test_hanging_probe_is_down_after_the_timeout() -> None:
    """A probe that never answers is reported down, naming the timeout."""

    async def hangs() -> None:
        await asyncio.Event().wait()

    probes = HealthProbes({"hangs": hangs, "db": healthy}, interval=60, timeout=0.05)
    await probes.check_once()
    result = probes.snapshot()["hangs"]
    assert result is not None
    assert not result.up
    assert result.error == "no answer in 0.05 s"
    db = probes.snapshot()["db"]
    assert db is not None and db.up


async def test_snapshot_answers_while_a_probe_is_blocked() -> None:
    """snapshot() returns the other probes' results while one probe is still blocked."""
    entered = asyncio.Event()
    released = asyncio.Event()

    async def blocked() -> None:
        entered.set()
        await released.wait()

    probes = HealthProbes({"blocked": blocked, "db": healthy}, interval=60, timeout=5)
    probes.start()
    try:
        await entered.wait()
        await until(lambda: probes.snapshot()["db"] is not None)
        snapshot = probes.snapshot()
        assert snapshot["blocked"] is None
        assert snapshot["db"] is not None and snapshot["db"].up
        released.set()
        await until(lambda: probes.snapshot()["blocked"] is not None)
    finally:
        await probes.stop()
    result = probes.snapshot()["blocked"]
    assert result is not None and result.up


async def test_start_probes_repeatedly_and_stop_ends_it() -> None:
    """start() probes every interval until stop(); stop() can be called twice."""
    runs: list[int] = []

    async def counted() -> None:
        runs.append(1)

    probes = HealthProbes({"counted": counted}, interval=0.001)
    probes.start()
    probes.start()  # a second start does not add another loop
    await until(lambda: len(runs) >= 3)
    await probes.stop()
    stopped_at = len(runs)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(runs) == stopped_at
    await probes.stop()


async def test_start_without_probes_does_nothing() -> None:
    """With nothing to probe, start and stop are no-ops."""
    probes = HealthProbes({}, interval=0.001)
    probes.start()
    await probes.stop()
    assert probes.snapshot() == {}
    assert probes.names == ()


def test_names_lists_the_probes() -> None:
    """names lists the probed dependencies in order."""
    assert HealthProbes({"db": healthy, "redis": healthy}, interval=1).names == ("db", "redis")


def test_probe_result_to_dict() -> None:
    """ProbeResult.to_dict says up or down, rounds the time and keeps error and latency."""
    assert ProbeResult(True, 12.34567, latency_ms=1.5).to_dict() == {
        "status": "up",
        "checked_at": 12.346,
        "latency_ms": 1.5,
        "error": None,
    }
    assert ProbeResult(False, 1.0, error="boom").to_dict()["status"] == "down"

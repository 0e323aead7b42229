"""A shared store's outage as a stage sees it: one alert, a pause before the store is asked
again, and the alert resolved when it answers."""

from __future__ import annotations

from typing import Any

from sluicegate.admission.outage import Outage, shared_or_alone
from sluicegate.observe.alerts import Alerts


async def test_a_failure_alerts_once_and_pauses_the_store_for_retry_s() -> None:
    alerts = Alerts()
    outage = Outage(alerts, "redis-down:x", "x", "this replica counts alone", retry_s=5)
    assert outage.usable(100.0) and not outage.failing
    outage.failed(TimeoutError("stalled"), 100.0)
    outage.failed(TimeoutError("stalled"), 101.0)
    assert alerts.active == {"redis-down:x"} and outage.failing
    assert not outage.usable(105.9) and outage.usable(106.0)  # 5 s after the last failure
    outage.answered()
    assert alerts.active == set() and not outage.failing


async def test_after_the_pause_one_caller_probes_and_the_others_wait_for_its_answer() -> None:
    """A stalled store costs one request its timeout each `retry_s`, not every request in flight."""
    outage = Outage(Alerts(), "redis-down:x", "x", "alone", retry_s=5)
    outage.failed(TimeoutError("stalled"), 100.0)
    assert outage.usable(106.0)  # the probe
    assert not outage.usable(106.1) and not outage.usable(110.9)  # the others count alone
    outage.failed(TimeoutError("still stalled"), 106.3)
    assert not outage.usable(111.0) and outage.usable(111.3)  # the next probe, 5 s later
    outage.answered()  # it answered: everyone asks again at once
    assert outage.usable(111.4) and outage.usable(111.4)


async def test_shared_or_alone_answers_alone_when_the_store_fails() -> None:
    outage = Outage(Alerts(), "database-down:x", "x", "alone", "the database", retry_s=0)

    async def failing() -> Any:
        raise OSError("refused")

    async def shared() -> str:
        return "shared"

    assert await shared_or_alone(failing(), lambda: "alone", outage, 1.0) == "alone"
    assert outage.failing and outage.usable(1.0)  # retry_s 0: asked again at once
    assert await shared_or_alone(shared(), lambda: "alone", outage, 2.0) == "shared"
    assert not outage.failing

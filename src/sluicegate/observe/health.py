"""Dependency health, probed in the background so that reading it never waits.

`/api/ai/status` reads `HealthProbes.snapshot()`, which is a dictionary lookup: it answers at
once even when a dependency hangs, because each probe runs on its own with a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from ..background import cancel_and_wait

__all__ = ["HealthProbes", "ProbeResult"]

Probe = Callable[[], Awaitable[None]]


@dataclass(slots=True, frozen=True)
class ProbeResult:
    """The last outcome of one probe."""

    up: bool
    checked_at: float
    latency_ms: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "status": "up" if self.up else "down",
            "checked_at": round(self.checked_at, 3),
            "latency_ms": self.latency_ms,
            "error": self.error,
        }


class HealthProbes:
    """Runs named probes every ``interval`` seconds and keeps their last results."""

    def __init__(self, probes: Mapping[str, Probe], *, interval: float, timeout: float = 2.0) -> None:
        self._probes = dict(probes)
        self._interval = interval
        self._timeout = timeout
        self._results: dict[str, ProbeResult] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The probed dependencies."""
        return tuple(self._probes)

    def snapshot(self) -> dict[str, ProbeResult | None]:
        """The last result of each probe; None for one not yet run."""
        return {name: self._results.get(name) for name in self._probes}

    async def check_once(self) -> None:
        """Run every probe once, concurrently."""
        await asyncio.gather(*(self._check(name, probe) for name, probe in self._probes.items()))

    async def _check(self, name: str, probe: Probe) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                await probe()
        except TimeoutError:
            self._results[name] = ProbeResult(False, time.time(), error=f"no answer in {self._timeout:g} s")
        except Exception as exc:  # a probe reports any failure as "down", with its reason
            self._results[name] = ProbeResult(False, time.time(), error=f"{type(exc).__name__}: {exc}")
        else:
            elapsed = round((time.perf_counter() - started) * 1000, 3)
            self._results[name] = ProbeResult(True, time.time(), latency_ms=elapsed)

    def start(self) -> None:
        """Start probing in the background of the running loop."""
        if self._task is None and self._probes:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        """Stop probing."""
        await cancel_and_wait(self._task)
        self._task = None

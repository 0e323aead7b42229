"""The circuit breaker of one upstream deployment: pure state logic, with ``now`` passed in.

Closed, it counts the outcomes of the last ``window`` calls and opens once at least
``min_calls`` are counted and the share of failures reaches ``failure_rate`` (or the share of
slow calls reaches ``slow_call_rate``). Open, it refuses every call until its wait is over; the
wait doubles on each consecutive re-open, up to ``max_open_s``. Then it is half-open: exactly
``half_open_probes`` calls go through, and their outcomes decide between closed and open
again. A probe that ends with no verdict (the client left, the request was invalid) gives its
permit back.

Each admitted call carries a ticket, the breaker's generation when it was admitted; outcomes
of tickets from an earlier state are ignored, so a slow call admitted while closed cannot
decide a half-open state. A 429 cools the deployment down for its ``Retry-After`` without
counting as a failure.
"""

from __future__ import annotations

from typing import Literal

from ..config_resilience import BreakerConfig

__all__ = ["REFUSED", "CircuitBreaker", "State"]

State = Literal["closed", "open", "half_open"]
REFUSED = -1  # the ticket of a refused call


class CircuitBreaker:
    """One deployment's breaker. Every method is synchronous: under asyncio each is atomic."""

    __slots__ = (
        "_config",
        "_failures",
        "_generation",
        "_next",
        "_outcomes",
        "_permits",
        "_probe_failures",
        "_probe_slow",
        "_probes_done",
        "_slow",
        "cool_until",
        "open_until",
        "opens",
        "state",
    )

    def __init__(self, config: BreakerConfig) -> None:
        self._config = config
        self.state: State = "closed"
        self._generation = 0
        self._outcomes: list[int] = []
        self._next = 0  # the oldest outcome, once the ring is full
        self._failures = 0
        self._slow = 0
        self.opens = 0  # consecutive opens without a close in between
        self.open_until = 0.0
        self.cool_until = 0.0
        self._permits = 0
        self._probes_done = 0
        self._probe_failures = 0
        self._probe_slow = 0

    def acquire(self, now: float) -> int:
        """A ticket for one call, or `REFUSED`; then `retry_at` says when to come back."""
        if now < self.cool_until:
            return REFUSED
        state = self.state
        if state == "closed":
            return self._generation
        if state == "open":
            if now < self.open_until:
                return REFUSED
            self._half_open()
        if self._permits <= 0:
            return REFUSED
        self._permits -= 1
        return self._generation

    def retry_at(self, now: float) -> float:
        """When a refused call may be tried again (``now`` when it would be admitted now)."""
        at = self.cool_until
        if self.state == "open":
            at = max(at, self.open_until)
        elif self.state == "half_open" and self._permits <= 0:
            at = max(at, now + 1.0)  # the probes' verdict is pending
        return max(at, now)

    def record(self, ticket: int, now: float, failed: bool, slow: bool) -> None:
        """The outcome of the call admitted with ``ticket``."""
        if ticket != self._generation or ticket == REFUSED:
            return
        if self.state == "closed":
            self._count(failed, slow, now)
        elif self.state == "half_open":
            self._probes_done += 1
            self._probe_failures += failed
            self._probe_slow += slow
            probes = self._config.half_open_probes
            if self._probes_done >= probes:
                if self._tripped(self._probe_failures, self._probe_slow, probes):
                    self._open(now)
                else:
                    self._close()

    def release(self, ticket: int) -> None:
        """The call admitted with ``ticket`` ended with no verdict: a probe gives its permit back."""
        if ticket == self._generation and ticket != REFUSED and self.state == "half_open":
            self._permits += 1

    def cool_down(self, until: float) -> None:
        """Refuse every call until ``until`` (a 429's ``Retry-After``); not a failure."""
        self.cool_until = max(self.cool_until, until)

    def _count(self, failed: bool, slow: bool, now: float) -> None:
        # The window is a ring of outcomes: bit 1 a failure, bit 2 a slow call.
        ring = self._outcomes
        outcome = failed | slow << 1
        if len(ring) < self._config.window:
            ring.append(outcome)
        else:
            old = ring[self._next]
            ring[self._next] = outcome
            self._next = (self._next + 1) % len(ring)
            self._failures -= old & 1
            self._slow -= old >> 1
        self._failures += failed
        self._slow += slow
        calls = len(ring)
        # A success can trip it only by bringing the window up to min_calls.
        minimum = self._config.min_calls
        checked = (outcome or calls == minimum) and calls >= minimum
        if checked and self._tripped(self._failures, self._slow, calls):
            self._open(now)

    def _tripped(self, failures: int, slow: int, calls: int) -> bool:
        config = self._config
        return failures >= config.failure_rate * calls or slow >= config.slow_call_rate * calls

    def _open(self, now: float) -> None:
        config = self._config
        self.opens += 1
        wait = min(config.open_s * 2 ** min(self.opens - 1, 32), config.max_open_s)
        self.open_until = now + wait
        self._enter("open")

    def _half_open(self) -> None:
        self._enter("half_open")
        self._permits = self._config.half_open_probes
        self._probes_done = self._probe_failures = self._probe_slow = 0

    def _close(self) -> None:
        self.opens = 0
        self._enter("closed")

    def _enter(self, state: State) -> None:
        self.state = state
        self._generation += 1
        self._outcomes = []
        self._next = 0
        self._failures = self._slow = 0

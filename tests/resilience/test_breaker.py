"""Tests for sluicegate.resilience.breaker: the thresholds, the waits, the probes, and a
reference model driven by Hypothesis."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sluicegate.config import BreakerConfig
from sluicegate.resilience.breaker import REFUSED, CircuitBreaker

DEFAULTS = BreakerConfig()


def fail(breaker: CircuitBreaker, now: float, n: int = 1) -> None:
    for _ in range(n):
        breaker.record(breaker.acquire(now), now, failed=True, slow=False)


def succeed(breaker: CircuitBreaker, now: float, n: int = 1, *, slow: bool = False) -> None:
    for _ in range(n):
        breaker.record(breaker.acquire(now), now, failed=False, slow=slow)


def test_nine_failures_keep_it_closed_and_the_tenth_opens_it() -> None:
    breaker = CircuitBreaker(DEFAULTS)
    fail(breaker, 0.0, 9)
    assert breaker.state == "closed" and breaker.acquire(0.0) != REFUSED
    fail(breaker, 0.0)
    assert breaker.state == "open" and breaker.acquire(1.0) == REFUSED
    assert breaker.retry_at(1.0) == 30.0


def test_it_opens_at_half_the_window_failing() -> None:
    breaker = CircuitBreaker(DEFAULTS)
    succeed(breaker, 0.0, 10)
    fail(breaker, 0.0, 9)
    assert breaker.state == "closed"  # 9 of 19
    fail(breaker, 0.0)
    assert breaker.state == "open"  # 10 of 20


def test_old_outcomes_leave_the_window() -> None:
    breaker = CircuitBreaker(DEFAULTS)
    succeed(breaker, 0.0, 20)
    fail(breaker, 0.0, 9)  # 9 of 20
    succeed(breaker, 0.0, 20)  # the failures slide out
    fail(breaker, 0.0, 9)  # 9 of the last 20, not 18
    assert breaker.state == "closed"
    fail(breaker, 0.0)
    assert breaker.state == "open"


def test_slow_calls_open_it() -> None:
    breaker = CircuitBreaker(DEFAULTS)
    succeed(breaker, 0.0, 2)
    succeed(breaker, 0.0, 7, slow=True)
    assert breaker.state == "closed"
    succeed(breaker, 0.0, 1, slow=True)  # 8 of 10 slow
    assert breaker.state == "open"


def test_the_wait_doubles_on_each_reopen_up_to_the_cap() -> None:
    breaker = CircuitBreaker(DEFAULTS)
    now = 0.0
    fail(breaker, now, 10)
    waits = []
    for _ in range(6):
        waits.append(breaker.open_until - now)
        now = breaker.open_until
        fail(breaker, now, 3)  # the probes fail: open again
    assert waits == [30, 60, 120, 240, 300, 300]


def test_successful_probes_close_it_and_reset_the_wait() -> None:
    breaker = CircuitBreaker(DEFAULTS)
    fail(breaker, 0.0, 10)
    succeed(breaker, 30.0, 3)
    assert breaker.state == "closed" and breaker.opens == 0
    fail(breaker, 31.0, 10)
    assert breaker.open_until == 61.0


def test_half_open_admits_exactly_three_of_a_hundred() -> None:
    breaker = CircuitBreaker(DEFAULTS)
    fail(breaker, 0.0, 10)
    tickets = [breaker.acquire(30.0) for _ in range(100)]
    admitted = [t for t in tickets if t != REFUSED]
    assert len(admitted) == 3 and breaker.state == "half_open"


def test_a_cancelled_probe_gives_its_permit_back() -> None:
    breaker = CircuitBreaker(DEFAULTS)
    fail(breaker, 0.0, 10)
    probes = [breaker.acquire(30.0) for _ in range(3)]
    assert breaker.acquire(30.0) == REFUSED
    breaker.release(probes[0])
    assert breaker.acquire(30.0) != REFUSED


def test_late_outcomes_of_an_earlier_state_are_ignored() -> None:
    breaker = CircuitBreaker(DEFAULTS)
    early = breaker.acquire(0.0)
    fail(breaker, 0.0, 10)
    probes = [breaker.acquire(30.0) for _ in range(3)]
    breaker.record(early, 30.0, failed=True, slow=False)  # from the closed state: no say
    for probe in probes:
        breaker.record(probe, 30.0, failed=False, slow=False)
    assert breaker.state == "closed"


def test_a_cool_down_refuses_without_counting_as_failure() -> None:
    breaker = CircuitBreaker(DEFAULTS)
    breaker.cool_down(5.0)
    assert breaker.acquire(1.0) == REFUSED and breaker.retry_at(1.0) == 5.0
    assert breaker.acquire(5.0) != REFUSED and breaker.state == "closed"


# The reference model: the same rules, stated as directly as possible.


@dataclass
class Model:
    config: BreakerConfig
    state: str = "closed"
    history: list[tuple[bool, bool]] = field(default_factory=list)
    opens: int = 0
    open_until: float = 0.0
    in_flight_probes: int = 0
    probe_results: list[tuple[bool, bool]] = field(default_factory=list)
    era: int = 0

    def trips(self, outcomes: list[tuple[bool, bool]]) -> bool:
        failures = sum(f for f, _ in outcomes)
        slow = sum(s for _, s in outcomes)
        n = len(outcomes)
        return failures >= self.config.failure_rate * n or slow >= self.config.slow_call_rate * n

    def go(self, state: str, now: float = 0.0) -> None:
        if state == "open":
            self.opens += 1
            self.open_until = now + min(self.config.open_s * 2 ** (self.opens - 1), self.config.max_open_s)
        if state == "closed":
            self.opens = 0
        self.state, self.history, self.era = state, [], self.era + 1
        self.in_flight_probes, self.probe_results = 0, []

    def acquire(self, now: float) -> int | None:
        if self.state == "open" and now >= self.open_until:
            self.go("half_open")
        if self.state == "closed":
            return self.era
        taken = self.in_flight_probes + len(self.probe_results)
        if self.state == "half_open" and taken < self.config.half_open_probes:
            self.in_flight_probes += 1
            return self.era
        return None

    def record(self, era: int, now: float, failed: bool, slow: bool) -> None:
        if era != self.era:
            return
        if self.state == "closed":
            self.history.append((failed, slow))
            window = self.history[-self.config.window :]
            if len(window) >= self.config.min_calls and self.trips(window):
                self.go("open", now)
        elif self.state == "half_open":
            self.in_flight_probes -= 1
            self.probe_results.append((failed, slow))
            if len(self.probe_results) == self.config.half_open_probes:
                self.go("open" if self.trips(self.probe_results) else "closed", now)

    def release(self, era: int) -> None:
        if era == self.era and self.state == "half_open":
            self.in_flight_probes -= 1


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        config = BreakerConfig(window=6, min_calls=4, open_s=5, max_open_s=20, half_open_probes=2)
        self.breaker = CircuitBreaker(config)
        self.model = Model(config)
        self.now = 0.0
        self.tickets: list[tuple[int, int]] = []  # (the breaker's ticket, the model's era)

    @rule(dt=st.sampled_from([0.0, 0.5, 3.0, 10.0]))
    def acquire(self, dt: float) -> None:
        self.now += dt
        got = self.breaker.acquire(self.now)
        expected = self.model.acquire(self.now)
        assert (got == REFUSED) == (expected is None)
        if expected is not None:
            self.tickets.append((got, expected))

    @precondition(lambda self: self.tickets)
    @rule(pick=st.integers(0, 100), failed=st.booleans(), slow=st.booleans())
    def finish(self, pick: int, failed: bool, slow: bool) -> None:
        ticket, era = self.tickets.pop(pick % len(self.tickets))
        self.breaker.record(ticket, self.now, failed=failed, slow=slow)
        self.model.record(era, self.now, failed, slow)

    @precondition(lambda self: self.tickets)
    @rule(pick=st.integers(0, 100))
    def cancel(self, pick: int) -> None:
        ticket, era = self.tickets.pop(pick % len(self.tickets))
        self.breaker.release(ticket)
        self.model.release(era)

    @invariant()
    def same_state(self) -> None:
        assert self.breaker.state == self.model.state
        assert self.breaker.opens == self.model.opens
        if self.model.state == "open":
            assert self.breaker.open_until == self.model.open_until


BreakerMachine.TestCase.settings = hypothesis_settings(
    max_examples=300, stateful_step_count=60, deadline=None
)
TestBreakerAgainstModel = BreakerMachine.TestCase

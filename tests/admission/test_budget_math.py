"""Budget arithmetic: periods, decisions, and a state machine over reserve, settle, duplicate
settle, lease expiry and the clock."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sluicegate.admission.budget_math import (
    MIN_COMPLETION_TOKENS,
    Book,
    Period,
    decide,
    decide_all,
    forecast,
    period_bounds,
    period_end,
    period_start,
)

_BOOK = st.tuples(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9)).map(
    lambda b: (b[0], min(b[1], b[0]), min(b[2], max(0, b[0] - b[1])))
)


@given(
    books=st.lists(_BOOK, min_size=1, max_size=4),
    prompt=st.integers(0, 10**6),
    out_pico=st.integers(0, 10**8),
    asked=st.integers(1, 10**6),
)
def test_a_call_under_several_budgets_never_passes_any_of_them(
    books: list[tuple[int, int, int]], prompt: int, out_pico: int, asked: int
) -> None:
    """Admitted, it fits every budget and asks no more than it was asked; refused, one of them
    could not afford even the minimum, and it is the one named."""
    decision, refused = decide_all(books, prompt, out_pico, asked)
    if decision.admitted:
        assert refused == -1 and decision.max_tokens <= asked
        for limit, spent, reserved in books:
            assert spent + reserved + decision.reserve_micro <= limit
    else:  # the budget named cannot afford even the minimum completion
        limit, spent, reserved = books[refused]
        room = limit - spent - reserved - prompt
        least = min(asked, MIN_COMPLETION_TOKENS)
        assert room <= 0 or -(-least * out_pico // 1_000_000) > room


def ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def test_periods_are_utc_days_iso_weeks_and_months() -> None:
    now = ts("2026-11-25T23:59:59")
    assert period_bounds("day", now) == ("2026-11-25", ts("2026-11-26T00:00:00"))
    assert period_bounds("week", now) == ("2026-W48", ts("2026-11-30T00:00:00"))
    assert period_bounds("month", now) == ("2026-11", ts("2026-12-01T00:00:00"))
    assert period_bounds("month", ts("2026-12-31T12:00:00"))[1] == ts("2027-01-01T00:00:00")


def test_a_call_is_admitted_whole_clamped_or_refused() -> None:
    out = 600_000  # $0.60 per million output tokens, in pico-USD a token
    assert decide(10_000, 0, 0, 100, out, 1000) == decide(10_000, 0, 0, 100, out, 1000)
    whole = decide(10_000, 0, 0, 100, out, 1000)
    assert (whole.admitted, whole.max_tokens, whole.reserve_micro) == (True, 1000, 700)
    clamped = decide(1_000, 500, 200, 100, out, 1000)  # 200 µUSD left after the prompt
    assert (clamped.admitted, clamped.max_tokens, clamped.reserve_micro) == (True, 333, 300)
    assert decide(1_000, 500, 390, 100, out, 1000).max_tokens == 16  # 10 µUSD: 16 tokens, exactly
    assert not decide(1_000, 500, 395, 100, out, 1000).admitted  # 5 µUSD: not 16 tokens
    assert decide(1_000, 500, 390, 100, out, 10).admitted  # a small ask that fits whole
    assert not decide(1_000, 900, 0, 100, out, MIN_COMPLETION_TOKENS).admitted


def test_a_call_that_fills_the_budget_exactly_fits() -> None:
    """spent + reserved + worst case <= limit: an embedding (nothing to pay beyond its prompt)
    that takes the last micro-dollar is admitted, one more is not."""
    assert decide(10, 9, 0, 1, 600_000, 0) == (True, 0, 1)
    assert not decide(10, 9, 1, 1, 600_000, 0).admitted
    assert decide(10, 9, 0, 1, 0, 100) == (True, 100, 1)  # a free output
    assert not decide(10, 10, 0, 0, 600_000, 100).admitted  # nothing left for any output


class BudgetMachine(RuleBasedStateMachine):
    """Whatever happens, reservations never take spent + reserved past the limit, and reserved
    never goes negative."""

    def __init__(self) -> None:
        super().__init__()
        self.book = Book(limit=50_000)
        self.now = 0.0
        self.next_id = 0
        self.amounts: dict[str, int] = {}

    @rule(prompt=st.integers(0, 5_000), asked=st.integers(1, 20_000), lease=st.floats(1, 100))
    def reserve(self, prompt: int, asked: int, lease: float) -> None:
        rid = f"r{self.next_id}"
        self.next_id += 1
        decision = self.book.reserve(rid, prompt, 600_000, asked, self.now + lease)
        if decision.admitted:
            self.amounts[rid] = decision.reserve_micro
            assert decision.max_tokens <= asked

    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        if not self.amounts:
            return
        rid = data.draw(st.sampled_from(sorted(self.amounts)))
        # the provider bills at most the reserved worst case
        cost = data.draw(st.integers(0, self.amounts[rid]))
        before = self.book.spent
        counted = self.book.settle(rid, cost)
        assert counted == (self.book.spent == before + cost) or cost == 0
        again = self.book.settle(rid, cost)  # delivered twice
        assert not again and self.book.spent == before + (cost if counted else 0)

    @rule(seconds=st.floats(0, 60))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.book.expire(self.now)

    @invariant()
    def within_the_limit(self) -> None:
        assert self.book.reserved >= 0
        assert self.book.spent + self.book.reserved <= self.book.limit


TestBudgetMachine = BudgetMachine.TestCase


def test_the_forecast_runs_the_recent_burn_rate_to_the_end_of_the_period() -> None:
    now = ts("2026-11-25T12:00:00")
    assert period_start("month", now) == ts("2026-11-01T00:00:00")
    assert period_start("week", now) == ts("2026-11-23T00:00:00")
    assert period_start("day", now) == ts("2026-11-25T00:00:00")
    ends = period_bounds("month", now)[1]  # 5.5 days away
    # 1,000 µUSD a day lately, 20,000 spent so far: 5,500 more by the end
    assert forecast(20_000, 1_000, 86_400, now, ends) == 25_500
    assert forecast(20_000, 0, 86_400, now, ends) == 20_000
    assert forecast(7, 1_000, 0, now, ends) == 7  # the first instant of a period


@pytest.mark.parametrize(
    ("period", "name", "ends"),
    [
        ("day", "2024-02-28", "2024-02-29"),
        ("day", "2025-12-31", "2026-01-01"),
        ("week", "2026-W01", "2026-01-05"),
        ("week", "2020-W53", "2021-01-04"),
        ("month", "2025-12", "2026-01-01"),
        ("month", "2024-02", "2024-03-01"),
    ],
)
def test_a_period_s_end_from_its_name(period: Period, name: str, ends: str) -> None:
    """The end of the period a name stands for, as `period_bounds` gives it from inside it."""
    end = dt.datetime.fromisoformat(ends).replace(tzinfo=dt.UTC).timestamp()
    assert period_end(name) == end
    assert period_bounds(period, end - 1) == (name, end)

"""Tests for sluicegate.resilience.retry: backoff draws, Retry-After, the retry budget."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate.resilience.retry import RetryBudget, backoff_s, retry_after_s


@given(retry=st.integers(1, 200), unit=st.floats(0, 1, exclude_max=True))
def test_backoff_stays_in_zero_to_cap(retry: int, unit: float) -> None:
    delay = backoff_s(retry, 0.2, 5.0, lambda: unit)
    assert 0 <= delay <= min(5.0, 0.2 * 2 ** min(retry, 62))


@pytest.mark.parametrize(("retry", "ceiling"), [(1, 0.4), (2, 0.8), (3, 1.6), (8, 5.0)])
def test_backoff_has_the_mean_of_a_uniform_draw(retry: int, ceiling: float) -> None:
    rng = random.Random(7)
    draws = [backoff_s(retry, 0.2, 5.0, rng.random) for _ in range(20_000)]
    assert max(draws) <= ceiling
    assert statistics.fmean(draws) == pytest.approx(ceiling / 2, rel=0.03)


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": " 1.5 "}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "tomorrow"}, None),
        ({"retry-after": format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)}, 30.0),
        ({"retry-after": format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True)}, 0.0),
    ],
)
def test_retry_after_in_all_its_forms(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_s(headers, NOW) == expected


def test_the_budget_allows_a_fifth_of_first_attempts_plus_the_floor() -> None:
    budget = RetryBudget(0.2, 10, 10.0)
    for _ in range(1000):
        budget.first(5.0)
    allowed = sum(budget.try_retry(5.0) for _ in range(1000))
    assert allowed == 210


def test_the_budget_forgets_what_left_the_window() -> None:
    budget = RetryBudget(0.2, 0, 10.0)
    for _ in range(100):
        budget.first(0.0)
    assert sum(budget.try_retry(0.0) for _ in range(100)) == 20
    assert not budget.try_retry(9.9)
    # Ten seconds on, the first attempts and the retries have both left the window.
    for _ in range(10):
        budget.first(20.0)
    assert sum(budget.try_retry(20.0) for _ in range(10)) == 2


def test_an_empty_budget_still_has_its_floor() -> None:
    budget = RetryBudget(0.2, 3, 10.0)
    assert [budget.try_retry(1.0) for _ in range(4)] == [True, True, True, False]

"""Budget arithmetic, with no I/O: periods, worst-case estimates, reservations and settlements.

A budget has a limit in micro-USD per period (a UTC day, ISO week or month). Before a miss
goes upstream its worst-case cost is reserved, and only if spent + reserved + estimate stays
within the limit; ``max_tokens`` is clamped to what is left. After the call the actual cost
is settled: the reservation leaves ``reserved`` and the cost joins ``spent``, once, however
many times the settlement arrives. A reservation whose process died expires (its lease) and
leaves ``reserved``; a late settlement of it still counts its cost.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

__all__ = [
    "MIN_COMPLETION_TOKENS",
    "PERIOD_ADJECTIVES",
    "Book",
    "Decision",
    "Outcome",
    "Period",
    "Throttle",
    "decide",
    "decide_all",
    "forecast",
    "period_bounds",
    "period_end",
    "period_start",
]

Period = Literal["day", "week", "month"]
PERIOD_ADJECTIVES = {"day": "daily", "week": "weekly", "month": "monthly"}
MIN_COMPLETION_TOKENS = 16  # below this an answer is not worth calling for: refuse instead


def period_bounds(period: Period, now: float) -> tuple[str, float]:
    """The period ``now`` falls in: its name (``2026-11``, ``2026-W48``, ``2026-11-25``) and the
    Unix time it ends (UTC)."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if period == "day":
        start, end = today, today + dt.timedelta(days=1)
        name = today.isoformat()
    elif period == "week":
        start = today - dt.timedelta(days=today.weekday())
        end = start + dt.timedelta(days=7)
        year, week, _ = today.isocalendar()
        name = f"{year}-W{week:02d}"
    else:
        start = today.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        name = start.strftime("%Y-%m")
    del start
    return name, dt.datetime.combine(end, dt.time(), dt.UTC).timestamp()


def period_end(name: str) -> float:
    """The Unix time the period named ``name`` (as `period_bounds` names it: ``2026-11``,
    ``2026-W48`` or ``2026-11-25``, whose form says its length) ends (UTC)."""
    period: Period
    if "-W" in name:
        period, (year, week) = "week", name.split("-W")
        start = dt.date.fromisocalendar(int(year), int(week), 1)
    elif len(name) == len("2026-11"):
        period, start = "month", dt.date.fromisoformat(name + "-01")
    else:
        period, start = "day", dt.date.fromisoformat(name)
    midnight = dt.datetime.combine(start, dt.time(), dt.UTC).timestamp()
    return period_bounds(period, midnight)[1]


def period_start(period: Period, now: float) -> float:
    """The Unix time the period ``now`` falls in began (UTC)."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if period == "day":
        start = today
    elif period == "week":
        start = today - dt.timedelta(days=today.weekday())
    else:
        start = today.replace(day=1)
    return dt.datetime.combine(start, dt.time(), dt.UTC).timestamp()


def forecast(spent: int, recent_micro: int, window_s: float, now: float, ends_at: float) -> int:
    """The spend at the end of the period if the recent burn rate (``recent_micro`` over the
    last ``window_s`` seconds) goes on until then (pure)."""
    if window_s <= 0:
        return spent
    return spent + math.ceil(recent_micro / window_s * max(0.0, ends_at - now))


class Decision(NamedTuple):
    """Whether a call may go upstream, with how many completion tokens and what to reserve."""

    admitted: bool
    max_tokens: int
    reserve_micro: int


class Throttle(NamedTuple):
    """Past ``share`` of a budget's limit, at most ``concurrency`` of its calls in flight and
    ``per_minute`` admitted a minute (None: no such cap)."""

    share: float
    concurrency: int | None
    per_minute: int | None


class Outcome(NamedTuple):
    """A reservation under a call's budgets, as a store made it: the decision, the index of the
    budget that refused (-1), each budget's (spent, reserved) after it, and which of the
    throttle's caps refused it (``concurrency`` or ``per_minute``; empty when none did)."""

    decision: Decision
    refused: int
    after: list[tuple[int, int]]
    throttled: str = ""


def decide(
    limit: int, spent: int, reserved: int, prompt_micro: int, out_pico: int, asked_tokens: int
) -> Decision:
    """The worst case of a call is its prompt plus ``asked_tokens`` at the output rate
    (``out_pico`` pico-USD a token). Admit it whole if it fits, or with fewer completion tokens
    (at least `MIN_COMPLETION_TOKENS`) if that fits; refuse otherwise (pure)."""
    room = limit - spent - reserved - prompt_micro
    if room < 0:  # at 0 a call with nothing more to pay for (an embedding, a free output) fits
        return Decision(False, 0, 0)
    affordable = asked_tokens if out_pico <= 0 else min(asked_tokens, (room * 1_000_000) // out_pico)
    if affordable < min(asked_tokens, MIN_COMPLETION_TOKENS):
        return Decision(False, 0, 0)
    completion_micro = math.ceil(affordable * out_pico / 1_000_000)
    return Decision(True, affordable, prompt_micro + completion_micro)


def decide_all(
    books: Sequence[tuple[int, int, int]], prompt_micro: int, out_pico: int, asked_tokens: int
) -> tuple[Decision, int]:
    """`decide` for a call under several budgets at once (its org's, its user's, its feature's,
    its key's), each given as (limit, spent, reserved): the completion tokens every one of them
    can afford, and the index of the first that refuses (-1 when all admit) (pure)."""
    tokens = asked_tokens
    for index, (limit, spent, reserved) in enumerate(books):
        decision = decide(limit, spent, reserved, prompt_micro, out_pico, tokens)
        if not decision.admitted:
            return decision, index
        tokens = decision.max_tokens
    return Decision(True, tokens, prompt_micro + math.ceil(tokens * out_pico / 1_000_000)), -1


@dataclass
class Book:
    """One budget's period in memory: the model the stores follow, and what the property tests
    check (spent + reserved never exceeds the limit through reservations; reserved ≥ 0)."""

    limit: int
    spent: int = 0
    reserved: int = 0
    open: dict[str, tuple[int, float]] = field(default_factory=dict)  # id → (amount, lease end)
    settled: set[str] = field(default_factory=set)

    def reserve(self, rid: str, prompt_micro: int, out_pico: int, asked: int, lease_end: float) -> Decision:
        if rid in self.open or rid in self.settled:
            return Decision(False, 0, 0)
        decision = decide(self.limit, self.spent, self.reserved, prompt_micro, out_pico, asked)
        if decision.admitted:
            self.reserved += decision.reserve_micro
            self.open[rid] = (decision.reserve_micro, lease_end)
        return decision

    def settle(self, rid: str, cost_micro: int) -> bool:
        """Count ``cost_micro`` once; whether this settlement counted."""
        if rid in self.settled:
            return False
        self.settled.add(rid)
        held = self.open.pop(rid, None)
        if held is not None:
            self.reserved -= held[0]
        self.spent += cost_micro
        return True

    def expire(self, now: float) -> int:
        """Release the reservations whose lease ended; how many."""
        gone = [rid for rid, (_, end) in self.open.items() if end <= now]
        for rid in gone:
            self.reserved -= self.open.pop(rid)[0]
        return len(gone)

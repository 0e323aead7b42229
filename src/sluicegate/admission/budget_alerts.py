"""What a budget's period looks like in reports (and after a reservation), and how its alerts
are announced: a log line, and a POST of the period as JSON to the configured webhook."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..config_money import usd
from ..observe.alerts import post_json
from .budget_math import Decision
from .budget_scopes import Book, Budget

__all__ = ["Reservation", "Usage", "announce"]

logger = logging.getLogger("sluicegate.budgets")


@dataclass(frozen=True, slots=True)
class Usage:
    """A budget's period as it stands."""

    budget: Budget
    period: str
    ends_at: float
    spent_micro: int
    reserved_micro: int
    forecast_micro: int | None = None  # the period's end, at the last day's burn rate

    def to_dict(self) -> dict[str, Any]:
        limit = self.budget.limit_micro
        return {
            "scope": self.budget.scope,
            "period": self.period,
            "limit_usd": limit / 1_000_000,
            "spent_usd": self.spent_micro / 1_000_000,
            "reserved_usd": self.reserved_micro / 1_000_000,
            "used": round((self.spent_micro + self.reserved_micro) / limit, 4) if limit else None,
            "resets_at": self.ends_at,
            "forecast_usd": None if self.forecast_micro is None else self.forecast_micro / 1_000_000,
        }


class Reservation(NamedTuple):
    """A reservation's outcome: the decision, the budgets' periods and each one's (spent,
    reserved) after it, the index of the budget that refused (-1 when admitted), and whether
    that was the throttle's cap."""

    decision: Decision
    books: Sequence[Book]
    after: Sequence[tuple[int, int]]
    refused_by: int
    throttled: str = ""  # the throttle's cap that refused: concurrency or per_minute

    @property
    def usages(self) -> list[Usage]:
        """Each budget's period after the reservation."""
        each = zip(self.books, self.after, strict=True)
        return [
            Usage(budget, name, ends, spent, reserved) for (budget, name, ends), (spent, reserved) in each
        ]


async def announce(usage: Usage, level: str, url: str | None) -> None:
    """Log an alert (``forecast``, or the share reached), and POST it to ``url`` if set."""
    limit = usd(usage.budget.limit_micro)
    if level == "forecast":
        logger.warning(
            "budget forecast: %s is on course to spend %s of %s by the end of %s",
            usage.budget.scope,
            usd(usage.forecast_micro or 0),
            limit,
            usage.period,
        )
    else:
        logger.warning(
            "budget alert: %s has spent %s of %s this %s (%s)",
            usage.budget.scope,
            usd(usage.spent_micro),
            limit,
            usage.budget.period,
            usage.period,
        )
    if url:
        report = {"event": "budget_" + ("forecast" if level == "forecast" else "alert"), "level": level}
        with contextlib.suppress(Exception):
            await post_json(url, {**report, **usage.to_dict()})

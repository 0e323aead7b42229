"""What a budget's period looks like in reports, and how its alerts are announced: a log line,
and a POST of the period as JSON to the configured webhook."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from ..config_money import usd
from ..observe.alerts import post_json
from .budget_scopes import Budget

__all__ = ["Usage", "announce"]

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

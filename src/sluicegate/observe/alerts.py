"""Operator alerts: a condition (Redis unreachable for the rate limits, say) is raised once when
it begins and resolved once when it ends, in each process. Each change is a log warning and,
with ``alerts.webhook_url`` set, a JSON POST to it, sent in the background so that no request
waits for it. The full alerting system (rules, dashboards) comes with observability.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from ..background import spawn

__all__ = ["Alerts", "post_json"]

logger = logging.getLogger("sluicegate.alerts")
_POST_TIMEOUT_S = 5.0


async def post_json(url: str, body: dict[str, Any]) -> None:
    """POST ``body`` as JSON to a webhook, within 5 s; raises what went wrong."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_POST_TIMEOUT_S)) as session,
        session.post(url, json=body) as response,
    ):
        await response.read()


class Alerts:
    """Raises and resolves conditions, each once per change (see the module's docstring)."""

    def __init__(self, webhook_url: str | None = None) -> None:
        self._url = webhook_url
        self.active: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    def alert(self, condition: str, message: str) -> None:
        """``condition`` began: warn, unless it is already raised."""
        if condition not in self.active:
            self.active.add(condition)
            self._announce(condition, "raised", message)

    def resolve(self, condition: str, message: str) -> None:
        """``condition`` ended: say so, if it was raised."""
        if condition in self.active:
            self.active.discard(condition)
            self._announce(condition, "resolved", message)

    def _announce(self, condition: str, state: str, message: str) -> None:
        logger.warning("%s", message)
        if not self._url:
            return
        body = {
            "event": "alert",
            "condition": condition,
            "state": state,
            "message": message,
            "at": time.time(),
        }
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no running loop (a library caller's sync code): the log has it
            return
        spawn(self._tasks, self._post(self._url, body))

    @staticmethod
    async def _post(url: str, body: dict[str, Any]) -> None:
        try:
            await post_json(url, body)
        except Exception as exc:  # the alert is in the log; the webhook is best effort
            logger.warning("alerts: could not post to the webhook (%s)", type(exc).__name__)

    async def aclose(self) -> None:
        """Wait for the posts under way (each is bounded by its timeout)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

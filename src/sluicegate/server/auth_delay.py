"""Slowing down repeated failed authentication from one address, pure: ``now`` is passed in.

A client address that fails authentication more than ``free`` times within ``window_s`` has
each further failure answered after a delay that doubles from ``base_s`` up to ``cap_s``. A
key guesser is slowed to a crawl; a user who mistyped a key once is not slowed at all. The
delay holds only the failing request (the worker serves others meanwhile). The table is per
worker and bounded: past ``max_addresses`` the oldest addresses are forgotten.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["FailedAuthDelay"]


class FailedAuthDelay:
    """Counts failed authentications per address over a fixed window."""

    def __init__(
        self,
        *,
        free: int = 5,
        window_s: float = 60.0,
        base_s: float = 0.1,
        cap_s: float = 5.0,
        max_addresses: int = 10_000,
    ) -> None:
        self._free = free
        self._window_s = window_s
        self._base_s = base_s
        self._cap_s = cap_s
        self._max = max_addresses
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()  # address: (since, count)

    def failed(self, address: str, now: float) -> float:
        """Count one failure from ``address``; the delay in seconds before answering it."""
        since, count = self._failures.pop(address, (now, 0))
        if now - since >= self._window_s:
            since, count = now, 0
        count += 1
        self._failures[address] = (since, count)
        if len(self._failures) > self._max:
            self._failures.popitem(last=False)
        excess = count - self._free
        if excess <= 0:
            return 0.0
        return float(min(self._cap_s, self._base_s * 2.0 ** min(excess - 1, 32)))

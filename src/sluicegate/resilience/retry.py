"""Retry arithmetic, pure: full-jitter backoff, ``Retry-After`` and the retry budget.

- Backoff before retry ``n`` (1 for the first retry) is drawn uniformly from
  ``[0, min(cap, base * 2**n)]``: full jitter, so that clients that failed together do not
  come back together.
- An upstream's ``retry-after-ms`` (milliseconds) or ``retry-after`` (seconds, or an HTTP
  date) is a floor on that delay.
- A `RetryBudget` keeps retries to ``ratio`` of the first attempts over a sliding window, plus
  a small ``floor``, so that an outage cannot multiply the load on a provider.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime

__all__ = ["RetryBudget", "backoff_s", "retry_after_s"]


def backoff_s(retry: int, base_s: float, cap_s: float, draw: Callable[[], float]) -> float:
    """The delay before retry number ``retry`` (≥ 1); ``draw`` returns a float in [0, 1)."""
    return draw() * min(cap_s, base_s * 2.0 ** min(retry, 62))


def retry_after_s(headers: Mapping[str, str], now: float) -> float | None:
    """How long the upstream asked to wait, in seconds, from its headers; None if it did not.

    ``now`` is the wall-clock time (seconds since the epoch), for the HTTP-date form.
    """
    raw = headers.get("retry-after-ms")
    if raw is not None:
        try:
            value = float(raw) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    return value if math.isfinite(value) and value >= 0 else None


class RetryBudget:
    """Retries allowed: ``ratio`` of first attempts over the last ``window_s``, plus ``floor``.

    The window is kept as ten buckets, so counting costs O(1) and memory is constant.
    """

    __slots__ = ("_bucket_s", "_buckets", "_firsts", "_floor", "_last", "_ratio", "_retries")
    _SLOTS = 10

    def __init__(self, ratio: float, floor: int, window_s: float) -> None:
        self._ratio = ratio
        self._floor = floor
        self._bucket_s = window_s / self._SLOTS
        self._buckets: list[list[int]] = [[0, 0] for _ in range(self._SLOTS)]  # [firsts, retries]
        self._last = 0  # the absolute bucket number last written
        self._firsts = 0
        self._retries = 0

    def _advance(self, now: float) -> list[int]:
        current = int(now // self._bucket_s)
        gap = current - self._last
        if gap > 0:
            for step in range(min(gap, self._SLOTS)):
                bucket = self._buckets[(self._last + 1 + step) % self._SLOTS]
                self._firsts -= bucket[0]
                self._retries -= bucket[1]
                bucket[0] = bucket[1] = 0
            self._last = current
        return self._buckets[self._last % self._SLOTS]

    def first(self, now: float) -> None:
        """Count a first attempt (it earns ``ratio`` of a retry)."""
        self._advance(now)[0] += 1
        self._firsts += 1

    def try_retry(self, now: float) -> bool:
        """Spend one retry if the budget has room; False when it has none."""
        bucket = self._advance(now)
        if self._retries + 1 > self._ratio * self._firsts + self._floor:
            return False
        bucket[1] += 1
        self._retries += 1
        return True

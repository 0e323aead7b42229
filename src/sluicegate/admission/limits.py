"""Rate-limit decisions that need no I/O: which limits a request counts against, their keys, the
IETF ``RateLimit`` headers, and the in-process sliding log a replica falls back to when Redis,
configured, is down.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from ..cache.keys import escape
from ..calls import RequestContext
from ..config import RequestLimit

__all__ = ["Check", "LocalLog", "Verdict", "checks_for", "headers_for", "limit_key"]

_ANONYMOUS = "%00anon"  # the org's users who send no user id share one log, as in the cache


class Check(NamedTuple):
    """One limit a request counts against, and the Redis key of its log."""

    rule: RequestLimit
    key: str


class Verdict(NamedTuple):
    """The outcome of the checks: admitted or not, and for each check what is left and when
    its oldest request leaves the window (seconds)."""

    admitted: bool
    remaining: tuple[int, ...]
    reset_s: tuple[int, ...]
    blocked: int | None = None  # the index of the check that refused
    retry_after_s: int = 0


def limit_key(prefix: str, per: str, feature: str | None, size: int, context: RequestContext) -> str | None:
    """The key of one limit's log or bucket for a call of ``context``, or None when the limit
    does not apply to it (another feature's, or a key's without a key). The org in braces keeps
    an org's limits in one Redis Cluster hash slot."""
    if feature is not None and feature != context.feature:
        return None
    if per == "user":
        subject = escape(context.user) if context.user else _ANONYMOUS
    elif per == "key":
        if context.key_id is None:
            return None  # no key: local development
        subject = escape(context.key_id)
    else:
        subject = ""
    scope = escape(feature) if feature else "*"
    return f"{prefix}:{{o:{escape(context.org)}}}:{per}:{subject}:{scope}:{size}"


def checks_for(rules: Sequence[RequestLimit], context: RequestContext) -> list[Check]:
    """The limits that apply to a request of ``context``, with their keys (one hash slot per org)."""
    out: list[Check] = []
    for rule in rules:
        key = limit_key("sg:rl", rule.per, rule.feature, rule.window_s, context)
        if key is not None:
            out.append(Check(rule, key))
    return out


def headers_for(checks: Sequence[Check], verdict: Verdict) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers), plus
    ``Retry-After`` on a refusal."""
    each = zip(checks, verdict.remaining, verdict.reset_s, strict=True)
    out = {
        "ratelimit-policy": ", ".join([c.rule.policy for c in checks]),
        "ratelimit": ", ".join([f'"{c.rule.name}";r={r};t={t}' for c, r, t in each]),
    }
    if not verdict.admitted:
        out["retry-after"] = str(max(1, verdict.retry_after_s))
    return out


class LocalLog:
    """A sliding log per key in this process: each replica's share of a limit while Redis is down."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._logs: dict[str, deque[float]] = {}

    def check(self, checks: Sequence[Check], now: float) -> Verdict:
        """Admit (and log) a request at ``now`` if every check has room in its share (pure but
        for the log itself)."""
        logs: list[deque[float]] = []
        limits: list[int] = []
        refused = None
        for index, check in enumerate(checks):
            log = self._logs.setdefault(check.key, deque())
            while log and log[0] <= now - check.rule.window_s:
                log.popleft()
            limits.append(max(1, math.floor(check.rule.limit * self.share)))
            logs.append(log)
            if refused is None and len(log) >= limits[-1]:
                refused = index
        if refused is None:
            for log in logs:
                log.append(now)
        remaining = tuple(max(0, limit - len(log)) for limit, log in zip(limits, logs, strict=True))
        resets = _resets(checks, logs, now)
        if refused is not None:  # what each limit has left, and when its oldest request leaves
            return Verdict(False, remaining, resets, refused, max(1, resets[refused]))
        return Verdict(True, remaining, resets)


def _resets(checks: Sequence[Check], logs: Sequence[deque[float]], now: float) -> tuple[int, ...]:
    each = zip(checks, logs, strict=True)
    return tuple(max(0, math.ceil((log[0] if log else now) + c.rule.window_s - now)) for c, log in each)

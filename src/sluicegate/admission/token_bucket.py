"""Token limits with no I/O: which limits a call counts against, their keys, the bucket
arithmetic, and the in-process buckets a replica falls back to while Redis is down.

A limit of N tokens a minute is a bucket that holds N tokens and refills at N/60 a second.
Before a call goes upstream its worst case (the prompt's estimate plus ``max_tokens`` times
``n``) is taken from every bucket it counts against, or from none; after the call, what it
did not use is given back. A call asking for more than a whole bucket is let through when
the bucket is full, so that no request is refused forever: the stage holds at most its
tightest bucket, and the settlement takes what the call used beyond.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..calls import RequestContext
from ..config import TokenLimit
from .limits import limit_key

__all__ = ["LocalBuckets", "Taken", "TokenCheck", "refill", "take", "token_checks"]


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """One token limit a call counts against, and the key of its bucket."""

    rule: TokenLimit
    key: str

    @property
    def rate(self) -> float:
        """Tokens a second the bucket refills by."""
        return self.rule.tokens_per_minute / 60.0


@dataclass(frozen=True, slots=True)
class Taken:
    """The outcome of a take: admitted or not, the index of the refusing limit, when to retry
    (seconds), the tokens left in the tightest bucket, and whether this process's own buckets
    counted it (the shared store was down): what it did not use goes back where it was taken."""

    admitted: bool
    blocked: int | None = None
    retry_after_s: float = 0.0
    remaining: int = 0  # admitted: the tightest bucket's level after the take; refused: the refuser's
    local: bool = False


def token_checks(rules: Sequence[TokenLimit], context: RequestContext) -> list[TokenCheck]:
    """The token limits that apply to a call of ``context`` (one hash slot per org)."""
    out: list[TokenCheck] = []
    for rule in rules:
        key = limit_key("sg:tpm", rule.per, rule.feature, rule.tokens_per_minute, context)
        if key is not None:
            out.append(TokenCheck(rule, key))
    return out


def refill(level: float, at: float, capacity: float, rate: float, now: float) -> float:
    """A bucket's level at ``now``, refilled since ``at`` (pure)."""
    return min(capacity, level + max(0.0, now - at) * rate)


def take(level: float, capacity: float, rate: float, cost: int) -> tuple[bool, float]:
    """Whether ``cost`` may be taken from a (refilled) bucket, and the seconds until it may if
    not (pure). A cost above the capacity needs a full bucket."""
    need = min(float(cost), capacity)
    if level >= need:
        return True, 0.0
    return False, (need - level) / rate


class LocalBuckets:
    """Buckets in this process: each replica's share of a limit while Redis is down, or every
    limit in tests."""

    def __init__(self, share: float = 1.0) -> None:
        self.share = share
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (level, at)

    def take(self, checks: Sequence[TokenCheck], cost: int, now: float) -> Taken:
        """Take ``cost`` from every bucket, or from none."""
        levels = []
        for index, check in enumerate(checks):
            capacity, rate = check.rule.tokens_per_minute * self.share, check.rate * self.share
            level, at = self._buckets.get(check.key, (capacity, now))
            level = refill(level, at, capacity, rate, now)
            ok, wait = take(level, capacity, rate, cost)
            if not ok:
                return Taken(False, index, wait, max(0, math.floor(level)), local=True)
            levels.append(level)
        for check, level in zip(checks, levels, strict=True):
            self._buckets[check.key] = (level - cost, now)
        return Taken(True, remaining=max(0, math.floor(min(levels) - cost)), local=True)

    def give_back(self, checks: Sequence[TokenCheck], tokens: int, now: float) -> None:
        """Return unused tokens to every bucket (never above its capacity)."""
        for check in checks:
            capacity, rate = check.rule.tokens_per_minute * self.share, check.rate * self.share
            level, at = self._buckets.get(check.key, (capacity, now))
            self._buckets[check.key] = (min(capacity, refill(level, at, capacity, rate, now) + tokens), now)

"""Cache policy: what may be cached, for how long, and what the client asked. Pure, no I/O.

The TTL rule is the brief's, with its constants configurable (``cache.ttl``)::

    multiplier = clamp(cost / reference_usd, min_multiplier, max_multiplier)   # cost-aware
    popularity = popular_multiplier if hits > popular_hits else 1
    ttl        = clamp(base_ttl * multiplier * popularity, min_ttl_s, max_ttl_s)

With the defaults (reference $0.001, multiplier between 1 and 5, doubled past 100 hits, TTL
between 60 s and 30 days) a 24 h template that cost $0.004 is kept 4 days, and one that cost
$0.00002 is kept the base 24 h, not 29 minutes: the base TTL is the least an answer keeps.
"""

from __future__ import annotations

from typing import Any, Literal

from ..calls import CacheControl, CallKind
from ..config import CostTtlConfig, FeatureCache
from ..config_base import MAX_NAME, name_problem
from ..errors import InvalidRequest
from .entry import Entry

__all__ = [
    "answer_is_storable",
    "answering",
    "cut_short",
    "parse_body_cache",
    "parse_cache_control",
    "refresh_ahead",
    "request_is_cacheable",
    "ttl_for",
]

_MAX_TAGS = 16
_BAD_FINISH = frozenset({"content_filter", "error"})
# A tool call, in its current form and in the older one (``functions`` and ``function_call``).
_TOOL_FINISH = frozenset({"tool_calls", "function_call"})


def ttl_for(
    policy: FeatureCache,
    rule: CostTtlConfig,
    cost_usd: float | None,
    hits: int = 0,
    requested_ttl: int | None = None,
) -> int:
    """The TTL in seconds of a new entry; a client's ``ttl`` replaces the base TTL, capped."""
    base = requested_ttl if requested_ttl is not None else policy.ttl_s
    if not policy.cost_aware:
        return max(1, min(base, rule.max_ttl_s))
    multiplier = 1.0 if cost_usd is None else cost_usd / rule.reference_usd
    multiplier = min(max(multiplier, rule.min_multiplier), rule.max_multiplier)
    if hits > rule.popular_hits:
        multiplier *= rule.popular_multiplier
    ttl = round(base * multiplier)
    return int(min(max(ttl, rule.min_ttl_s), rule.max_ttl_s))


def answering(
    entry: Entry, policy: FeatureCache, control: CacheControl, now: float
) -> Literal["fresh", "stale"] | None:
    """How ``entry`` may answer at ``now``: ``fresh`` (within its TTL and the client's max-age),
    ``stale`` (past its TTL, within stale-while-revalidate, no max-age asked), or not at all."""
    if entry.fresh(now) and (control.max_age is None or entry.age(now) <= control.max_age):
        return "fresh"
    if control.max_age is None and now < entry.expires_at + policy.stale_while_revalidate_s:
        return "stale"
    return None


def refresh_ahead(entry: Entry, policy: FeatureCache, window_s: float, now: float) -> bool:
    """Whether a hit on ``entry`` at ``now`` refreshes it before it expires: popular enough
    (``refresh_ahead_hits``) and within ``window_s`` of its expiry, or a quarter of its lifetime
    if that is shorter (an entry stored for 60 s is not refetched on every hit)."""
    threshold = policy.refresh_ahead_hits
    return (
        threshold is not None
        and entry.hits >= threshold
        and entry.expires_at - now < min(window_s, entry.ttl_s / 4)
    )


def request_is_cacheable(policy: FeatureCache, kind: CallKind, body: dict[str, Any]) -> bool:
    """Whether answers to ``body`` may be served from or stored in the cache at all.

    A sampled answer (``temperature`` above 0) is cached only when the feature allows it; a
    request that leaves ``temperature`` unset is cached, as are requests for several choices.
    """
    if not policy.enabled:
        return False
    if kind == "embeddings":
        return True
    temperature = body.get("temperature")
    return not (isinstance(temperature, int | float) and temperature > 0 and not policy.cache_temperature)


def cut_short(payload: dict[str, Any]) -> bool:
    """Whether a choice of a chat answer ended at its token limit (``finish_reason: length``)."""
    choices = payload.get("choices")
    return any(isinstance(c, dict) and c.get("finish_reason") == "length" for c in choices or ())


def answer_is_storable(policy: FeatureCache, kind: CallKind, payload: Any) -> bool:
    """Whether a complete answer may be stored: never errors, refusals or filtered output."""
    if not isinstance(payload, dict) or "error" in payload:
        return False
    if kind == "embeddings":
        return isinstance(payload.get("data"), list)
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            return False
        message = choice.get("message")
        if not isinstance(message, dict) or message.get("refusal"):
            return False
        finish = choice.get("finish_reason")
        if finish != "stop" and (
            finish in _BAD_FINISH
            or (finish == "length" and not policy.cache_truncated)
            or (finish in _TOOL_FINISH and not policy.cache_tool_calls)
        ):
            return False
        if (message.get("tool_calls") or message.get("function_call")) and not policy.cache_tool_calls:
            return False
    return True


def parse_cache_control(header: str | None) -> CacheControl:
    """The directives of a request's ``Cache-Control`` header that the cache honours."""
    if not header:
        return CacheControl()
    no_cache = no_store = False
    max_age: int | None = None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            digits = value.strip().strip('"')
            if digits.isdigit():
                max_age = int(digits)
    return CacheControl(no_cache=no_cache, no_store=no_store, max_age=max_age)


def parse_body_cache(value: Any, header: CacheControl) -> CacheControl:
    """Merge the body's ``cache`` object into the header's directives; `InvalidRequest` if malformed."""
    if value is None:
        return header
    if not isinstance(value, dict):
        raise InvalidRequest("cache must be an object (or null)", param="cache", code="invalid_type")
    unknown = set(value) - {"no_cache", "no_store", "max_age", "ttl", "tags"}
    if unknown:
        raise InvalidRequest(
            f"unknown cache option(s): {', '.join(sorted(unknown))}; "
            "use no_cache, no_store, max_age, ttl and tags",
            param="cache",
            code="invalid_value",
        )
    flags = {}
    for name in ("no_cache", "no_store"):
        flag = value.get(name, False)
        if not isinstance(flag, bool):
            raise InvalidRequest(
                f"cache.{name} must be a boolean", param=f"cache.{name}", code="invalid_type"
            )
        flags[name] = flag
    numbers: dict[str, int | None] = {}
    for name in ("max_age", "ttl"):
        number = value.get(name)
        if number is not None and (not isinstance(number, int) or isinstance(number, bool) or number < 0):
            raise InvalidRequest(
                f"cache.{name} must be a whole number of seconds", param=f"cache.{name}", code="invalid_type"
            )
        numbers[name] = number
    tags = value.get("tags", [])
    if (
        not isinstance(tags, list)
        or len(tags) > _MAX_TAGS
        or not all(isinstance(t, str) and name_problem(t) is None for t in tags)
    ):
        raise InvalidRequest(
            f"cache.tags must be a list of at most {_MAX_TAGS} strings of 1-{MAX_NAME} characters, "
            "without control characters",
            param="cache.tags",
            code="invalid_type",
        )
    return CacheControl(
        no_cache=header.no_cache or flags["no_cache"],
        no_store=header.no_store or flags["no_store"],
        max_age=numbers["max_age"] if numbers["max_age"] is not None else header.max_age,
        ttl=numbers["ttl"] if numbers["ttl"] is not None else header.ttl,
        tags=tuple(dict.fromkeys(tags)),
        if_none_match=header.if_none_match,
    )

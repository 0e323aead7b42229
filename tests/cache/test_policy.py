"""Tests for sluicegate.cache.policy: TTLs, what may be cached, and the client's directives.

The brief's cost-aware TTL (reference $0.001, multiplier between 0.25 and 5, doubled past 100
hits, TTL between 60 s and 30 days), worked through for a 24 h template:

    cost $0.004    -> multiplier 4             -> 24 h * 4    = 96 h = 4 days
    cost $0.00002  -> multiplier 0.02 -> 0.25  -> 24 h * 0.25 = 6 h   (not 29 minutes)
    cost $0.01     -> multiplier 10   -> 5     -> 24 h * 5    = 5 days
    cost $0.004, 101 hits                      -> 4 days * 2  = 8 days

The shipped default raises the floor to 1 (``cache.ttl.min_multiplier``), so that a cheap
answer keeps at least its base TTL: $0.00002 -> 24 h. The tests give the rule explicitly.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sluicegate.cache.entry import Entry
from sluicegate.cache.policy import (
    answer_is_storable,
    parse_body_cache,
    parse_cache_control,
    refresh_ahead,
    request_is_cacheable,
    ttl_for,
)
from sluicegate.calls import CacheControl
from sluicegate.config import CostTtlConfig, FeatureCache
from sluicegate.errors import InvalidRequest

HOUR = 3600
DAY = 24 * HOUR
RULE = CostTtlConfig(min_multiplier=0.25)  # the brief's rule
SHIPPED = CostTtlConfig()
TEMPLATE = FeatureCache(ttl_s=DAY)
DEFAULT = FeatureCache()


# ttl_for


@pytest.mark.parametrize(
    ("cost", "hits", "expected"),
    [
        (0.004, 0, 4 * DAY),
        (0.00002, 0, 6 * HOUR),
        (0.01, 0, 5 * DAY),
        (0.001, 0, DAY),
        (None, 0, DAY),
        (0.004, 100, 4 * DAY),
        (0.004, 101, 8 * DAY),
        (0.00002, 101, 12 * HOUR),
    ],
)
def test_worked_examples(cost: float | None, hits: int, expected: int) -> None:
    """The module docstring's examples: cost scales the 24 h base, clamped, doubled when popular."""
    assert ttl_for(TEMPLATE, RULE, cost, hits) == expected


def test_shipped_floor_keeps_the_base_ttl() -> None:
    """With the shipped floor of 1, a cheap answer keeps its base TTL and a dear one still gains."""
    assert SHIPPED.min_multiplier == 1.0
    assert ttl_for(TEMPLATE, SHIPPED, 0.00002) == DAY
    assert ttl_for(TEMPLATE, SHIPPED, 0.004) == 4 * DAY


def test_ttl_is_capped_and_floored() -> None:
    """The TTL never exceeds max_ttl_s nor falls below min_ttl_s."""
    assert ttl_for(FeatureCache(ttl_s=20 * DAY), RULE, 1.0, hits=1000) == RULE.max_ttl_s
    assert ttl_for(FeatureCache(ttl_s=100), RULE, 0.0) == RULE.min_ttl_s
    tight = CostTtlConfig(min_multiplier=0.25, min_ttl_s=600, max_ttl_s=7200)
    assert ttl_for(TEMPLATE, tight, 0.004) == 7200
    assert ttl_for(FeatureCache(ttl_s=1000), tight, 0.0) == 600


def test_requested_ttl_replaces_the_base() -> None:
    """A client's ttl replaces the feature's base TTL, and is still scaled and capped."""
    assert ttl_for(TEMPLATE, RULE, 0.001, requested_ttl=600) == 600
    assert ttl_for(TEMPLATE, RULE, 0.00002, requested_ttl=600) == 150
    assert ttl_for(TEMPLATE, RULE, 0.001, requested_ttl=10**9) == RULE.max_ttl_s


def test_rule_constants_are_honoured() -> None:
    """Another reference cost and multiplier bounds change the result accordingly."""
    rule = CostTtlConfig(reference_usd=0.01, min_multiplier=0.5, max_multiplier=2.0, popular_hits=5)
    assert ttl_for(TEMPLATE, rule, 0.01) == DAY
    assert ttl_for(TEMPLATE, rule, 0.0) == DAY // 2
    assert ttl_for(TEMPLATE, rule, 1.0) == 2 * DAY
    assert ttl_for(TEMPLATE, rule, 0.01, hits=6) == 2 * DAY


def test_cost_unaware_feature_keeps_its_base_ttl() -> None:
    """With cost_aware off, cost, popularity and the floor do not apply; the cap does."""
    policy = FeatureCache(ttl_s=7 * DAY, cost_aware=False)
    assert ttl_for(policy, RULE, 0.00001, hits=10_000) == 7 * DAY
    assert ttl_for(policy, RULE, 10.0) == 7 * DAY
    assert ttl_for(FeatureCache(ttl_s=10, cost_aware=False), RULE, 0.0) == 10
    assert ttl_for(FeatureCache(ttl_s=90 * DAY, cost_aware=False), RULE, None) == RULE.max_ttl_s
    assert ttl_for(policy, RULE, None, requested_ttl=60) == 60


@settings(max_examples=200, deadline=None)
@given(
    base=st.integers(1, 90 * DAY),
    low=st.floats(0, 1, allow_nan=False),
    high=st.floats(0, 1, allow_nan=False),
    hits=st.integers(0, 1000),
)
def test_ttl_is_bounded_and_grows_with_cost(base: int, low: float, high: float, hits: int) -> None:
    """For any base, cost and hits the TTL is within bounds, and a dearer answer is kept no shorter."""
    low, high = sorted((low, high))
    policy = FeatureCache(ttl_s=base)
    cheap, dear = ttl_for(policy, RULE, low, hits), ttl_for(policy, RULE, high, hits)
    assert RULE.min_ttl_s <= cheap <= dear <= RULE.max_ttl_s
    assert ttl_for(policy, RULE, high, hits + RULE.popular_hits + 1) >= dear


# request_is_cacheable


@pytest.mark.parametrize(
    ("policy", "kind", "body", "expected"),
    [
        (DEFAULT, "chat", {}, True),
        (DEFAULT, "chat", {"temperature": 0}, True),
        (DEFAULT, "chat", {"temperature": 0.0, "n": 3}, True),
        (DEFAULT, "chat", {"temperature": 0.7}, False),
        (DEFAULT, "chat", {"temperature": 1}, False),
        (FeatureCache(cache_temperature=True), "chat", {"temperature": 0.7}, True),
        (DEFAULT, "embeddings", {"temperature": 0.7}, True),
        (FeatureCache(enabled=False), "chat", {}, False),
        (FeatureCache(enabled=False), "embeddings", {}, False),
    ],
)
def test_request_is_cacheable(policy: FeatureCache, kind: Any, body: dict[str, Any], expected: bool) -> None:
    """Sampled chat requests bypass unless allowed; a disabled feature never caches."""
    assert request_is_cacheable(policy, kind, body) is expected


# answer_is_storable


def answer(finish: str = "stop", **message: Any) -> dict[str, Any]:
    """A chat.completion with one choice."""
    return {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok", **message},
                "finish_reason": finish,
            }
        ],
    }


TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (answer(), True),
        (answer(refusal=None), True),
        ({"error": {"message": "boom"}}, False),
        ("not an object", False),
        ({"choices": []}, False),
        ({"choices": "x"}, False),
        ({"choices": ["x"]}, False),
        ({"choices": [{"finish_reason": "stop"}]}, False),
        (answer(refusal="I can't help with that"), False),
        (answer("content_filter"), False),
        (answer("error"), False),
        (answer("length"), False),
        (answer("tool_calls", tool_calls=[TOOL_CALL]), False),
        (answer("stop", tool_calls=[TOOL_CALL]), False),
        (answer("function_call", function_call=TOOL_CALL["function"]), False),
        (answer("stop", function_call=TOOL_CALL["function"]), False),
        ({"choices": [*answer()["choices"], *answer("content_filter")["choices"]]}, False),
    ],
)
def test_what_is_storable_by_default(payload: Any, expected: bool) -> None:
    """Errors, refusals, filtered, truncated and tool-calling answers are not stored by default."""
    assert answer_is_storable(DEFAULT, "chat", payload) is expected


def test_truncated_and_tool_call_answers_when_allowed() -> None:
    """cache_truncated and cache_tool_calls let those answers be stored, and nothing else."""
    truncated = FeatureCache(cache_truncated=True)
    tools = FeatureCache(cache_tool_calls=True)
    assert answer_is_storable(truncated, "chat", answer("length"))
    assert not answer_is_storable(truncated, "chat", answer("tool_calls", tool_calls=[TOOL_CALL]))
    assert answer_is_storable(tools, "chat", answer("tool_calls", tool_calls=[TOOL_CALL]))
    assert answer_is_storable(tools, "chat", answer("function_call", function_call=TOOL_CALL["function"]))
    assert not answer_is_storable(tools, "chat", answer("length"))
    both = FeatureCache(cache_truncated=True, cache_tool_calls=True)
    assert not answer_is_storable(both, "chat", answer("content_filter"))


def test_embeddings_are_storable_when_they_hold_data() -> None:
    """An embeddings answer is stored when it has a data list, and never when it is an error."""
    assert answer_is_storable(DEFAULT, "embeddings", {"object": "list", "data": []})
    assert not answer_is_storable(DEFAULT, "embeddings", {"object": "list"})
    assert not answer_is_storable(DEFAULT, "embeddings", {"error": {"message": "x"}, "data": []})


# parse_cache_control


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, CacheControl()),
        ("", CacheControl()),
        ("no-cache", CacheControl(no_cache=True)),
        ("no-store", CacheControl(no_store=True)),
        ("No-Cache, NO-STORE", CacheControl(no_cache=True, no_store=True)),
        ("max-age=60", CacheControl(max_age=60)),
        ('max-age="30"', CacheControl(max_age=30)),
        (" MAX-AGE = 0 ", CacheControl(max_age=0)),
        ("max-age=abc", CacheControl()),
        ("max-age=-5", CacheControl()),
        ("max-age=1.5", CacheControl()),
        ("private, must-revalidate, foo=bar", CacheControl()),
        (",,;;garbage==", CacheControl()),
        ("no-cache, max-age=10", CacheControl(no_cache=True, max_age=10)),
    ],
)
def test_parse_cache_control(header: str | None, expected: CacheControl) -> None:
    """The honoured directives are read case-insensitively; anything else is ignored."""
    assert parse_cache_control(header) == expected


# parse_body_cache


def test_body_cache_absent_keeps_the_header() -> None:
    """Without a cache object the header's directives stand unchanged."""
    header = CacheControl(no_cache=True, max_age=5, if_none_match='"e"')
    assert parse_body_cache(None, header) is header


def test_body_cache_valid_object() -> None:
    """Every option is read; duplicate tags are dropped in order."""
    parsed = parse_body_cache(
        {"no_cache": True, "no_store": False, "max_age": 30, "ttl": 600, "tags": ["q3", "okr", "q3"]},
        CacheControl(),
    )
    assert parsed == CacheControl(no_cache=True, no_store=False, max_age=30, ttl=600, tags=("q3", "okr"))


def test_body_cache_merges_with_the_header() -> None:
    """Flags add up, the body's numbers win when given, and the header's If-None-Match survives."""
    header = CacheControl(no_store=True, max_age=10, if_none_match='"etag"')
    assert parse_body_cache({"no_cache": True}, header) == CacheControl(
        no_cache=True, no_store=True, max_age=10, if_none_match='"etag"'
    )
    assert parse_body_cache({"max_age": 99, "no_store": False}, header).max_age == 99
    assert parse_body_cache({"max_age": 99, "no_store": False}, header).no_store is True
    assert parse_body_cache({}, header) == header


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("no-cache", "cache"),
        (["ttl"], "cache"),
        ({"ttl_s": 5}, "cache"),
        ({"tags": ["a"], "colour": "red"}, "cache"),
        ({"no_cache": "yes"}, "cache.no_cache"),
        ({"no_cache": None}, "cache.no_cache"),
        ({"no_store": 1}, "cache.no_store"),
        ({"max_age": -1}, "cache.max_age"),
        ({"max_age": True}, "cache.max_age"),
        ({"max_age": "60"}, "cache.max_age"),
        ({"ttl": 1.5}, "cache.ttl"),
        ({"ttl": False}, "cache.ttl"),
        ({"tags": "q3"}, "cache.tags"),
        ({"tags": [1]}, "cache.tags"),
        ({"tags": [""]}, "cache.tags"),
        ({"tags": ["x" * 129]}, "cache.tags"),
        ({"tags": ["a\x00b"]}, "cache.tags"),
        ({"tags": [f"t{i}" for i in range(17)]}, "cache.tags"),
    ],
)
def test_body_cache_invalid_shapes_name_the_param(value: Any, param: str) -> None:
    """Each malformed cache object is a 400 InvalidRequest naming the offending parameter."""
    with pytest.raises(InvalidRequest) as raised:
        parse_body_cache(value, CacheControl())
    assert raised.value.param == param
    assert raised.value.status_code == 400
    assert param.split(".")[-1] in raised.value.message


def test_body_cache_limits_are_inclusive() -> None:
    """Sixteen tags of 128 characters, and zero seconds, are still valid."""
    tags = [f"{i:02d}" + "x" * 126 for i in range(16)]
    parsed = parse_body_cache({"tags": tags, "ttl": 0, "max_age": 0}, CacheControl())
    assert parsed.tags == tuple(tags)
    assert (parsed.ttl, parsed.max_age) == (0, 0)


def test_refresh_ahead_is_due_for_a_popular_entry_near_its_end() -> None:
    """Popular enough, and within the window or a quarter of its lifetime of expiring (pure)."""
    entry = Entry("chat", b"{}", 1000.0, 1000.0 + 3600, '"e"', "chat", "acme", None, "m", hits=5)
    policy = FeatureCache(refresh_ahead_hits=5)
    assert not refresh_ahead(entry, policy, 60, 1000.0 + 3000)  # 600 s left
    assert refresh_ahead(entry, policy, 60, 1000.0 + 3560)  # 40 s left
    assert not refresh_ahead(entry, FeatureCache(refresh_ahead_hits=6), 60, 1000.0 + 3560)
    short = Entry("chat", b"{}", 1000.0, 1060.0, '"e"', "chat", "acme", None, "m", hits=5)
    assert not refresh_ahead(short, policy, 60, 1010.0) and refresh_ahead(short, policy, 60, 1046.0)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"min_multiplier": 6.0, "max_multiplier": 5.0}, "min_multiplier (6) is above max_multiplier (5)"),
        ({"min_ttl_s": 7200, "max_ttl_s": 3600}, "min_ttl_s (7200) is above max_ttl_s (3600)"),
    ],
)
def test_contradictory_ttl_bounds_are_refused(fields: dict[str, Any], named: str) -> None:
    """A floor above its cap would make every TTL the cap, silently: the config is refused."""
    with pytest.raises(ValidationError, match=re.escape(named)):
        CostTtlConfig(**fields)

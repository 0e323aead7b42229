"""Token limits without I/O: which limits apply, the bucket arithmetic, and the local buckets."""

from __future__ import annotations

import pytest

from sluicegate.admission.token_bucket import LocalBuckets, refill, take, token_checks
from sluicegate.calls import RequestContext
from sluicegate.config import TokenLimit

ORG = TokenLimit(per="org", tokens_per_minute=600)
KEY = TokenLimit(per="key", tokens_per_minute=300, feature="chat")


def test_the_limits_of_a_call_are_its_orgs_and_its_keys_in_its_feature() -> None:
    """A key limit needs a key, and a feature's limit only counts that feature's calls."""
    keyed = token_checks([ORG, KEY], RequestContext("acme", "ann", "chat", "k1"))
    assert [c.rule for c in keyed] == [ORG, KEY]
    assert keyed[0].key == "sg:tpm:{o:acme}:org::*:600"
    assert keyed[1].key == "sg:tpm:{o:acme}:key:k1:chat:300"
    assert [c.rule for c in token_checks([ORG, KEY], RequestContext("acme", None, "chat"))] == [ORG]
    assert [c.rule for c in token_checks([ORG, KEY], RequestContext("acme", None, "insights", "k1"))] == [ORG]


def test_a_bucket_refills_at_its_rate_up_to_a_minutes_worth() -> None:
    """600 a minute is 10 a second, never above 600."""
    assert refill(0, 100.0, 600, 10, 101.5) == 15
    assert refill(590, 100.0, 600, 10, 160.0) == 600
    assert refill(50, 100.0, 600, 10, 99.0) == 50  # a clock that steps back adds nothing


@pytest.mark.parametrize(
    ("level", "cost", "expected"),
    [(600, 100, (True, 0.0)), (50, 100, (False, 5.0)), (600, 5000, (True, 0.0)), (599, 5000, (False, 0.1))],
)
def test_a_take_needs_the_cost_or_a_full_bucket_for_a_call_larger_than_it(
    level: float, cost: int, expected: tuple[bool, float]
) -> None:
    """What fits is taken; a call above the capacity waits for a full bucket, not forever."""
    ok, wait = take(level, 600, 10, cost)
    assert (ok, round(wait, 6)) == expected


def test_local_buckets_take_from_all_or_none_and_give_back_up_to_capacity() -> None:
    """A refusal by one limit takes nothing from the other; a give-back never overfills."""
    buckets = LocalBuckets()
    checks = token_checks([ORG, KEY], RequestContext("acme", None, "chat", "k1"))
    assert buckets.take(checks, 250, now=0.0).admitted
    refused = buckets.take(checks, 100, now=0.0)  # the key has 50 left
    assert not refused.admitted and refused.blocked == 1 and refused.retry_after_s == pytest.approx(10.0)
    assert buckets.take(checks[:1], 350, now=0.0).remaining == 0  # the org still had 350
    buckets.give_back(checks, 10_000, now=0.0)
    assert buckets.take(checks, 100, now=0.0).remaining == 200  # both full again: the key's 300 - 100


def test_a_replicas_share_while_redis_is_down() -> None:
    """With a share of a half, a replica holds half of each bucket."""
    buckets = LocalBuckets(share=0.5)
    checks = token_checks([ORG], RequestContext("acme"))
    assert buckets.take(checks, 300, now=0.0).admitted
    assert not buckets.take(checks, 1, now=0.0).admitted

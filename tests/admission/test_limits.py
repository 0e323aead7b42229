"""Rate-limit decisions with no I/O: keys, headers, and the local share while Redis is down."""

from __future__ import annotations

from sluicegate.admission.limits import LocalLog, Verdict, checks_for, headers_for
from sluicegate.calls import RequestContext
from sluicegate.config import RequestLimit

PER_USER = RequestLimit(per="user", limit=100, window_s=3600)
PER_ORG = RequestLimit(per="org", limit=1000, window_s=60)
PER_KEY = RequestLimit(per="key", limit=5, window_s=1)
CHAT_ONLY = RequestLimit(per="user", limit=10, window_s=60, feature="chat")


def test_each_limit_has_its_own_key_in_the_org_hash_slot() -> None:
    ann = RequestContext("acme", "ann", "chat", "k1")
    checks = checks_for([PER_USER, PER_ORG, PER_KEY, CHAT_ONLY], ann)
    assert [c.key for c in checks] == [
        "sg:rl:{o:acme}:user:ann:*:3600",
        "sg:rl:{o:acme}:org::*:60",
        "sg:rl:{o:acme}:key:k1:*:1",
        "sg:rl:{o:acme}:user:ann:chat:60",
    ]
    assert len({c.key.split("}")[0] for c in checks}) == 1  # one Redis Cluster slot


def test_limits_skip_what_does_not_apply() -> None:
    # another feature, and no key (local development): only the user and org limits count
    nobody = RequestContext("acme", None, "insights", None)
    checks = checks_for([PER_USER, PER_ORG, PER_KEY, CHAT_ONLY], nobody)
    assert [c.key for c in checks] == ["sg:rl:{o:acme}:user:%00anon:*:3600", "sg:rl:{o:acme}:org::*:60"]
    # a user named like the anonymous marker or with key separators cannot collide
    sneaky = checks_for([PER_USER], RequestContext("acme", "%00anon", "chat"))[0].key
    assert sneaky != checks[0].key
    assert (
        checks_for([PER_USER], RequestContext("a:b", "c", "chat"))[0].key
        != checks_for([PER_USER], RequestContext("a", "b:c", "chat"))[0].key
    )


def test_the_ietf_headers_name_each_policy() -> None:
    checks = checks_for([PER_USER, CHAT_ONLY], RequestContext("acme", "ann", "chat"))
    admitted = headers_for(checks, Verdict(True, (57, 3), (1800, 12)))
    assert admitted == {
        "ratelimit-policy": '"user-3600";q=100;w=3600, "user-chat-60";q=10;w=60',
        "ratelimit": '"user-3600";r=57;t=1800, "user-chat-60";r=3;t=12',
    }
    refused = headers_for(checks, Verdict(False, (0, 0), (3600, 60), 1, 12))
    assert refused["retry-after"] == "12"


def test_the_local_log_admits_its_share_and_slides() -> None:
    log = LocalLog(share=0.5)
    checks = checks_for([RequestLimit(per="user", limit=10, window_s=60)], RequestContext("o", "u"))
    verdicts = [log.check(checks, now=1000.0 + i) for i in range(6)]
    assert [v.admitted for v in verdicts] == [True] * 5 + [False]
    assert verdicts[4].remaining == (0,) and verdicts[5].retry_after_s == 55
    assert log.check(checks, now=1060.5).admitted  # the first request has left the window
    assert not log.check(checks, now=1060.6).admitted


def test_a_refusal_by_one_limit_logs_nothing_in_the_others() -> None:
    log = LocalLog(share=1.0)
    ctx = RequestContext("o", "u", "chat")
    tight = RequestLimit(per="org", limit=1, window_s=60)
    checks = checks_for([PER_USER, tight], ctx)
    assert log.check(checks, now=0.0).admitted
    refused = log.check(checks, now=1.0)
    assert not refused.admitted and refused.blocked == 1
    assert (refused.remaining, refused.reset_s, refused.retry_after_s) == ((99, 0), (3599, 59), 59)
    alone = log.check(checks_for([PER_USER], ctx), now=2.0)
    assert alone.remaining == (98,)  # the refused request was not counted against the user

"""Tests for sluicegate.cache.keys: canonical digests, tenant scopes and the key layout."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sluicegate.cache.keys import KEY_PREFIX, CacheKey, cache_key, escape, request_digest, scope_id
from sluicegate.calls import RequestContext
from sluicegate.config import Scope

ACME = RequestContext("acme", "ann", "chat")
MODEL = "gpt-4o-mini"

# JSON values as a request could carry them (no floats that are NaN, which JSON cannot hold).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)},
        optional={"name": st.text(min_size=1, max_size=8), "extra": json_values},
    ),
    min_size=1,
    max_size=4,
)
tools = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.just("function"),
            "function": st.fixed_dictionaries(
                {
                    "name": st.text(min_size=1, max_size=10),
                    "parameters": st.dictionaries(st.text(max_size=6), json_values, max_size=4),
                }
            ),
        }
    ),
    max_size=3,
)
bodies = st.fixed_dictionaries(
    {"model": st.just(MODEL), "messages": messages},
    optional={
        "tools": tools,
        "response_format": st.fixed_dictionaries(
            {
                "type": st.just("json_schema"),
                "json_schema": st.dictionaries(st.text(max_size=6), json_values, max_size=4),
            }
        ),
        "temperature": st.floats(0, 2),
        "max_tokens": st.integers(1, 4096),
    },
)
# Names with every character that means something in a key or a SCAN pattern.
names = st.text(alphabet=st.sampled_from("ab:{}*?[]%\\ \t\n-_01"), min_size=1, max_size=8)


def shuffled(value: Any, rng: random.Random) -> Any:
    """``value`` with the keys of every object, at every depth, in a random order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


def key_of(
    body: dict[str, Any],
    scope: Scope = "org",
    context: RequestContext = ACME,
    namespace: int = 0,
    model: str = MODEL,
) -> CacheKey:
    """The chat key of ``body``."""
    return cache_key("chat", model, body, scope, context, namespace)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first ``{`` and the next ``}``."""
    start = key.index("{")
    return key[start + 1 : key.index("}", start)]


# Canonical form


@settings(max_examples=80, deadline=None)
@given(body=bodies, seed=st.integers())
def test_key_order_never_changes_the_key(body: dict[str, Any], seed: int) -> None:
    """Reordering the keys of any object, at any depth, gives the same key."""
    reordered = shuffled(body, random.Random(seed))
    assert key_of(reordered).key == key_of(body).key


GENERATION_CHANGES: list[tuple[str, Any, Any]] = [
    ("temperature", 0, 0.5),
    ("top_p", 1, 0.9),
    ("max_tokens", 50, 51),
    ("max_completion_tokens", 50, 51),
    ("seed", 1, 2),
    ("stop", ["\n"], ["END"]),
    ("n", 1, 2),
    ("presence_penalty", 0, 0.5),
    ("frequency_penalty", 0, 0.5),
    ("logit_bias", {"50256": -100}, {"50256": 100}),
    ("logprobs", False, True),
    ("tool_choice", "auto", "required"),
    ("parallel_tool_calls", True, False),
    (
        "tools",
        [{"type": "function", "function": {"name": "a"}}],
        [{"type": "function", "function": {"name": "b"}}],
    ),
    ("response_format", {"type": "text"}, {"type": "json_object"}),
    ("reasoning_effort", "low", "high"),
]


@pytest.mark.parametrize(
    ("field", "before", "after"), GENERATION_CHANGES, ids=[c[0] for c in GENERATION_CHANGES]
)
def test_each_generation_parameter_is_part_of_the_key(field: str, before: Any, after: Any) -> None:
    """Changing one generation parameter, or adding it, gives a different key."""
    base = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    keys = {key_of(base).key, key_of({**base, field: before}).key, key_of({**base, field: after}).key}
    assert len(keys) == 3


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
def test_a_whole_float_and_its_integer_share_the_key(field: str) -> None:
    """`0` and `0.0` are one number to every provider: a client written in JavaScript (which
    sends `0`) and one in Python (`0.0`) share the entry; `0.5` stays its own."""
    base = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert key_of({**base, field: 0}).key == key_of({**base, field: 0.0}).key
    assert key_of({**base, field: 1}).key == key_of({**base, field: 1.0}).key
    assert key_of({**base, field: 0.5}).key != key_of({**base, field: 0}).key
    assert key_of({**base, field: True}).key != key_of({**base, field: 1}).key


@settings(max_examples=80, deadline=None)
@given(
    body=bodies,
    field=st.sampled_from(
        [
            "temperature",
            "top_p",
            "max_tokens",
            "seed",
            "stop",
            "n",
            "presence_penalty",
            "logit_bias",
            "tools",
            "response_format",
        ]
    ),
    value=json_values,
)
def test_any_new_parameter_value_changes_the_key(body: dict[str, Any], field: str, value: Any) -> None:
    """Any different value of a generation parameter gives a different key."""
    assume(field not in body or body[field] != value)
    assert key_of({**body, field: value}).key != key_of(body).key


@settings(max_examples=60, deadline=None)
@given(body=bodies, index=st.integers(0, 3), content=st.text(max_size=40))
def test_message_content_is_part_of_the_key(body: dict[str, Any], index: int, content: str) -> None:
    """Changing the content of any message gives a different key."""
    position = index % len(body["messages"])
    assume(body["messages"][position]["content"] != content)
    changed = [dict(m) for m in body["messages"]]
    changed[position]["content"] = content
    assert key_of({**body, "messages": changed}).key != key_of(body).key


def test_message_order_is_part_of_the_key() -> None:
    """The same messages in another order are another conversation."""
    first = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert key_of({"messages": first}).key != key_of({"messages": first[::-1]}).key


@settings(max_examples=60, deadline=None)
@given(
    body=bodies,
    extra=st.fixed_dictionaries(
        {},
        optional={
            "user": st.text(max_size=10),
            "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
            "stream": st.booleans(),
            "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
            "cache": st.fixed_dictionaries(
                {"ttl": st.integers(0, 100)}, optional={"tags": st.lists(st.text(min_size=1), max_size=2)}
            ),
        },
    ),
)
def test_fields_that_do_not_change_the_answer_are_left_out(
    body: dict[str, Any], extra: dict[str, Any]
) -> None:
    """user, metadata, stream, stream_options and cache never change the key."""
    assert key_of({**body, **extra}).key == key_of(body).key


def test_the_model_argument_not_the_body_field_decides() -> None:
    """An alias in the body shares its canonical model's entry; another model is another entry."""
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert key_of({**body, "model": "fast"}).key == key_of({**body, "model": MODEL}).key
    assert key_of(body, model="gpt-4o").key != key_of(body).key


def test_kind_is_part_of_the_digest() -> None:
    """A chat call and an embeddings call with the same fields never share an entry."""
    body = {"input": "hi"}
    assert request_digest("chat", MODEL, body) != request_digest("embeddings", MODEL, body)


# Scopes


BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Draft an OKR"}]}


def test_global_scope_is_shared_by_every_org_and_user() -> None:
    """A global key is the same for every org and user."""
    keys = {
        key_of(BODY, "global", RequestContext(org, user, "chat")).key
        for org in ("acme", "globex")
        for user in ("ann", "bob", None)
    }
    assert len(keys) == 1
    assert hash_tag(keys.pop()) == "g"


def test_org_scope_separates_orgs_and_shares_within_one() -> None:
    """Org-scoped keys differ across orgs, and are shared by the users of one org."""
    acme_ann = key_of(BODY, "org", RequestContext("acme", "ann", "chat")).key
    acme_bob = key_of(BODY, "org", RequestContext("acme", "bob", "chat")).key
    globex = key_of(BODY, "org", RequestContext("globex", "ann", "chat")).key
    assert acme_ann == acme_bob
    assert acme_ann != globex


def test_user_scope_separates_users_and_the_anonymous_user() -> None:
    """User-scoped keys differ across users, and no named user shares the anonymous one's."""
    keys = [
        key_of(BODY, "user", RequestContext(org, user, "chat")).key
        for org in ("acme", "globex")
        for user in ("ann", "bob", None, "%00anon")
    ]
    assert len(set(keys)) == len(keys)


def test_empty_user_name_is_the_anonymous_user() -> None:
    """A blank user name is the org's anonymous user, not a user of its own."""
    assert scope_id("user", RequestContext("acme", "", "chat")) == scope_id(
        "user", RequestContext("acme", None, "chat")
    )


@settings(max_examples=300, deadline=None)
@given(first=st.tuples(names, names | st.none()), second=st.tuples(names, names | st.none()))
def test_different_tenants_never_collide(
    first: tuple[str, str | None], second: tuple[str, str | None]
) -> None:
    """Two different (org, user) pairs never get the same scope, whatever their characters."""
    assume(first != second)
    for scope in ("org", "user"):
        a = scope_id(scope, RequestContext(first[0], first[1]))  # type: ignore[arg-type]
        b = scope_id(scope, RequestContext(second[0], second[1]))  # type: ignore[arg-type]
        if scope == "org" and first[0] == second[0]:
            assert a == b
        else:
            assert a != b
    assert scope_id("org", RequestContext(first[0])) != scope_id("user", RequestContext(*second))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("a:b", "c"), ("a", "b:c")),
        (("a", "b}:x"), ("a", "b")),
        (("a*", "b"), ("a", "*b")),
        (("a{b", None), ("a", "{b")),
        (("a%3Ab", "c"), ("a:b", "c")),
    ],
)
def test_separators_in_names_cannot_forge_another_tenant(
    a: tuple[str, str | None], b: tuple[str, str | None]
) -> None:
    """':', '{', '}', '*' and '%' in an org or user name cannot reproduce another tenant's scope."""
    key_a = key_of(BODY, "user", RequestContext(*a))
    key_b = key_of(BODY, "user", RequestContext(*b))
    assert key_a.key != key_b.key
    assert key_a.scope != key_b.scope


# Layout


@settings(max_examples=200, deadline=None)
@given(
    org=names,
    user=names | st.none(),
    feature=names,
    model=names,
    namespace=st.integers(0, 10**6),
    scope=st.sampled_from(["global", "org", "user"]),
)
def test_key_layout_holds_for_any_names(
    org: str, user: str | None, feature: str, model: str, namespace: int, scope: Scope
) -> None:
    """The hash tag holds exactly the scope, and the rest splits into feature, namespace, model, digest."""
    key = key_of(BODY, scope, RequestContext(org, user, feature), namespace, model)
    assert key.key.startswith(KEY_PREFIX + "{")
    assert hash_tag(key.key) == key.scope
    assert not any(c in key.key for c in "*?[]\\ \t\n")
    rest = key.key[key.key.index("}", len(KEY_PREFIX)) + 1 :]
    assert rest.split(":") == ["", escape(feature), str(namespace), escape(model), key.digest]
    assert (key.feature, key.namespace, key.model) == (feature, namespace, model)
    assert key.lock == key.key + ":lock"
    assert hash_tag(key.lock) == key.scope


def test_namespace_and_feature_are_part_of_the_key() -> None:
    """A new namespace version, or another feature, is another key for the same request."""
    base = key_of(BODY, "global")
    bumped = key_of(BODY, "global", namespace=1)
    other = key_of(BODY, "global", RequestContext("acme", "ann", "insights"))
    assert len({base.key, bumped.key, other.key}) == 3
    assert ":chat:0:" in base.key and ":chat:1:" in bumped.key and ":insights:0:" in other.key
    assert base.digest == bumped.digest == other.digest


@settings(max_examples=300, deadline=None)
@given(a=st.text(max_size=10), b=st.text(max_size=10))
def test_escape_is_injective_and_safe(a: str, b: str) -> None:
    """Different names stay different once escaped, and no unsafe character survives."""
    if a != b:
        assert escape(a) != escape(b)
    assert not any(c in escape(a) for c in ":{}*?[]\\ \n\r\t")


def test_a_huge_whole_float_in_a_sampling_field_still_has_a_key() -> None:
    """temperature 1e300 is a whole float: it keeps its own key, and is not a 400."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert key_of({**body, "temperature": 1e300}).key != key_of({**body, "temperature": 1e299}).key
    assert key_of({**body, "temperature": 2.0}).key == key_of({**body, "temperature": 2}).key

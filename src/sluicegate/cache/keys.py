"""Cache keys: a digest of the canonical request, placed in its tenant scope. Pure, no I/O.

A key reads ``sg:c:{<scope>}:<feature>:<namespace>:<model>:<digest>``. The braces are a Redis
Cluster hash tag, so every key of one scope (and its single-flight lock) lives in one slot.
The scope is ``g`` (global), ``o:<org>`` or ``u:<org>:<user>``: two orgs never share an entry
unless the feature is global, and a user-scoped entry is never another user's.

The digest covers everything that changes the answer: the kind of call, the model (its
canonical name, so an alias shares its model's entries), every message, the tools, the
response format and every generation parameter, serialised with sorted keys. Fields that do
not change the answer are left out, so that a streamed and a plain request share an entry.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, NamedTuple

import orjson

from ..calls import CallKind, RequestContext, request_json
from ..config import Scope

__all__ = [
    "IGNORED_FIELDS",
    "KEY_PREFIX",
    "CacheKey",
    "cache_key",
    "escape",
    "is_entry_key",
    "request_digest",
    "scope_id",
]

KEY_PREFIX = "sg:c:"
# Fields that do not change the answer; `cache` is sluicegate's own and never goes upstream.
IGNORED_FIELDS = frozenset({"user", "metadata", "stream", "stream_options", "cache", "model"})
# Top-level numbers that JSON clients write as 0 or 0.0 alike (JavaScript has no 1.0): a whole
# float counts as its integer, so that `"temperature": 0` and `0.0` share an entry.
_NUMBER_FIELDS = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty"})
_UNSAFE_CHARS = "%:{}*?[]\\ \n\r\t"
_UNSAFE = str.maketrans({c: f"%{ord(c):02X}" for c in _UNSAFE_CHARS})
_HAS_UNSAFE = re.compile("[" + re.escape(_UNSAFE_CHARS) + "]").search


# An entry's key, as `cache_key` lays it out (every part but the scope is escaped of ':').
_ENTRY_KEY = re.compile(r"sg:c:\{[^{}]*\}:[^:]*:\d+:[^:]*:[0-9a-f]{40}")


def is_entry_key(key: str) -> bool:
    """Whether ``key`` names an entry (not its lock, its hit counter, or anything else)."""
    return _ENTRY_KEY.fullmatch(key) is not None


@functools.lru_cache(maxsize=8192)
def escape(part: str) -> str:
    """``part`` with the characters that would break the key layout or a SCAN pattern escaped."""
    # Most parts have none, and a search costs a sixth of a translation.
    return part if _HAS_UNSAFE(part) is None else part.translate(_UNSAFE)


class CacheKey(NamedTuple):
    """Where an entry lives, and the facts it was derived from (a tuple: cheap to make per request)."""

    key: str
    scope: str
    feature: str
    namespace: int
    model: str
    digest: str

    @property
    def lock(self) -> str:
        """The single-flight lock's key, in the same hash slot as the entry."""
        return self.key + ":lock"


_EXACT = float(2**53)


def request_digest(kind: CallKind, model: str, body: dict[str, Any]) -> str:
    """The hex digest of the canonical request: kind, model and every field that changes the answer."""
    canonical = body.copy()
    for name in IGNORED_FIELDS.intersection(body):
        del canonical[name]
    for name in _NUMBER_FIELDS.intersection(body):
        value = body[name]
        # A whole float in the range where floats hold every integer (|x| ≤ 2**53): beyond it
        # the integer would not fit JSON's 64 bits, and no sampling value is that large anyway.
        if type(value) is float and value.is_integer() and -_EXACT <= value <= _EXACT:
            canonical[name] = int(value)
    data = request_json((kind, model, canonical), orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def scope_id(scope: Scope, context: RequestContext) -> str:
    """The scope part of a key: ``g``, ``o:<org>`` or ``u:<org>:<user>``.

    A user-scoped feature called without a user is scoped to the org's anonymous user, which
    no named user ever shares.
    """
    if scope == "global":
        return "g"
    if scope == "org":
        return "o:" + escape(context.org)
    return f"u:{escape(context.org)}:{escape(context.user) if context.user else '%00anon'}"


def cache_key(
    kind: CallKind,
    model: str,
    body: dict[str, Any],
    scope: Scope,
    context: RequestContext,
    namespace: int,
) -> CacheKey:
    """The key of the entry that answers ``body`` for ``context``."""
    digest = request_digest(kind, model, body)
    sid = scope_id(scope, context)
    key = f"{KEY_PREFIX}{{{sid}}}:{escape(context.feature)}:{namespace}:{escape(model)}:{digest}"
    # tuple.__new__ rather than CacheKey(...): the named tuple's own __new__ is Python code.
    return tuple.__new__(CacheKey, (key, sid, context.feature, namespace, model, digest))

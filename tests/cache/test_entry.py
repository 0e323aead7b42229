"""Tests for sluicegate.cache.entry: the entry's wire form, compressed or not, and bad input."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.cache.entry import Entry, decode, encode
from sluicegate.calls import Usage

NEVER = 10**9  # a compression threshold no test payload reaches


def entry(**changes: object) -> Entry:
    """A plain chat entry, with ``changes`` applied."""
    base = Entry(
        kind="chat",
        body=b'{"object":"chat.completion","choices":[]}',
        created_at=1_700_000_000.25,
        expires_at=1_700_003_600.25,
        etag='"abc"',
        feature="insights",
        org="acme",
        user=None,
        model="gpt-4o-mini",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


STREAMED = entry(
    user="ann",
    events=(b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b"data: {}\n\n"),
    offsets=(0.0, 0.05, 0.125),
    usage=Usage(12, 3, 15),
    cost_usd=0.0004,
    tags=("q3", "okr"),
    hits=7,
)


@pytest.mark.parametrize(
    "original",
    [
        entry(),
        entry(usage=Usage(10, 5, 15), cost_usd=0.001),
        entry(events=(b"data: {}\n\n",)),
        dataclasses.replace(STREAMED, offsets=None),
        STREAMED,
        entry(kind="embeddings", body=b'{"data":[]}', tags=("x",)),
    ],
    ids=["plain", "usage", "one-event", "events", "events-offsets-usage", "embeddings"],
)
@pytest.mark.parametrize("threshold", [0, NEVER], ids=["compressed", "plain"])
def test_round_trip(original: Entry, threshold: int) -> None:
    """An entry decodes to an equal entry, with or without events, offsets and usage."""
    assert decode(encode(original, threshold)) == original


@settings(max_examples=100, deadline=None)
@given(
    body=st.binary(max_size=300),
    events=st.none() | st.lists(st.binary(max_size=60), min_size=1, max_size=6).map(tuple),
    user=st.none() | st.text(max_size=10),
    tags=st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple),
    threshold=st.integers(0, 400),
)
def test_round_trip_any_payload(
    body: bytes, events: tuple[bytes, ...] | None, user: str | None, tags: tuple[str, ...], threshold: int
) -> None:
    """Arbitrary bytes in the body and events, and any names, survive the wire form."""
    original = entry(body=body, events=events, user=user, tags=tags)
    assert decode(encode(original, threshold)) == original


def test_large_entries_are_compressed() -> None:
    """A payload at or above the threshold is zlib-compressed behind SG1\\x01, and smaller."""
    big = dataclasses.replace(STREAMED, body=b'{"content":"' + b"an OKR for support " * 200 + b'"}')
    wire = encode(big, 1024)
    assert wire[:4] == b"SG1\x01"
    assert len(wire) < len(big.body) / 4
    assert decode(wire) == big


def test_small_entries_are_not_compressed() -> None:
    """A payload below the threshold is stored plain behind SG1\\x00, body bytes visible."""
    small = entry()
    wire = encode(small, 1024)
    assert wire[:4] == b"SG1\x00"
    assert small.body in wire


def test_threshold_is_inclusive() -> None:
    """Exactly ``compress_min_bytes`` of payload is compressed; one byte fewer is not."""
    payload_size = len(encode(STREAMED, NEVER)) - 4
    assert encode(STREAMED, payload_size)[:4] == b"SG1\x01"
    assert encode(STREAMED, payload_size + 1)[:4] == b"SG1\x00"


def plain_frame(meta: object, payload: bytes = b"") -> bytes:
    """A hand-made uncompressed frame holding ``meta`` and ``payload``."""
    meta_bytes = orjson.dumps(meta)
    return b"SG1\x00" + struct.pack(">I", len(meta_bytes)) + meta_bytes + payload


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SG",
        b"SG1",
        b"SG1\x00",
        b"SG1\x00\x00\x00",
        b"SG2\x00" + encode(entry(), NEVER)[4:],
        b'{"object":"chat.completion"}',
        b"SG1\x01not zlib at all",
        b"SG1\x01" + zlib.compress(b"\x00\x00\x00\x05abc")[:-3],
        b"SG1\x00\x00\x00\x00\x05{bad}",
        b"SG1\x00\xff\xff\xff\xff{}",
        plain_frame([1, 2, 3]),
        plain_frame({"lens": [2]}, b"{}"),
        plain_frame({**entry().meta(), "lens": [2], "usage": "many"}, b"{}"),
        encode(entry(), 0)[:-5],
    ],
    ids=lambda d: repr(d[:12]),
)
def test_garbage_is_not_an_entry(data: bytes) -> None:
    """Anything that is not a whole frame of this version decodes to None, never raises."""
    assert decode(data) is None


def test_truncated_plain_frame_is_not_an_entry() -> None:
    """A plain frame cut short, or with bytes its meta does not account for, is refused."""
    wire = encode(STREAMED, NEVER)
    assert decode(wire[:-5]) is None
    assert decode(wire + b"extra") is None


def test_entry_facts() -> None:
    """size counts body, events and overhead; ttl_s, age and fresh follow the timestamps."""
    assert STREAMED.size - entry(body=STREAMED.body).size == sum(len(e) for e in STREAMED.events or ())
    assert entry(body=b"x" * 100).size - entry(body=b"").size == 100
    assert STREAMED.ttl_s == 3600
    assert STREAMED.age(STREAMED.created_at - 5) == 0
    assert STREAMED.age(STREAMED.created_at + 42.9) == 42
    assert STREAMED.fresh(STREAMED.expires_at - 0.001)
    assert not STREAMED.fresh(STREAMED.expires_at)

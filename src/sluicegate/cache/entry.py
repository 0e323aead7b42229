"""A cache entry and its wire form.

An entry always holds the answer as a plain JSON body. A chat answer that arrived as a stream
also keeps its SSE events (without ``[DONE]`` and without the usage-only event) and, when the
feature replays at the original pace, each event's offset from the first. The wire form is a
small binary frame: ``SG1``, a flag byte (1 = zlib), then the compressed or plain payload of a
4-byte meta length, the meta JSON, the body and the events back to back.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from ..calls import CallKind, Usage

__all__ = ["Entry", "decode", "encode"]

_MAGIC = b"SG1"
_PLAIN = b"\x00"
_ZLIB = b"\x01"
_LEN = struct.Struct(">I")
# Python object overhead counted against the memory tier's byte budget, beyond the payload.
_OVERHEAD = 400


@dataclass(slots=True)
class Entry:
    """One cached answer and what it was derived from."""

    kind: CallKind
    body: bytes
    created_at: float
    expires_at: float
    etag: str
    feature: str
    org: str
    user: str | None
    model: str
    events: tuple[bytes, ...] | None = None
    offsets: tuple[float, ...] | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    tags: tuple[str, ...] = ()
    hits: int = 0

    @property
    def size(self) -> int:
        """Bytes counted against the memory tier's budget."""
        events = self.events
        return len(self.body) + _OVERHEAD + (sum(map(len, events)) if events else 0)

    @property
    def ttl_s(self) -> float:
        """The freshness lifetime the entry was stored with."""
        return self.expires_at - self.created_at

    def age(self, now: float) -> int:
        """Whole seconds since the answer was produced."""
        return max(0, int(now - self.created_at))

    def fresh(self, now: float) -> bool:
        """Whether the entry is still within its TTL."""
        return now < self.expires_at

    def meta(self) -> dict[str, Any]:
        """The entry's facts, without the payload."""
        usage = self.usage
        return {
            "kind": self.kind,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "etag": self.etag,
            "feature": self.feature,
            "org": self.org,
            "user": self.user,
            "model": self.model,
            "usage": [
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
                usage.cached_tokens,
                usage.reasoning_tokens,
            ]
            if usage
            else None,
            "cost_usd": self.cost_usd,
            "tags": list(self.tags),
            "hits": self.hits,
        }


def encode(entry: Entry, compress_min_bytes: int) -> bytes:
    """The entry's wire form, zlib-compressed when its payload is at least ``compress_min_bytes``."""
    meta = entry.meta()
    events = entry.events or ()
    meta["lens"] = (
        [len(entry.body), *(len(e) for e in events)] if entry.events is not None else [len(entry.body)]
    )
    meta["offsets"] = list(entry.offsets) if entry.offsets is not None else None
    meta_bytes = orjson.dumps(meta)
    payload = b"".join((_LEN.pack(len(meta_bytes)), meta_bytes, entry.body, *events))
    if len(payload) >= compress_min_bytes:
        return _MAGIC + _ZLIB + zlib.compress(payload, 1)
    return _MAGIC + _PLAIN + payload


def decode(data: bytes) -> Entry | None:
    """The entry in ``data``; None when it is not an entry this version can read."""
    if data[:3] != _MAGIC:
        return None
    try:
        payload = zlib.decompress(data[4:]) if data[3:4] == _ZLIB else data[4:]
        (meta_len,) = _LEN.unpack_from(payload, 0)
        meta = orjson.loads(payload[4 : 4 + meta_len])
        position = 4 + meta_len
        parts = []
        for length in meta["lens"]:
            parts.append(payload[position : position + length])
            position += length
        if position != len(payload):
            return None  # cut short, or with bytes the meta does not account for
        usage = meta["usage"]
        if usage is not None and not (
            isinstance(usage, list) and 3 <= len(usage) <= 5 and all(type(n) is int for n in usage)
        ):
            return None  # an older entry has 3 counts, a newer one 5
        offsets = meta.get("offsets")
        return Entry(
            kind=meta["kind"],
            body=parts[0],
            created_at=meta["created_at"],
            expires_at=meta["expires_at"],
            etag=meta["etag"],
            feature=meta["feature"],
            org=meta["org"],
            user=meta["user"],
            model=meta["model"],
            events=tuple(parts[1:]) if len(parts) > 1 else None,
            offsets=tuple(offsets) if offsets is not None else None,
            usage=Usage(*usage) if usage else None,
            cost_usd=meta["cost_usd"],
            tags=tuple(meta["tags"]),
            hits=meta["hits"],
        )
    except (zlib.error, struct.error, orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return None

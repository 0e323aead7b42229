"""Refreshing an entry in the background: stale-while-revalidate and refresh-ahead.

One process refreshes a key at a time (its single-flight lock, in Redis when there is one), and
the call it makes is plain even when the request that prompted it streams.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace

from ..calls import CacheControl, Call, Reply
from ..config import FeatureCache
from ..errors import SluicegateError
from .answers import EntryMaker, Flight, send_counted
from .entry import Entry
from .keys import CacheKey
from .layered import LayeredCache

__all__ = ["Refresher"]


class Refresher:
    """Re-fetches entries in the background through the stage's next stage."""

    def __init__(
        self, send: Callable[[Call], Awaitable[Reply]], cache: LayeredCache, entries: EntryMaker
    ) -> None:
        self._send = send
        self._cache = cache
        self._entries = entries

    def start(self, call: Call, key: CacheKey, policy: FeatureCache, old: Entry, tier: str) -> None:
        """Refresh ``key``'s ``old`` entry (found in ``tier``) for ``call`` unless an identical
        call is already in flight here. The new entry keeps the old one's hits and tags (with
        the request's). Identical calls meanwhile are answered from ``old`` at once, as it is
        (stale, or, refreshed ahead, fresh), whether or not this process gets to refresh it."""
        cache = self._cache
        if key.key in cache.flights:
            return
        flight = Flight()
        flight.settle(old, tier)
        cache.flights[key.key] = flight
        control = call.cache
        tags = old.tags + tuple(tag for tag in control.tags if tag not in old.tags)
        if tags != control.tags:
            control = replace(control, tags=tags)
        cache.spawn(self._refresh(call, control, key, policy, old.hits, flight))

    async def _refresh(
        self,
        call: Call,
        control: CacheControl,
        key: CacheKey,
        policy: FeatureCache,
        hits: int,
        flight: Flight,
    ) -> None:
        cache = self._cache
        token = cache.new_token()
        locked = False
        try:
            locked = await cache.try_lock(key, token)
            if not locked:
                return
            body = {k: v for k, v in call.body.items() if k not in ("stream", "stream_options")}
            plain = Call(call.kind, body, call.route, call.context, call.request_id, False, call.started)
            plain.outcome = "refresh"
            try:
                reply = await send_counted(self._send, plain, cache.stats, miss=False)
            except SluicegateError:
                return
            with contextlib.suppress(SluicegateError):
                entry = self._entries.from_body(
                    plain, policy, control, reply.body, reply.usage, hits=hits, payload=reply.payload
                )
                if entry is not None and entry.model == key.model:  # not a fallback model's answer
                    lock = token if cache.redis is not None else None
                    # Replaces: the other processes' copies (stale, or about to be) go too.
                    if await cache.store(key, entry, policy, lock, started=plain.started, replaces=True):
                        locked = False  # released by the store
                    cache.stats.count(call.context.feature, "stores")
        finally:
            flight.end(cache.flights, key.key)
            if locked and cache.redis is not None:
                await cache.unlock(key, token)

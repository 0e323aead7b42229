"""The cache stage: answer from the tiers, or make one upstream call for every identical request.

For each call: bypass what may not be cached; look the key up (in-process, then Redis, which
also takes the single-flight lock on a miss, then SQL); serve a fresh entry, or a stale one
while it is refreshed in the background; otherwise join the identical call already in flight
in this process, wait for another process's leader, or lead: call upstream, store the answer,
and hand it to the followers. When the upstream fails, a stale entry within the feature's
``stale_if_error_s`` answers instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..accounting.ledger import Ledger
from ..accounting.pricing import PriceBook
from ..calls import CacheControl, Call, Reply, Usage
from ..config import FeatureCache
from ..errors import SluicegateError
from .answers import (
    CACHE_HEADER,
    COALESCED_HEADER,
    EntryMaker,
    Flight,
    etag_matches,
    fresh_reply,
    going_upstream,
    labelled,
    not_modified,
    reached_upstream,
    reply_from,
    send_counted,
    wants_usage,
)
from .entry import Entry
from .keys import CacheKey
from .layered import LOCK_HELD, LOCK_NONE, LOCK_TAKEN, LayeredCache, Plan
from .policy import answering, refresh_ahead, request_is_cacheable
from .refresh import Refresher
from .streams import StreamFlight

__all__ = ["CACHE_HEADER", "COALESCED_HEADER", "ServeFromCache"]

Send = Callable[[Call], Awaitable[Reply]]
_TIERS = ("memory", "redis", "sql")
_HIT_LABELS = {tier: "hit-" + tier for tier in _TIERS}  # X-Sluicegate-Cache, and the ledger's outcome
_HIT_METRICS = {tier: "hits_" + tier for tier in _TIERS}


class ServeFromCache:
    """The cache stage; wraps the next stage (routing to the provider)."""

    def __init__(
        self, send: Send, cache: LayeredCache, prices: PriceBook, ledger: Ledger | None = None
    ) -> None:
        self._send = send
        self._cache = cache
        self._entries = EntryMaker(prices, cache.config.ttl, cache.clock)
        self._ledger = ledger
        self._refresher = Refresher(send, cache, self._entries)

    async def __call__(self, call: Call, rejoin: bool = True) -> Reply:
        """Answer ``call`` (``rejoin``: it may look again, once, when the identical call it
        waited for was refused before it tried)."""
        cache = self._cache
        plan = cache.plan(call.context.feature)
        policy = plan.policy
        control = call.cache
        cacheable = request_is_cacheable(policy, call.kind, call.body)
        looks_up = cacheable and plan.shared and not control.no_cache
        if call.admit is not None and not looks_up:
            await call.admit()  # the rate limits: no lookup in a shared tier for them to leave with
        if not cacheable:
            return await self._bypass(call, control)
        reloading = cache.pending(call.started)
        if reloading is not None:
            await asyncio.shield(reloading)
        key = cache.key(call, policy)
        stale: Entry | None = None
        if plan.server and not control.no_cache:
            memory = plan.memory
            entry = memory.peek(key.key) if memory is not None else None
            if call.admit is not None and (entry is not None or key.key in cache.flights):
                await call.admit()
            if entry is not None:
                reply = self._from_entry(call, key, entry, "memory", policy, control)
                if reply is not None:
                    return reply
                stale = entry
            flight = cache.flights.get(key.key)
            # A no-store call's answer is stored nowhere: only no-store calls wait for it.
            if flight is not None and (control.no_store or not flight.no_store):
                return await self._follow(call, key, flight, policy, control, stale, rejoin)
        flight = Flight(control.no_store)
        if not control.no_cache:
            # Registered before the first await, so that identical calls in this process wait for
            # this one's lookup and upstream call instead of repeating them.
            cache.flights[key.key] = flight
        if plan.shared or call.stream:
            return await self._lead(call, key, plan, control, stale, flight)
        # A miss with no shared tier to ask and no stream to hand out: here, without a coroutine
        # of its own (the in-process tier's miss, the cheapest the cache can make).
        feature = call.context.feature
        call.outcome = "miss"
        try:
            reply = await self._send(call)
            now = cache.clock()
            hits = stale.hits if stale is not None else 0
            entry = self._entries.from_body(
                call, policy, control, reply.body, reply.usage, hits=hits, payload=reply.payload, now=now
            )
            stored = (
                entry is not None
                and not control.no_store
                and entry.model == key.model
                and cache.keep_in_memory(key, entry, plan, call.started, control.no_cache)
            )
            cache.stats.missed(feature, stored)
            flight.settle(entry)
            return fresh_reply(reply, entry, key.model, policy, control, now)
        except SluicegateError as exc:
            cache.stats.missed(feature, False, reached_upstream(exc))
            flight.fail(exc)
            return self._stale_or_raise(call, stale, policy, control, exc)
        except asyncio.CancelledError:  # the client left: the call went upstream all the same
            cache.stats.missed(feature, False)
            raise
        finally:
            flight.end(cache.flights, key.key)  # frees the followers of a cancelled call

    def _saved(self, call: Call, usage: Usage | None, label: str) -> None:
        """Count an answer served without an upstream call of its own (``label``: stale,
        coalesced; empty: a coalesced stream, counted as it joined), its tokens and ledger row."""
        stats, feature = self._cache.stats, call.context.feature
        if label:
            stats.count(feature, label)
        if usage is not None:
            stats.count(feature, "tokens_saved", usage.total_tokens)
        if self._ledger is not None:
            self._ledger.served(call, usage, label or "coalesced")

    def _from_entry(
        self, call: Call, key: CacheKey, entry: Entry, tier: str, policy: FeatureCache, control: CacheControl
    ) -> Reply | None:
        """A hit, or the stale entry while it is refreshed; None when the entry may not answer."""
        now = self._cache.clock()
        state = answering(entry, policy, control, now)
        if state == "fresh":
            return self._hit(call, key, entry, tier, policy, control, now)
        if state == "stale":
            self._refresher.start(call, key, policy, entry, tier)
            self._saved(call, entry.usage, "stale")
            return reply_from(call, entry, "stale", policy, now, control.no_store)
        return None

    def _hit(
        self,
        call: Call,
        key: CacheKey,
        entry: Entry,
        tier: str,
        policy: FeatureCache,
        control: CacheControl,
        now: float,
    ) -> Reply:
        stats = self._cache.stats
        feature = call.context.feature
        entry.hits += 1
        usage = entry.usage
        tokens = usage.total_tokens if usage is not None else None
        if control.if_none_match is not None and etag_matches(control.if_none_match, entry.etag):
            stats.served(key.key, feature, "hits_browser", tokens)
            if self._ledger is not None:
                self._ledger.served(call, usage, "hit-browser-revalidated")
            return not_modified(entry, policy, now, control.no_store)
        label = _HIT_LABELS[tier]
        stats.served(key.key, feature, _HIT_METRICS[tier], tokens)
        if self._ledger is not None:
            self._ledger.served(call, usage, label)
        if refresh_ahead(entry, policy, self._cache.config.refresh_ahead_s, now):
            self._refresher.start(call, key, policy, entry, tier)
        return reply_from(call, entry, label, policy, now, control.no_store)

    async def _bypass(self, call: Call, control: CacheControl) -> Reply:
        self._cache.stats.count(call.context.feature, "bypass")
        call.outcome = "bypass"
        reply = await send_counted(self._send, call, self._cache.stats, miss=False)
        labelled(reply.headers, "bypass", control.no_store)
        return reply

    async def _lead(
        self,
        call: Call,
        key: CacheKey,
        plan: Plan,
        control: CacheControl,
        stale: Entry | None,
        flight: Flight,
    ) -> Reply:
        """Look the key up in the shared tiers, then wait for another process or call upstream."""
        cache = self._cache
        policy = plan.policy
        lock_state, token = LOCK_NONE, ""
        handed_over = False
        try:
            if plan.shared and not control.no_cache:
                # A no-store call takes no lock: the other processes' identical calls lead their own.
                token = cache.new_token() if cache.redis is not None and not control.no_store else ""
                entry, tier, lock_state = await cache.lookup(key, policy, token or None)
                if call.admit is not None:  # sent before the lookup, answered before it
                    try:
                        await call.admit()
                    except SluicegateError:  # refused: what it found still answers the followers
                        if entry is not None and answering(entry, policy, control, cache.clock()):
                            flight.settle(entry, tier)
                        flight.hand_back()  # else one of them leads
                        raise
                if entry is not None and answering(entry, policy, control, cache.clock()) is not None:
                    flight.settle(entry, tier)
                    if cache.flights.get(key.key) is flight:
                        del cache.flights[key.key]  # free the slot for a background refresh
                    reply = self._from_entry(call, key, entry, tier, policy, control)
                    if reply is not None:
                        return reply
                if entry is not None:
                    stale = entry  # too old to answer: the followers wait for the upstream
                # A stream does not wait for another process's leader: its first token would come
                # only once the leader's whole stream had been stored.
                if lock_state == LOCK_HELD and not call.stream:
                    entry = await cache.wait_for(key, policy)
                    if entry is not None and answering(entry, policy, control, cache.clock()) is not None:
                        flight.settle(entry, "redis")
                        self._saved(call, entry.usage, "coalesced")
                        reply = reply_from(call, entry, "hit-redis", policy, cache.clock(), control.no_store)
                        reply.headers[COALESCED_HEADER] = "true"
                        return reply
            hits = stale.hits if stale is not None else 0
            if call.stream:
                usage_wanted = wants_usage(call)
                try:
                    reply = await self._send(going_upstream(call))
                except SluicegateError as exc:
                    cache.stats.went_upstream(call.context.feature, True, reached_upstream(exc))
                    flight.fail(exc)
                    return self._stale_or_raise(call, stale, policy, control, exc)
                cache.stats.went_upstream(call.context.feature, True)
                if reply.stream is not None:
                    done = self._stream_done(call, key, plan, control, flight, lock_state, token, hits)
                    live = StreamFlight(reply.stream, done)
                    if call.own_answer or call.clamped:  # its budget's model or max_tokens: alone
                        flight.settle(None)
                    else:
                        flight.start(live)
                    handed_over = True
                    reply.stream = live.reader(leader=True, wants_usage=usage_wanted)
                    labelled(reply.headers, "miss", control.no_store)
                    return reply
            else:
                call.outcome = "miss"
                try:
                    reply = await self._send(call)
                except SluicegateError as exc:
                    cache.stats.missed(call.context.feature, False, reached_upstream(exc))
                    flight.fail(exc)
                    return self._stale_or_raise(call, stale, policy, control, exc)
                except asyncio.CancelledError:
                    cache.stats.missed(call.context.feature, False)
                    raise
            now = cache.clock()
            entry = self._entries.from_body(
                call, policy, control, reply.body, reply.usage, hits=hits, payload=reply.payload, now=now
            )
            stored = False
            # An answer from a fallback model goes to the followers, but is not stored as the asked one's.
            if entry is not None and plan.server and not control.no_store and entry.model == key.model:
                stored = True
                if not plan.shared:
                    cache.keep_in_memory(key, entry, plan, call.started, control.no_cache)
                elif await cache.store(
                    key,
                    entry,
                    policy,
                    token if lock_state == LOCK_TAKEN else None,
                    started=call.started,
                    replaces=control.no_cache,
                ):
                    lock_state = LOCK_NONE  # released by the store
            if not call.stream:
                cache.stats.missed(call.context.feature, stored)
            elif stored:  # a stream request answered without a stream: counted on the way up
                cache.stats.count(call.context.feature, "stores")
            flight.settle(entry)
            return fresh_reply(reply, entry, key.model, policy, control, now)
        finally:
            if not handed_over:
                flight.end(cache.flights, key.key)
                if lock_state == LOCK_TAKEN:
                    cache.spawn(cache.unlock(key, token))

    async def _follow(
        self,
        call: Call,
        key: CacheKey,
        flight: Flight,
        policy: FeatureCache,
        control: CacheControl,
        stale: Entry | None,
        rejoin: bool,
    ) -> Reply:
        cache = self._cache
        feature = call.context.feature
        reader = await flight.join(wants_usage(call), cache.config.wait_s) if call.stream else None
        live = flight.stream
        if reader is not None and live is not None:
            cache.stats.count(feature, "coalesced")  # what it saved: the leader's usage, read whole
            reader.on_close(lambda ended: self._saved(call, live.usage if ended.done else None, ""))
            headers = labelled({COALESCED_HEADER: "true"}, "miss", control.no_store)
            return Reply(stream=reader, headers=headers)
        try:
            async with asyncio.timeout(cache.config.wait_s):
                entry = await flight.wait()
        except TimeoutError:
            entry = None
        except SluicegateError as exc:  # the leader's upstream call failed: so does ours
            cache.stats.count(feature, "coalesced")
            return self._stale_or_raise(call, stale, policy, control, exc)
        now = cache.clock()
        state = answering(entry, policy, control, now) if entry is not None else None
        if entry is not None and state is not None:
            self._saved(call, entry.usage, "coalesced")
            # The leader's lookup found it in a tier, or the leader's upstream call made it.
            label = ("hit-" + flight.tier if flight.tier else "miss") if state == "fresh" else "stale"
            substitute = entry.model != key.model  # the leader's fallback answered: not to be kept
            reply = reply_from(call, entry, label, policy, now, control.no_store or substitute)
            reply.headers[COALESCED_HEADER] = "true"
            return reply
        if rejoin and flight.handed_back:  # the leader was refused before it tried: look again
            return await self(call, rejoin=False)
        # The leader could not answer for us: go alone.
        call.outcome = "miss"  # its usage chunk, if it did not ask for one, is stripped upstream
        reply = await send_counted(self._send, call, self._cache.stats, miss=True)
        if reply.stream is None:
            entry = self._entries.from_body(
                call, policy, control, reply.body, reply.usage, payload=reply.payload
            )
            return fresh_reply(reply, entry, key.model, policy, control, cache.clock())
        labelled(reply.headers, "miss", control.no_store)
        return reply

    def _stale_or_raise(
        self,
        call: Call,
        stale: Entry | None,
        policy: FeatureCache,
        control: CacheControl,
        error: SluicegateError,
    ) -> Reply:
        """The stale entry within the feature's ``stale_if_error_s`` (and the request's
        ``max-age``, if it set one), or ``error`` raised."""
        now = self._cache.clock()
        if (
            stale is not None
            and policy.stale_if_error_s
            and now < stale.expires_at + policy.stale_if_error_s
            and (control.max_age is None or stale.age(now) <= control.max_age)
        ):
            self._saved(call, stale.usage, "stale")
            return reply_from(call, stale, "stale", policy, now, control.no_store)
        raise error

    def _stream_done(
        self,
        call: Call,
        key: CacheKey,
        plan: Plan,
        control: CacheControl,
        flight: Flight,
        lock_state: int,
        token: str,
        hits: int,
    ) -> Callable[[StreamFlight], Awaitable[None]]:
        cache = self._cache
        policy = plan.policy

        async def done(live: StreamFlight) -> None:
            held = lock_state == LOCK_TAKEN
            try:
                entry = (
                    self._entries.from_stream(call, policy, control, live, hits) if live.completed else None
                )
                # Over: a request now finds the entry (in memory before anything else runs), or
                # calls upstream; never this stream (an answer the feature may not store).
                flight.settle(entry)
                flight.end(cache.flights, key.key)
                if entry is not None and not control.no_store and plan.server and entry.model == key.model:
                    stored = await cache.store(
                        key,
                        entry,
                        policy,
                        token if held else None,
                        started=call.started,
                        replaces=control.no_cache,
                    )
                    held = held and not stored
                    cache.stats.count(call.context.feature, "stores")
            finally:
                flight.end(cache.flights, key.key)
                if held:
                    await cache.unlock(key, token)

        return done

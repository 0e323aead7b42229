"""What the cache stage hands out: entries made from answers, the replies made from entries, and
the in-process flights that identical calls share.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from ..accounting.pricing import PriceBook
from ..calls import CacheControl, Call, Reply, Usage
from ..config import CostTtlConfig, FeatureCache
from ..errors import BudgetUnavailable, EmergencyStopped, RateLimited, SluicegateError
from .entry import Entry
from .forms import assemble, content_events, usage_json
from .policy import answer_is_storable, cut_short, ttl_for
from .stats import CacheStats
from .streams import FlightReader, ReplayStream, StreamFlight

__all__ = [
    "CACHE_HEADER",
    "COALESCED_HEADER",
    "EntryMaker",
    "Flight",
    "etag_matches",
    "fresh_reply",
    "going_upstream",
    "headers_for",
    "labelled",
    "not_modified",
    "reached_upstream",
    "reply_from",
    "send_counted",
    "wants_usage",
]

# Refusals that depend on who asked (their budget, token limit or emergency stop), which the
# stages past the cache make: they are the leader's own, never its followers'.
_CALLERS_OWN = (RateLimited, EmergencyStopped, BudgetUnavailable)
# Headers that describe the leader's own buckets: a follower's answer does not carry them.
_CALLERS_HEADERS = ("x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens")
CACHE_HEADER = "x-sluicegate-cache"
# On an answer that waited for an identical request's upstream call rather than its own.
COALESCED_HEADER = "x-sluicegate-coalesced"


class Flight:
    """An upstream call in progress that identical calls in this process wait for or join.

    Its future is made only when a follower waits: most flights have none.
    """

    __slots__ = (
        "_error",
        "_future",
        "_settled",
        "_started",
        "_value",
        "handed_back",
        "joining",
        "no_store",
        "stream",
        "tier",
    )

    def __init__(self, no_store: bool = False) -> None:
        self.no_store = no_store  # a no-store call's: its answer is for no-store calls only
        self._future: asyncio.Future[Entry | None] | None = None
        self._started: asyncio.Future[None] | None = None  # made when a stream waits for one
        self._settled = False
        self._value: Entry | None = None
        self._error: SluicegateError | None = None
        self.stream: StreamFlight | None = None
        self.tier = ""  # the tier the answer came from; empty when it came from the upstream
        self.joining = 0  # streamed followers waiting for the leader's stream to begin
        self.handed_back = False  # the leader was refused before it tried: followers look again

    def settle(self, entry: Entry | None, tier: str = "") -> None:
        """Hand the answer (None: followers go upstream themselves) to the followers."""
        if not self._settled:
            self._settled, self._value, self.tier = True, entry, tier
            if self._future is not None:
                self._future.set_result(entry)
            self._wake()

    def hand_back(self) -> None:
        """The leader was refused before its upstream call (its rate limit, budget, token limit
        or stop): the followers look the key up again, one of them leading."""
        if not self._settled:
            self.handed_back = True
            self.settle(None)

    def fail(self, error: SluicegateError) -> None:
        """Hand the leader's error to the followers; when it is a refusal of the leader's own
        (its budget, token limit or stop), they look again instead (`hand_back`)."""
        if not reached_upstream(error):
            self.hand_back()
        elif not self._settled:
            self._settled, self._error = True, error.without_headers(_CALLERS_HEADERS)
            if self._future is not None:
                self._future.set_exception(self._error)
                self._future.exception()  # retrieved, even if every follower has given up
            self._wake()

    def start(self, live: StreamFlight) -> None:
        """The leader's stream has begun: streamed followers may read it from its start (while
        some are still to join, its readers leaving does not cancel it)."""
        self.stream = live
        live.coming = lambda: self.joining
        self._wake()

    async def join(self, wants_usage: bool, wait_s: float) -> FlightReader | None:
        """For a streamed follower: a reader of the leader's stream from its start, waiting up
        to ``wait_s`` for it to begin; None when there is none to join (a plain leader, a stream
        already over, or none begun in time)."""
        if self.stream is None:
            self.joining += 1  # a reader to come: the stream is not cancelled if the leader leaves
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self.started()
                return self.join_now(wants_usage)
            finally:
                self.joining -= 1
        return self.join_now(wants_usage)

    def join_now(self, wants_usage: bool) -> FlightReader | None:
        """A reader of the leader's stream, if it is running."""
        live = self.stream
        if live is None or live.over:
            return None
        return live.reader(leader=False, wants_usage=wants_usage)

    async def started(self) -> None:
        """Until the leader's stream begins, or the flight is settled (then `wait`)."""
        if self.stream is None and not self._settled:
            if self._started is None:
                self._started = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._started)

    def _wake(self) -> None:
        if self._started is not None and not self._started.done():
            self._started.set_result(None)

    def end(self, flights: dict[str, Any], key: str) -> None:
        """The call that made this flight is over: followers still waiting go on their own
        (nothing changes when it was settled), and ``key`` is free for the next flight."""
        self.settle(None)
        if flights.get(key) is self:
            del flights[key]

    async def wait(self) -> Entry | None:
        """The leader's answer (None when it has none for us); raises the leader's error."""
        if not self._settled:
            if self._future is None:
                self._future = asyncio.get_running_loop().create_future()
            return await asyncio.shield(self._future)
        if self._error is not None:
            raise self._error
        return self._value


def reached_upstream(error: SluicegateError) -> bool:
    """Whether a call that failed with ``error`` went to the provider: not when the stages past
    the cache refused it for the caller's own budget, token limit or stop."""
    return not isinstance(error, _CALLERS_OWN)


async def send_counted(
    send: Callable[[Call], Awaitable[Reply]], call: Call, stats: CacheStats, miss: bool
) -> Reply:
    """``await send(call)``, counted in ``stats`` as an upstream call if it reached the provider
    (and as a miss, when ``miss``)."""
    try:
        reply = await send(call)
    except SluicegateError as exc:
        stats.went_upstream(call.context.feature, miss, reached_upstream(exc))
        raise
    stats.went_upstream(call.context.feature, miss)
    return reply


def going_upstream(call: Call) -> Call:
    """``call`` marked a miss, a stream asking for its usage (every reader strips what its
    client did not ask for; the stored stream needs it): then ``await send(call)`` and count it."""
    call.outcome = "miss"
    if call.stream and not wants_usage(call):
        options = call.body.get("stream_options")
        extra = options if isinstance(options, dict) else {}
        call.body = {**call.body, "stream_options": {**extra, "include_usage": True}}
    return call


def wants_usage(call: Call) -> bool:
    """Whether the client asked for the usage chunk of a stream."""
    options = call.body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _etag(body: bytes) -> str:
    # SHA-256 (the CPU's own instructions, through OpenSSL) costs two thirds of BLAKE2b here.
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (or is ``*``): the weak comparison that the
    header asks for (RFC 9110, 13.1.2)."""
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


def labelled(headers: dict[str, str], label: str, no_store: bool) -> dict[str, str]:
    """``headers`` saying how the answer was served (``miss``, ``bypass``), and ``no-store`` when
    the request said so: then the browser may not keep the answer either."""
    headers[CACHE_HEADER] = label
    if no_store:
        headers["cache-control"] = "no-store"
    return headers


def headers_for(
    entry: Entry,
    label: str,
    policy: FeatureCache,
    now: float,
    headers: dict[str, str] | None = None,
    no_store: bool = False,
) -> dict[str, str]:
    """The cache headers of a reply served from ``entry``, added to ``headers`` when given (a
    miss's reply already has the upstream's). A ``no-store`` request's reply says
    ``Cache-Control: no-store`` whatever served it: the browser may not keep it either."""
    if headers is None:
        headers = {}
    headers[CACHE_HEADER] = label
    headers["etag"] = entry.etag
    age = entry.age(now)
    if label != "miss":
        headers["age"] = str(age)
    if no_store:
        headers["cache-control"] = "no-store"
    elif "browser" in policy.tiers:
        # A browser keeps an answer for max-age minus Age: here, the browser TTL, and never
        # past the server's own expiry, so that its revalidation finds the entry.
        remaining = max(0, int(entry.expires_at - now))
        keep = remaining if policy.browser_ttl_s is None else min(policy.browser_ttl_s, remaining)
        headers["cache-control"] = f"private, max-age={age + keep if keep else 0}"
    return headers


def fresh_reply(
    reply: Reply, entry: Entry | None, model: str, policy: FeatureCache, control: CacheControl, now: float
) -> Reply:
    """The upstream's own answer to a call for ``model``, labelled a miss (or a 304 when the
    browser already has it). An answer of another model (a fallback's) gets no ETag or browser
    lifetime: it is not the asked model's answer, so a browser may not keep it as such."""
    headers = reply.headers
    if entry is None or control.no_store or entry.model != model:
        labelled(headers, "miss", control.no_store)
        return reply
    # ``*`` asks whether the client's copy still stands: after a miss it has none (a 304 would
    # leave it with nothing for the call it paid for); only the answer's own ETag matches.
    inm = control.if_none_match
    if inm is not None and inm.strip() != "*" and etag_matches(inm, entry.etag):
        return not_modified(entry, policy, now)
    headers_for(entry, "miss", policy, now, headers)
    return reply


def reply_from(
    call: Call, entry: Entry, label: str, policy: FeatureCache, now: float, no_store: bool = False
) -> Reply:
    """``entry`` as the reply to ``call``: its body, or its stream replayed."""
    headers = headers_for(entry, label, policy, now, None, no_store)
    if call.stream:
        stream = ReplayStream(entry, wants_usage=wants_usage(call), pace=policy.replay_pace)
        return Reply(stream=stream, headers=headers)
    return Reply(body=entry.body, headers=headers)


def not_modified(entry: Entry, policy: FeatureCache, now: float, no_store: bool = False) -> Reply:
    """``304 Not Modified``: the browser's copy, ``entry``'s ETag, is still the answer."""
    headers = headers_for(entry, "hit-browser-revalidated", policy, now, None, no_store)
    return Reply(status=304, headers=headers)


class EntryMaker:
    """Makes entries from answers: storable or not, their TTL, their ETag."""

    def __init__(self, prices: PriceBook, rule: CostTtlConfig, clock: Callable[[], float]) -> None:
        self._prices = prices
        self._rule = rule
        self._clock = clock

    def from_body(
        self,
        call: Call,
        policy: FeatureCache,
        control: CacheControl,
        body: bytes,
        usage: Usage | None,
        *,
        hits: int = 0,
        events: tuple[bytes, ...] | None = None,
        offsets: tuple[float, ...] | None = None,
        payload: Any = None,
        now: float | None = None,
    ) -> Entry | None:
        """A new entry for ``body`` (``payload`` is it parsed, if at hand), made at ``now`` (the
        clock's by default), or None when it may not be stored."""
        if call.own_answer:
            return None
        if payload is None:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
        if not answer_is_storable(policy, call.kind, payload):
            return None
        if call.clamped and cut_short(payload):  # by its budget's max_tokens, not the caller's
            return None
        if now is None:
            now = self._clock()
        cost = self._prices.cost_usd(call.route, usage)
        ttl = ttl_for(policy, self._rule, cost, hits, control.ttl)
        ctx = call.context
        # The scope's org and user (none for a global entry), as the key holds them.
        org = ctx.org if policy.scope != "global" else ""
        user = ctx.user if policy.scope == "user" else None
        # Positional: a third of the cost of keywords, on every miss.
        return Entry(
            call.kind,
            body,
            now,
            now + ttl,
            _etag(body),
            ctx.feature,
            org,
            user,
            call.route.name,
            events,
            offsets,
            usage,
            cost,
            control.tags,
            hits,
        )

    def from_stream(
        self, call: Call, policy: FeatureCache, control: CacheControl, live: StreamFlight, hits: int
    ) -> Entry | None:
        """A new entry for a completed stream, or None when it did not complete or may not be stored."""
        events: list[bytes] = []
        offsets: list[float] = []
        done = False
        usage: dict[str, Any] | None = None  # the upstream's usage object, details and all
        start = live.times[0] if live.times else 0.0
        for blob, at in zip(live.blobs, live.times, strict=True):
            kept, ended, reported = content_events(blob)
            events.extend(kept)
            offsets.extend([at - start] * len(kept))
            done = done or ended
            usage = reported or usage
        if not done or not events:
            return None
        if usage is None and live.usage is not None:
            usage = usage_json(live.usage)
        body = assemble(events, usage)
        return self.from_body(
            call,
            policy,
            control,
            body,
            live.usage,
            hits=hits,
            events=tuple(events),
            offsets=tuple(offsets) if policy.replay_pace else None,
        )

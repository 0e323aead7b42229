"""What the usage ledger records: one row per upstream attempt, one per answer from the cache.

The rows are built here (pure, no I/O) and handed to the `Outbox`, which makes them durable
and writes them to the database in batches. Money is integer micro-USD. A call that used
tokens is never recorded at $0: without the upstream's ``usage`` its tokens are estimated
(``priced_from`` says ``estimate``), and a model without a price cannot be configured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from ..calls import Call, Reply, ReplyStream, Usage, request_json
from ..errors import SluicegateError, UpstreamError, UpstreamTimeout
from .pricing import PriceBook

__all__ = [
    "COLUMNS",
    "Ledger",
    "RecordUsage",
    "completion_limit",
    "estimate_prompt_tokens",
    "prompt_bytes",
    "reply_usage",
    "row",
    "stream_usage",
    "usage_or_estimate",
]

# The order of a row's values (the outbox keeps rows as tuples, and spools them as JSON arrays).
COLUMNS = (
    "request_id",
    "attempt",
    "at",
    "org",
    "user",
    "key_id",
    "feature",
    "model",
    "provider",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost_micro",
    "saved_micro",
    "cache",
    "status",
    "latency_ms",
    "priced_from",
)
Row = tuple[Any, ...]
_CHARS_PER_TOKEN = 4  # the usual rough figure for English text with OpenAI's tokenizers


class Sink(Protocol):
    """Where rows go: the `Outbox`, or a list in tests."""

    def begin(self, row: Row) -> None:
        """An attempt is about to go upstream: keep its ``pending`` row durably at once, so that
        it is billed (by estimate) even if this process dies before its outcome is known."""
        ...

    def add(self, row: Row) -> None:
        """Keep ``row`` durably (it completes a pending row of the same attempt, if any)."""
        ...

    def drop(self, request_id: str, attempt: int) -> None:
        """The pending attempt never reached the upstream: forget it."""
        ...


def prompt_bytes(body: dict[str, Any]) -> int:
    """The length of what a model reads of a request, as JSON: its messages or input, and its
    tools and response format (the budget's worst case and the estimates count from it)."""
    read = (body.get("messages", body.get("input", "")), body.get("tools"), body.get("response_format"))
    return len(request_json(read))


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A rough token count of a request's prompt, for a call whose upstream reported no usage."""
    return max(1, -(-prompt_bytes(body) // _CHARS_PER_TOKEN))


def completion_limit(body: dict[str, Any], default: int) -> int:
    """The completion tokens a request may use in all: the larger of ``max_completion_tokens``
    and ``max_tokens`` (a provider may read either; else ``default``) for each of its ``n``
    choices."""
    most = max(body.get("max_completion_tokens") or 0, body.get("max_tokens") or 0)
    return (most or default) * (body.get("n") or 1)


def row(
    call: Call,
    attempt: int,
    usage: Usage,
    cost_micro: int,
    saved_micro: int,
    cache: str,
    status: int,
    latency_ms: int,
    priced_from: str,
    now: float,
) -> Row:
    """One ledger row, in `COLUMNS` order (pure)."""
    ctx = call.context
    return (
        call.request_id,
        attempt,
        now,
        ctx.org,
        ctx.user,
        ctx.key_id,
        ctx.feature,
        call.route.name,
        call.route.provider,
        usage.prompt_tokens,
        usage.cached_tokens,
        usage.completion_tokens,
        usage.reasoning_tokens,
        cost_micro,
        saved_micro,
        cache,
        status,
        latency_ms,
        priced_from,
    )


_NO_USAGE = Usage()


def usage_or_estimate(
    body: dict[str, Any], usage: Usage | None, status: int, completion_estimate: int = 0
) -> tuple[Usage, str]:
    """What an attempt used, and where that comes from (pure): the upstream's ``usage``; none
    when it was refused or failed before any answer; else an estimate (the prompt, plus
    ``completion_estimate`` tokens: a stream's chunks), as for a client that left (499). The
    ledger, the budget and the token limits all count a call this way."""
    if usage is not None:
        return usage, "usage"
    if status >= 400 and status != 499 and not completion_estimate:
        return _NO_USAGE, "none"
    return Usage(estimate_prompt_tokens(body), completion_estimate, 0), "estimate"


def answer_tokens(reply: Reply) -> int:
    """A rough token count of a plain answer's text (its choices' content, refusals and tool
    calls' arguments), for an answer whose upstream reported no usage (pure)."""
    payload = reply.payload
    if payload is None:
        try:
            payload = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            return 0
    choices = payload.get("choices") if isinstance(payload, dict) else None
    chars = 0
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        texts = [message.get("content"), message.get("refusal")]
        for tool_call in message.get("tool_calls") or ():
            function = tool_call.get("function") if isinstance(tool_call, dict) else None
            texts.append(function.get("arguments") if isinstance(function, dict) else None)
        chars += sum(len(text) for text in texts if isinstance(text, str))
    return -(-chars // _CHARS_PER_TOKEN)


def reply_usage(body: dict[str, Any], reply: Reply) -> Usage:
    """What a plain answer used: its upstream's usage, else an estimate of its prompt and its
    text (see `usage_or_estimate`). The ledger and the budget count it this way."""
    if reply.usage is not None:
        return reply.usage
    return usage_or_estimate(body, None, 200, answer_tokens(reply))[0]


def stream_usage(body: dict[str, Any], relay: ReplyStream) -> Usage:
    """What a stream that has ended used, however it ended (see `usage_or_estimate`)."""
    error = relay.error
    status = error.status_code if error is not None else (200 if relay.done else 499)
    return usage_or_estimate(body, relay.usage, status, relay.deltas)[0]


class Ledger:
    """Turns what happened to a call into rows: attempts (with their cost) and cache answers
    (with what they saved)."""

    def __init__(self, prices: PriceBook, sink: Sink, clock: Callable[[], float] = time.time) -> None:
        self.prices = prices
        self._sink = sink
        self._clock = clock

    def begin(self, call: Call) -> None:
        """An attempt of ``call`` is about to go upstream: a ``pending`` row, priced at the
        prompt's estimate plus the completion's limit, stands for it until `attempt` records
        its outcome. Replayed from a dead process's spool, it becomes ``interrupted``."""
        body = call.body
        usage = Usage(estimate_prompt_tokens(body), completion_limit(body, 0), 0)
        cost = self.prices.cost_micro(call.route, usage) or 0
        self._sink.begin(
            row(call, call.attempt, usage, cost, 0, call.outcome, 0, 0, "pending", self._clock())
        )

    def never_sent(self, call: Call) -> None:
        """The attempt `begin` announced was refused before it reached the upstream."""
        self._sink.drop(call.request_id, call.attempt)

    def attempt(
        self,
        call: Call,
        usage: Usage | None,
        status: int,
        started: float,
        completion_estimate: int = 0,
        *,
        billed: bool = False,
    ) -> None:
        """Record one upstream attempt of ``call``; ``usage`` None means the upstream reported
        none (its tokens are then estimated) and ``status`` ≥ 400 one that failed unbilled
        (499, a client that left, is billed by estimate: the upstream had the prompt; so is
        any failure with ``billed``)."""
        usage, priced_from = usage_or_estimate(
            call.body, usage, 499 if billed else status, completion_estimate
        )
        cost = self.prices.cost_micro(call.route, usage) or 0
        latency = int((time.perf_counter() - started) * 1000)
        self._sink.add(
            row(call, call.attempt, usage, cost, 0, call.outcome, status, latency, priced_from, self._clock())
        )

    def served(self, call: Call, usage: Usage | None, label: str) -> None:
        """Record an answer served without an upstream call (a cache hit, a stale or a coalesced
        answer), with the cost it saved."""
        saved = (self.prices.cost_micro(call.route, usage) or 0) if usage is not None else 0
        latency = int((time.perf_counter() - call.started) * 1000)
        self._sink.add(
            row(call, 0, usage or _NO_USAGE, 0, saved, label, 200, latency, "usage", self._clock())
        )

    def stream_closed(self, call: Call, relay: ReplyStream, started: float) -> None:
        """Record a streamed attempt once it has ended, however it ended: from its usage chunk,
        or from the chunks it produced when the upstream sent none."""
        error = relay.error
        status = error.status_code if error is not None else (200 if relay.done else 499)
        self.attempt(call, relay.usage, status, started, completion_estimate=relay.deltas)


Send = Callable[[Call], Any]


def _billed(error: UpstreamError) -> bool:
    """Whether a failed attempt may still be billed: it timed out after the request was sent."""
    return isinstance(error, UpstreamTimeout) and error.sent


class RecordUsage:
    """The stage around the provider: one ledger row per upstream attempt."""

    def __init__(self, send: Send, ledger: Ledger) -> None:
        self._send = send
        self._ledger = ledger

    async def __call__(self, call: Call) -> Any:
        started = time.perf_counter()
        self._ledger.begin(call)
        try:
            reply = await self._send(call)
        except UpstreamError as exc:
            # A timeout after the request went upstream is billed as a client that left (499):
            # the provider had the prompt. Refused or unreachable, it used nothing.
            self._ledger.attempt(call, None, exc.status_code, started, billed=_billed(exc))
            raise
        except SluicegateError:
            self._ledger.never_sent(call)  # refused before any upstream call
            raise
        except asyncio.CancelledError:
            self._ledger.attempt(call, None, 499, started)  # the client left while it waited
            raise
        if reply.stream is None:
            estimate = answer_tokens(reply) if reply.usage is None else 0
            self._ledger.attempt(call, reply.usage, 200, started, completion_estimate=estimate)
        else:
            ledger = self._ledger
            reply.stream.on_close(lambda relay: ledger.stream_closed(call, relay, started))
        return reply

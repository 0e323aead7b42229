"""The built-in mock provider: deterministic OpenAI-shaped answers with injectable faults.

`MockEngine` decides every reply (content, usage, timing, faults) with no I/O; what the assistant
says (prose, JSON or a tool call) comes from `mock_replies`. Two faces serve its replies:
`MockTransport`, in-process, for the library and tests, and `sluicegate.upstream.mock_server`, a
real HTTP server for benchmarks and fault tests.
"""

from __future__ import annotations

import asyncio
import base64
import math
import random
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..config import Latency, MockBehaviour
from ..errors import UpstreamStreamBroken, UpstreamTimeout
from .mock_replies import MockRequestError, Turn, digest, mock_answer, plan_turn
from .mock_validate import Refusal, check_chat, check_embeddings
from .transport import UpstreamRequest, UpstreamResponse

__all__ = ["MockCall", "MockEngine", "MockReply", "MockTransport", "mock_answer"]

_JSON_HEADERS = {"content-type": "application/json"}
_SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}
_DONE = b"data: [DONE]\n\n"
_MAX_DIMENSIONS = 4096
_MEMO_SIZE = 1024


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


@dataclass(slots=True)
class MockReply:
    """What the mock answers to one request, and when."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    events: tuple[bytes, ...] = ()
    delay_s: float = 0.0
    interval_s: float = 0.0
    hang: bool = False
    drop_after: int | None = None

    @property
    def streamed(self) -> bool:
        """Whether the reply is a server-sent event stream."""
        return bool(self.events)


@dataclass(slots=True, frozen=True)
class MockCall:
    """One request the mock received, for tests to read."""

    path: str
    body: dict[str, Any] | None
    at: float


def _error(
    status: int, message: str, kind: str, code: str | None, param: str | None = None, **headers: str
) -> MockReply:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return MockReply(status, {**_JSON_HEADERS, **headers}, orjson.dumps(body))


def _refused(refusal: Refusal) -> MockReply:
    return _error(400, refusal.message, "invalid_request_error", refusal.code, refusal.param)


class MockEngine:
    """Plans the mock's replies; keeps a bounded log of the calls it saw."""

    def __init__(self, behaviour: MockBehaviour | None = None, *, log_size: int = 10_000) -> None:
        self.behaviour = behaviour or MockBehaviour()
        self._log: deque[tuple[str, bytes, float]] = deque(maxlen=log_size)

    @property
    def behaviour(self) -> MockBehaviour:
        """The behaviour in force; assigning a new one also reseeds the fault dice."""
        return self._behaviour

    @behaviour.setter
    def behaviour(self, value: MockBehaviour) -> None:
        self._behaviour = value
        self._rng = random.Random(value.seed)
        # With no dice to roll, the same request always gets the same reply: remember it, so
        # that in benchmarks the mock costs next to nothing.
        dice = value.hang_rate or value.rate_limit_rate or value.error_rate or value.slow_rate
        self._memo: dict[tuple[str, str, bytes], MockReply] | None = (
            None if dice or value.latency.distribution != "fixed" else {}
        )

    @property
    def calls(self) -> list[MockCall]:
        """The calls received so far, oldest first."""
        return [MockCall(path, _loads_or_none(body), at) for path, body, at in self._log]

    def clear_calls(self) -> None:
        """Forget the calls received so far."""
        self._log.clear()

    def reply(self, method: str, path: str, body: bytes) -> MockReply:
        """Decide the reply to one request."""
        self._log.append((path, body, time.time()))
        if self._memo is not None:
            key = (method, path, body)
            reply = self._memo.get(key)
            if reply is None:
                reply = self._plan(method, path, body)
                if reply.status == 200 and len(self._memo) < _MEMO_SIZE:
                    self._memo[key] = reply
            return reply
        return self._plan(method, path, body)

    def _plan(self, method: str, path: str, body: bytes) -> MockReply:
        if method == "GET" and path.endswith("/models"):
            return MockReply(200, _JSON_HEADERS, orjson.dumps({"object": "list", "data": []}))
        is_chat = path.endswith("/chat/completions")
        if method != "POST" or not (is_chat or path.endswith("/embeddings")):
            return _error(404, f"mock: no route {method} {path}", "invalid_request_error", None)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _error(400, "mock: body is not JSON", "invalid_request_error", None)
        if not isinstance(payload, dict):
            return _error(400, "mock: body must be an object", "invalid_request_error", None)
        fault = self._fault()
        if fault is not None:
            return fault
        return self._chat(payload) if is_chat else self._embeddings(payload)

    def _fault(self) -> MockReply | None:
        b = self._behaviour
        if not (b.hang_rate or b.rate_limit_rate or b.error_rate):
            return None
        roll = self._rng.random()
        if roll < b.hang_rate:
            return MockReply(200, {}, hang=True)
        roll -= b.hang_rate
        if roll < b.rate_limit_rate:
            return _error(
                429,
                "mock: rate limit reached, retry later",
                "rate_limit_error",
                "rate_limit_exceeded",
                **{"retry-after": str(b.retry_after_s)},
            )
        roll -= b.rate_limit_rate
        if roll < b.error_rate:
            kind = "server_error" if b.error_status >= 500 else "invalid_request_error"
            if b.error_status == 429:
                kind = "insufficient_quota" if b.error_code == "insufficient_quota" else "rate_limit_error"
            extra = {"retry-after": b.error_retry_after} if b.error_retry_after is not None else {}
            return _error(b.error_status, "mock: injected upstream failure", kind, b.error_code, **extra)
        return None

    def _latency_s(self, latency: Latency) -> float:
        if self._behaviour.slow_rate and self._rng.random() < self._behaviour.slow_rate:
            return self._behaviour.slow_ms / 1000
        if latency.distribution == "uniform":
            return self._rng.uniform(latency.ms, latency.max_ms or latency.ms) / 1000
        if latency.distribution == "lognormal":
            return latency.ms * math.exp(latency.sigma * self._rng.gauss(0.0, 1.0)) / 1000
        return latency.ms / 1000

    def _chat(self, payload: dict[str, Any]) -> MockReply:
        messages = payload.get("messages")
        model = payload.get("model")
        if not isinstance(model, str):
            return _error(400, "mock: model and messages are required", "invalid_request_error", None)
        refusal = check_chat(payload)
        if refusal is not None:
            return _refused(refusal)
        assert isinstance(messages, list)
        b = self._behaviour
        try:
            turn = plan_turn(payload, b.answer_words)
        except MockRequestError as exc:
            return _error(400, f"mock: {exc}", "invalid_request_error", None)
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        pieces, finish = turn.pieces, turn.finish_reason
        if isinstance(limit, int) and 0 < limit < len(pieces):
            pieces, finish = pieces[:limit], "length"
        usage = _usage(payload, messages, len(pieces))
        ident = "chatcmpl-mock-" + digest(orjson.dumps(messages).decode()).hex()[:24]
        created = int(time.time())
        if payload.get("stream") is True:
            options = payload.get("stream_options")
            with_usage = isinstance(options, dict) and options.get("include_usage") is True
            with_usage = with_usage and b.report_usage
            events = _stream_events(
                ident, created, model, turn, pieces, finish, usage if with_usage else None, b.chunks
            )
            return MockReply(
                200,
                _SSE_HEADERS,
                events=events,
                delay_s=b.ttft_ms / 1000,
                interval_s=b.chunk_interval_ms / 1000,
                drop_after=b.drop_after_chunks,
            )
        message = turn.message("".join(pieces))
        body = {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage if b.report_usage else None,
            "system_fingerprint": "fp_sluicegate_mock",
        }
        return MockReply(200, _JSON_HEADERS, orjson.dumps(body), delay_s=self._latency_s(b.latency))

    def _embeddings(self, payload: dict[str, Any]) -> MockReply:
        refusal = check_embeddings(payload)
        if refusal is not None:
            return _refused(refusal)
        inputs = _embedding_inputs(payload.get("input"))
        if inputs is None:
            return _error(
                400,
                "mock: input must be a string, a list of strings, a list of token ids, or a list "
                "of lists of token ids",
                "invalid_request_error",
                None,
            )
        dims = payload.get("dimensions", 16) if payload.get("dimensions") is not None else 16
        if not isinstance(dims, int) or not 1 <= dims <= _MAX_DIMENSIONS:
            return _error(400, "mock: dimensions must be 1-4096", "invalid_request_error", None)
        as_base64 = payload.get("encoding_format") == "base64"
        data = []
        for index, one in enumerate(inputs):
            vector = _embedding(one if isinstance(one, str) else orjson.dumps(one).decode(), dims)
            packed: Any = (
                base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": packed})
        tokens = sum(_estimate_tokens(one) if isinstance(one, str) else len(one) for one in inputs)
        body = {
            "object": "list",
            "data": data,
            "model": payload.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return MockReply(
            200, _JSON_HEADERS, orjson.dumps(body), delay_s=self._latency_s(self._behaviour.latency)
        )


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int and t >= 0 for t in value)


def _embedding_inputs(raw: Any) -> list[str] | list[list[int]] | None:
    """The inputs of an embeddings request, each a text or a list of token ids, as OpenAI takes
    them; None when ``input`` is none of its four forms."""
    if isinstance(raw, str):
        return [raw]
    if _is_tokens(raw):
        return [raw]
    if isinstance(raw, list) and raw and all(isinstance(one, str) for one in raw):
        return raw
    if isinstance(raw, list) and raw and all(_is_tokens(one) for one in raw):
        return raw
    return None


def _loads_or_none(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _usage(payload: dict[str, Any], messages: list[Any], completion_tokens: int) -> dict[str, int]:
    # Tool definitions and a response schema are part of what a model reads.
    read = [*messages, *(payload[k] for k in ("tools", "response_format") if payload.get(k))]
    prompt_tokens = 3 + sum(4 + _estimate_tokens(orjson.dumps(m).decode()) for m in read)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _embedding(text: str, dims: int) -> list[float]:
    seed = digest(text)
    raw = [((seed[i % 32] ^ (i * 37)) % 255) / 127.0 - 1.0 for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _stream_events(
    ident: str,
    created: int,
    model: str,
    turn: Turn,
    pieces: list[str],
    finish: str,
    usage: dict[str, int] | None,
    chunks: int | None,
) -> tuple[bytes, ...]:
    count = min(chunks or len(pieces), len(pieces))
    # Spread the pieces evenly, so that exactly `count` content (or arguments) chunks are sent.
    bounds = [round(i * len(pieces) / count) for i in range(count + 1)]
    parts = ["".join(pieces[bounds[i] : bounds[i + 1]]) for i in range(count)]
    base: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    if usage is not None:
        base["usage"] = None

    def event(choices: list[Any], **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

    out = [event([{"index": 0, "delta": turn.first_delta(), "finish_reason": None}])]
    out += [event([{"index": 0, "delta": turn.delta(p), "finish_reason": None}]) for p in parts]
    out.append(event([{"index": 0, "delta": {}, "finish_reason": finish}]))
    if usage is not None:
        out.append(event([], usage=usage))
    out.append(_DONE)
    return tuple(out)


class MockTransport:
    """The in-memory twin of `AiohttpTransport`: replies from a `MockEngine`, no socket.

    Like the real transport, it gives up with `UpstreamTimeout` when the first byte would come
    later than ``first_byte_timeout`` seconds (a hang never comes).
    """

    def __init__(self, engine: MockEngine, first_byte_timeout: float = 60.0) -> None:
        self.engine = engine
        self.first_byte_timeout = first_byte_timeout

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        reply = self.engine.reply(request.method, request.path, request.body)
        wait = self.first_byte_timeout
        for bound in (request.timeout_s, request.first_byte_s):
            if bound is not None:
                wait = min(wait, bound)
        if reply.hang or reply.delay_s > wait:
            await asyncio.sleep(wait)
            raise UpstreamTimeout("provider mock: the upstream did not answer in time")
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.streamed and request.stream:
            return UpstreamResponse(reply.status, reply.headers, chunks=_replay(reply))
        return UpstreamResponse(reply.status, reply.headers, reply.body or b"".join(reply.events))

    async def aclose(self) -> None:
        return None


async def _replay(reply: MockReply) -> AsyncIterator[bytes]:
    for index, event in enumerate(reply.events):
        if reply.drop_after is not None and index >= reply.drop_after:
            raise UpstreamStreamBroken("provider mock: the upstream stream was cut short")
        if index and reply.interval_s:
            await asyncio.sleep(reply.interval_s)
        yield event

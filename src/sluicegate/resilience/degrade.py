"""Graceful degradation: what a client gets when every upstream option failed.

The cache, inside this stage, serves a stale entry first (a feature's ``stale_if_error_s``).
When it has none, `Degrade` serves the feature's static ``fallback_answer``, in OpenAI's shape
and marked (``X-Sluicegate-Degraded: static`` and a ``sluicegate`` field in the body), or
else a clear 503 `AllUpstreamsFailed` with ``Retry-After``. Only the upstream's failures
degrade; the gateway's own refusals (a bad request, a budget, a rate limit) and the answers
the upstream gave on purpose (a 400, a content filter) pass through unchanged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson

from ..cache.answers import wants_usage
from ..cache.forms import DONE, synthesise, usage_event
from ..calls import Call, Reply, Usage
from ..config import FeatureConfig, ResilienceConfig
from ..errors import AllUpstreamsFailed, SluicegateError
from .classify import classify

__all__ = ["DEGRADED_HEADER", "Degrade", "static_answer"]

Send = Callable[[Call], Awaitable[Reply]]
DEGRADED_HEADER = "x-sluicegate-degraded"


class Degrade:
    """Turn an upstream failure into the feature's static answer, or a 503 with Retry-After."""

    def __init__(self, inner: Send, config: ResilienceConfig, features: Mapping[str, FeatureConfig]) -> None:
        self._inner = inner
        self._answers = {
            name: feature.fallback_answer
            for name, feature in features.items()
            if feature.fallback_answer is not None
        }
        self._retry_after = str(config.unavailable_retry_after_s)

    async def __call__(self, call: Call) -> Reply:
        try:
            return await self._inner(call)
        except SluicegateError as exc:
            cause = classify(exc).cause
            if cause is None:
                raise
            answer = self._answers.get(call.context.feature)
            if answer is not None and call.kind == "chat":
                return static_answer(call, answer, exc)
            # What the stages within added (the token limits' headers) stays; Retry-After is the
            # failure's, or the configured one.
            headers = {k: v for k, v in exc.headers.items() if k != "retry-after-ms"}
            headers["retry-after"] = exc.headers.get("retry-after", self._retry_after)
            raise AllUpstreamsFailed(
                f"no upstream could answer for the model {call.route.name!r} ({cause}): {exc.message}",
                headers=headers,
            ) from exc


def static_answer(call: Call, text: str, error: SluicegateError) -> Reply:
    """The feature's configured ``text`` as a chat completion (or its stream), marked degraded."""
    body = orjson.dumps(
        {
            "id": "chatcmpl-degraded-" + call.request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.route.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "sluicegate": {"degraded": "static", "reason": error.code or str(error.status_code)},
        }
    )
    headers = {DEGRADED_HEADER: "static", "cache-control": "no-store"}
    if call.stream:
        events = synthesise(body)
        if wants_usage(call):  # its zero usage, as asked
            events = (*events, usage_event(body, Usage()))
        return Reply(stream=StaticStream(b"".join((*events, DONE))), headers=headers)
    return Reply(body=body, usage=Usage(), headers=headers)


class StaticStream:
    """A stream made of fixed SSE bytes, sent as one write."""

    usage: Usage | None = None
    error: SluicegateError | None = None
    deltas = 0

    def __init__(self, events: bytes) -> None:
        self._events = events
        self.done = False
        self.first_chunk_at: float | None = None
        self._callbacks: list[Callable[[Any], None]] = []
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.first_chunk_at = time.perf_counter()
        try:
            self.done = True
            yield self._events
        finally:
            await self.aclose()

    def on_close(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            for callback in self._callbacks:
                callback(self)

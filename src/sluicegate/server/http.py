"""The few HTTP primitives the routes need, straight on ASGI.

sluicegate serves a handful of routes whose cost per request is the product, so it speaks
ASGI directly instead of through a framework: a request is one dictionary lookup to route,
one pass over the headers, and the body bytes. ``bench/RESULTS.md`` has the measurements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import InvalidRequest, RequestTimeout, RequestTooLarge, SluicegateError

__all__ = [
    "Receive",
    "Request",
    "Scope",
    "Send",
    "json_object",
    "read_body",
    "read_json",
    "send_error",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
_WANTED = frozenset(
    {
        b"authorization",
        b"cache-control",
        b"content-length",
        b"if-none-match",
        b"origin",
        b"x-sluicegate-feature",
        b"x-sluicegate-user",
    }
)


@dataclass(slots=True)
class Request:
    """One HTTP request: the ASGI triple, and the headers sluicegate reads."""

    scope: Scope
    receive: Receive
    send: Send
    request_id: str
    authorization: str | None = None
    content_length: int | None = None
    feature: str | None = None
    user: str | None = None
    cache_control: str | None = None
    if_none_match: str | None = None
    origin: str | None = None

    @classmethod
    def from_asgi(cls, scope: Scope, receive: Receive, send: Send, request_id: str) -> Request:
        """Read the interesting headers in one pass."""
        request = cls(scope, receive, send, request_id)
        for name, value in scope["headers"]:
            if name not in _WANTED:
                continue
            if name == b"authorization":
                request.authorization = value.decode("latin-1")
            elif name == b"content-length":
                request.content_length = int(value) if value.isdigit() else None
            elif name == b"x-sluicegate-feature":
                request.feature = value.decode("latin-1") or None
            elif name == b"x-sluicegate-user":
                request.user = value.decode("latin-1") or None
            # Lists: lines sent more than once make one comma-separated list (RFC 9110, 5.3).
            elif name == b"cache-control":
                request.cache_control = _listed(request.cache_control, value)
            elif name == b"if-none-match":
                request.if_none_match = _listed(request.if_none_match, value)
            elif name == b"origin":
                request.origin = value.decode("latin-1")
        return request


def _listed(known: str | None, value: bytes) -> str:
    text = value.decode("latin-1")
    return text if known is None else f"{known}, {text}"


async def read_body(request: Request, limit: int, timeout_s: float = 30.0) -> bytes:
    """The whole body; `RequestTooLarge` as soon as it is known to exceed ``limit`` bytes,
    `RequestTimeout` when the rest of it takes longer than ``timeout_s`` to arrive."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    message = await request.receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    parts = [body]
    size = len(body)
    try:
        # Only a body in several pieces arms a timer: a slow client cannot hold the worker.
        async with asyncio.timeout(timeout_s):
            while message.get("more_body", False):
                message = await request.receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                parts.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout_s:g} s (server.body_timeout_s)"
        ) from None
    return b"".join(parts)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"the request body is larger than the gateway's limit of {limit} bytes")


async def read_json(request: Request, limit: int, timeout_s: float = 30.0) -> Any:
    """The body parsed as JSON; `InvalidRequest` when it is not JSON."""
    body = await read_body(request, limit, timeout_s)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the request body is not valid JSON ({exc}); send a JSON object",
            code="invalid_json",
        ) from None


def json_object(body: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """``body`` when it is a JSON object whose fields are all among ``fields``; otherwise
    `InvalidRequest`, naming the unknown fields (a typo such as ``orgg`` must not turn a stop
    of one org into a stop of every org)."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"send a JSON object; this request takes {', '.join(fields)}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise InvalidRequest(
            f"unknown field {', '.join(map(repr, unknown))}; this request takes {', '.join(fields)}",
            param=unknown[0],
        )
    return body


async def send_json(
    request: Request,
    status: int,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete JSON response."""
    await request.send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON),
                (b"content-length", b"%d" % len(body)),
                (b"x-request-id", request.request_id.encode()),
                *headers,
            ],
        }
    )
    await request.send({"type": "http.response.body", "body": body})


async def send_error(request: Request, error: SluicegateError) -> None:
    """Send ``error`` in OpenAI's error shape with its status."""
    headers = [(name.encode(), value.encode()) for name, value in error.headers.items()]
    await send_json(request, error.status_code, error.to_json(), headers)

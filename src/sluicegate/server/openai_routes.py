"""The OpenAI-compatible routes: chat completions, embeddings and models."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import orjson

from ..calls import CallKind, ReplyStream
from ..errors import SluicegateError
from ..gateway import Gateway
from ..upstream.sse import error_event
from .http import Request, read_json, send_json

__all__ = ["chat_completions", "embeddings", "model_routes"]

_SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


_SSE_CACHEABLE = tuple(h for h in _SSE_HEADERS if h[0] != b"cache-control")


Handler = Callable[[Gateway, Request], Awaitable[None]]


def forwarder(kind: CallKind) -> Handler:
    """The handler that runs one ``kind`` of call through the gateway and sends the reply."""

    async def forward(gateway: Gateway, request: Request) -> None:
        # The key first: an unauthenticated caller learns nothing from the body's errors.
        key = await gateway.authenticator.authenticate(request.authorization)
        body = await read_json(
            request, gateway.settings.server.max_body_bytes, gateway.settings.server.body_timeout_s
        )
        context = gateway.authenticator.context(
            key, request.feature, request.user, body if isinstance(body, dict) else None
        )
        call = gateway.new_call(
            kind,
            body,
            context,
            request.request_id,
            cache_control=request.cache_control,
            if_none_match=request.if_none_match,
        )
        reply = await gateway.send(call)
        headers = [(name.encode(), value.encode("latin-1")) for name, value in reply.headers.items()]
        if reply.status == 304:
            await _not_modified(request, headers)
        elif reply.stream is None:
            await send_json(request, 200, reply.body, headers)
        else:
            await _relay(request, reply.stream, headers)

    return forward


chat_completions = forwarder("chat")
"""``POST /v1/chat/completions``, plain or streamed."""

embeddings = forwarder("embeddings")
"""``POST /v1/embeddings``."""


async def _not_modified(request: Request, headers: list[tuple[bytes, bytes]]) -> None:
    """``304 Not Modified``: the browser's copy is still the answer."""
    await request.send(
        {
            "type": "http.response.start",
            "status": 304,
            "headers": [(b"x-request-id", request.request_id.encode()), *headers],
        }
    )
    await request.send({"type": "http.response.body", "body": b""})


async def _relay(request: Request, stream: ReplyStream, headers: list[tuple[bytes, bytes]]) -> None:
    """Send the stream as it arrives; end with an error event if it breaks."""
    send = request.send
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            # A stream replayed from the cache may be kept by a browser: its Cache-Control wins.
            "headers": [
                *(_SSE_HEADERS if not any(h[0] == b"cache-control" for h in headers) else _SSE_CACHEABLE),
                (b"x-request-id", request.request_id.encode()),
                *headers,
            ],
        }
    )
    relaying = asyncio.current_task()
    finished = False

    async def cancel_on_disconnect() -> None:
        # The body has been read, so the next message is the client going away.
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                if not finished and relaying is not None:
                    relaying.cancel()
                return

    watcher = asyncio.get_running_loop().create_task(cancel_on_disconnect())
    try:
        async for data in stream:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except SluicegateError as exc:
        finished = True
        await send({"type": "http.response.body", "body": error_event(exc), "more_body": False})
    except asyncio.CancelledError:
        if not watcher.done():
            raise
        # The client left: stop quietly; the relay's close records the event.
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await stream.aclose()


def model_routes(gateway: Gateway) -> tuple[Handler, Handler]:
    """``GET /v1/models`` (every configured name and alias) and ``GET /v1/models/{id}`` (one of
    them, or a 404 ``model_not_found``), each answer serialised once. With keys required, the
    catalogue is for callers with a key (or the admin key), too."""
    data: list[dict[str, object]] = []
    for name, model in gateway.settings.models.items():
        data.extend(
            {"id": public, "object": "model", "created": 0, "owned_by": model.provider}
            for public in (name, *model.aliases)
        )
    listing = orjson.dumps({"object": "list", "data": data})
    each = {str(entry["id"]): orjson.dumps(entry) for entry in data}

    async def authorise(gateway: Gateway, request: Request) -> None:
        if not gateway.authenticator.is_admin(request.authorization):
            await gateway.authenticator.authenticate(request.authorization)

    async def list_models(gateway: Gateway, request: Request) -> None:
        await authorise(gateway, request)
        await send_json(request, 200, listing)

    async def retrieve_model(gateway: Gateway, request: Request) -> None:
        await authorise(gateway, request)
        name = unquote(request.scope["path"].split("/models/", 1)[1])
        found = each.get(name)
        if found is None:
            gateway.catalog.resolve(name)  # not a configured name or alias: raises ModelNotFound
        assert found is not None
        await send_json(request, 200, found)

    return list_models, retrieve_model

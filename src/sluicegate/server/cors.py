"""CORS for the origins in ``browser.cors_origins``, so that pages there can call the gateway.

Only a request whose ``Origin`` is allowed is touched: a preflight (``OPTIONS``) is answered
here, and any other response gets its CORS headers through a wrapped ASGI ``send``. Requests
without an allowed origin, server-to-server calls included, go through unchanged and pay one
dictionary lookup at most. With no origins configured (the default) the app builds no `Cors`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import BrowserConfig
from .http import Message, Request, Send

__all__ = ["Cors"]

ALLOW_METHODS = b"GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = (
    b"authorization, content-type, cache-control, if-none-match, x-sluicegate-feature, x-sluicegate-user, "
    b"x-request-id, traceparent, tracestate"  # a page's tracing (W3C Trace Context) must not break its calls
)
# What a page's script may read: the browser cache needs the validators and freshness; a page
# also sees who answered and how (a fallback, a hedge, the static answer) and the token limits.
EXPOSE_HEADERS = (
    b"etag, age, cache-control, x-sluicegate-cache, x-request-id, ratelimit, ratelimit-policy, "
    b"retry-after, x-sluicegate-model, x-sluicegate-deployment, x-sluicegate-fallback, "
    b"x-sluicegate-hedge, x-sluicegate-coalesced, x-sluicegate-degraded, "
    b"x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens"
)
MAX_AGE = b"600"


class Cors:
    """The CORS policy: which origins may call, and the headers they get."""

    def __init__(self, origins: Iterable[str]) -> None:
        allowed = {_normalise(o) for o in origins}
        self._any = "*" in allowed
        self._origins = frozenset(allowed - {"*"})

    @classmethod
    def from_settings(cls, browser: BrowserConfig) -> Cors | None:
        """The policy for ``browser.cors_origins``; None when there are none."""
        return cls(browser.cors_origins) if browser.cors_origins else None

    def allows(self, origin: str) -> bool:
        """Whether a page at ``origin`` may call the gateway."""
        return self._any or origin in self._origins or _normalise(origin) in self._origins

    async def apply(self, request: Request) -> bool:
        """Answer a preflight from an allowed origin (True), or add CORS to the response to come."""
        origin = request.origin
        if origin is None or not self.allows(origin):
            return False
        if request.scope["method"] == "OPTIONS":
            await request.send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        (b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"access-control-allow-methods", ALLOW_METHODS),
                        (b"access-control-allow-headers", ALLOW_HEADERS),
                        (b"access-control-max-age", MAX_AGE),
                        (b"vary", b"Origin"),
                        (b"x-request-id", request.request_id.encode()),
                    ],
                }
            )
            await request.send({"type": "http.response.body", "body": b""})
            return True
        request.send = _with_cors(request.send, origin.encode("latin-1"))
        return False


def _with_cors(send: Send, origin: bytes) -> Send:
    """``send``, adding the CORS headers to the response's start."""

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = _vary_on_origin(message.get("headers", []))
            headers.append((b"access-control-allow-origin", origin))
            headers.append((b"access-control-expose-headers", EXPOSE_HEADERS))
            message = {**message, "headers": headers}
        await send(message)

    return send_with_cors


def _vary_on_origin(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers with ``Origin`` in ``Vary``, merged into one the route already sent."""
    result: list[tuple[bytes, bytes]] = []
    merged = False
    for name, value in headers:
        if name.lower() == b"vary" and not merged:
            merged = True
            if b"origin" not in value.lower() and value.strip() != b"*":
                value = value + b", Origin"
        result.append((name, value))
    if not merged:
        result.append((b"vary", b"Origin"))
    return result


def _normalise(origin: str) -> str:
    # Browsers send the scheme and host in lower case, never a trailing slash, and no port
    # when it is the scheme's own.
    origin = origin.strip().rstrip("/").lower()
    for default in ("https://:443", "http://:80"):
        scheme, port = default.split("//")
        if origin.startswith(scheme + "//") and origin.endswith(port):
            return origin[: -len(port)]
    return origin

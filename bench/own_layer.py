"""CPU cost of sluicegate's own layer per request, with no sockets.

Drives the ASGI app in-process with a canned upstream answer, so the figure covers routing, the
header scan, the body, JSON, authentication, validation, the pipeline and the event, and
nothing of the server or the upstream client. Run: ``.venv/bin/python bench/own_layer.py``.
"""

from __future__ import annotations

import time
from typing import Any

import uvloop

from sluicegate.gateway import create_gateway
from sluicegate.server.app import create_app
from sluicegate.testing import mock_settings
from sluicegate.upstream.transport import UpstreamRequest, UpstreamResponse

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Suggest three OKRs for a sales team"}]}'
ANSWER = (
    b'{"id":"x","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hello there"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}'
)
HEADERS = {"content-type": "application/json"}
REQUESTS = 50_000


class CannedTransport:
    """Answers every request at once with the same body."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        return UpstreamResponse(200, HEADERS, ANSWER)

    async def aclose(self) -> None:
        return None


async def main() -> None:
    gateway = create_gateway(mock_settings())
    gateway.providers["upstream"].transport = CannedTransport()
    app = create_app(gateway=gateway)
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer sk-bench"),
            (b"content-length", b"%d" % len(BODY)),
        ],
    }
    message = {"type": "http.request", "body": BODY, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_: Any) -> None:
        return None

    for _ in range(2_000):
        await app(scope, receive, send)
    started = time.process_time()
    for _ in range(REQUESTS):
        await app(scope, receive, send)
    per_request = (time.process_time() - started) / REQUESTS
    print(f"sluicegate's own layer: {per_request * 1e6:.1f} us of CPU per request ({REQUESTS} requests)")
    await gateway.aclose()


if __name__ == "__main__":
    uvloop.run(main())

"""``GET /sdk/sluicegate.js`` (the browser client) and ``GET /sdk/demo`` (a page that uses it).

Both files ship inside the package (``server/sdk/``), so no CDN and no build step is involved;
``clients/js/sluicegate.js`` in the repository is a link to the same file.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from ..cache.answers import etag_matches
from ..gateway import Gateway
from .http import Request
from .openai_routes import Handler

__all__ = ["client_script", "demo_page", "static_file"]


def static_file(name: str, content_type: bytes, cache_control: bytes) -> Handler:
    """A handler serving the packaged file ``sdk/name`` with a strong ETag, read once, now."""
    body = resources.files("sluicegate.server").joinpath("sdk", name).read_bytes()
    etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode()
    # Whether a page of another origin may read it depends on its Origin (CORS): a shared
    # cache must not hand one origin's copy to another.
    headers = [(b"etag", etag), (b"cache-control", cache_control), (b"vary", b"Origin")]

    async def serve(gateway: Gateway, request: Request) -> None:
        if request.if_none_match is not None and etag_matches(request.if_none_match, etag.decode()):
            status, content = 304, b""
            response_headers = headers
        else:
            status, content = 200, body
            response_headers = [
                (b"content-type", content_type),
                (b"content-length", b"%d" % len(body)),
                *headers,
            ]
        await request.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*response_headers, (b"x-request-id", request.request_id.encode())],
            }
        )
        await request.send({"type": "http.response.body", "body": content})

    return serve


def client_script() -> Handler:
    """``GET /sdk/sluicegate.js``: the dependency-free ES module, cacheable for five minutes."""
    return static_file("sluicegate.js", b"text/javascript; charset=utf-8", b"public, max-age=300")


def demo_page() -> Handler:
    """``GET /sdk/demo``: the demo page, revalidated on every load."""
    return static_file("demo.html", b"text/html; charset=utf-8", b"no-cache")

"""The baseline: a bare forwarder on the same stack, with none of sluicegate.

uvicorn + httptools + uvloop + aiohttp + orjson: parse the body, forward it, return the answer.
Run it next to the gateway to see what the stack itself costs::

    BARE_UPSTREAM=http://127.0.0.1:9100/v1/chat/completions \\
        .venv/bin/python -m uvicorn bench.bare_forwarder:app --port 4101 \\
        --loop uvloop --http httptools --no-access-log --no-proxy-headers
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import orjson
from yarl import URL

UPSTREAM = URL(os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9100/v1/chat/completions"))
_session: list[aiohttp.ClientSession] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _session.append(aiohttp.ClientSession(headers={"content-type": "application/json"}))
                await send({"type": "lifespan.startup.complete"})
            else:
                await _session[0].close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    message = await receive()
    body = orjson.loads(message["body"])
    async with _session[0].post(UPSTREAM, data=orjson.dumps(body)) as response:
        data = await response.read()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})

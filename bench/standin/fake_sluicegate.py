"""Stand-in for the `sluicegate` CLI, used only to self-test the benchmark harness.

It implements the two sub-commands the harness needs, with the same flags as the real CLI:

    fake_sluicegate.py mock-upstream --host H --port P [--latency-ms MS] [--chunks N]
    fake_sluicegate.py serve --config FILE --host H --port P --workers N [--server S]

The mock is raw asyncio + httptools; the "gateway" is a naive aiohttp proxy with forked
workers sharing one listening socket.  Neither is meant to be fast: the real numbers come
from the real `sluicegate`.  Run it with the sluicegate .venv python (aiohttp, httptools).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time

# ---------------------------------------------------------------- mock upstream


def _completion() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "1. Grow revenue 2. Win logos 3. Cut churn"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 12, "total_tokens": 24},
        }
    ).encode()


def _chunk(i: int, content: str | None, finish: str | None = None, usage: bool = False) -> bytes:
    obj: dict = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-4o-mini",
    }
    if usage:
        obj["choices"] = []
        obj["usage"] = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
    else:
        delta = {"content": content} if content is not None else {}
        if i == 0:
            delta["role"] = "assistant"
        obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_TASKS: set[asyncio.Future[None]] = set()


class MockProtocol(asyncio.Protocol):
    def __init__(self, latency: float, chunks: int) -> None:
        import httptools

        self.latency = latency
        self.chunks = chunks
        self.parser = httptools.HttpRequestParser(self)
        self.body = bytearray()
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        url, body = self.url, bytes(self.body)
        method = self.parser.get_method()
        self.url, self.body = b"", bytearray()
        task = asyncio.ensure_future(self.respond(method, url, body))
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    async def respond(self, method: bytes, url: bytes, body: bytes) -> None:
        t = self.transport
        path = url.split(b"?")[0]
        if path == b"/_mock/health":
            return self._send(200, b'{"ok":true}')
        if path == b"/v1/models":
            return self._send(200, b'{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"}]}')
        if path == b"/v1/embeddings":
            if self.latency:
                await asyncio.sleep(self.latency)
            return self._send(
                200,
                b'{"object":"list","data":[{"object":"embedding","index":0,'
                b'"embedding":[0.1,0.2,0.3]}],"model":"m","usage":{"prompt_tokens":1,"total_tokens":1}}',
            )
        if path != b"/v1/chat/completions" or method != b"POST":
            return self._send(404, b'{"error":{"message":"not found"}}')
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return self._send(400, b'{"error":{"message":"bad json"}}')
        if self.latency:
            await asyncio.sleep(self.latency)
        if t.is_closing():
            return None
        if not req.get("stream"):
            return self._send(200, _completion())
        t.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
        )
        words = ["Grow ", "revenue ", "by ", "20%, ", "win ", "new ", "logos, ", "cut churn."]
        for i in range(self.chunks):
            t.write(_http_chunk(_chunk(i, words[i % len(words)])))
        t.write(_http_chunk(_chunk(self.chunks, None, "stop")))
        if (req.get("stream_options") or {}).get("include_usage"):
            t.write(_http_chunk(_chunk(0, None, usage=True)))
        t.write(_http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return None

    def _send(self, status: int, payload: bytes) -> None:
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}[status]
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (status, reason, len(payload), payload)
        )


def mock_upstream(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    loop = asyncio.new_event_loop()
    srv = loop.run_until_complete(
        loop.create_server(
            lambda: MockProtocol(args.latency_ms / 1000.0, args.chunks), args.host, args.port, backlog=2048
        )
    )
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    try:
        loop.run_forever()
    finally:
        srv.close()


# ---------------------------------------------------------------- naive gateway


def _read_upstream(config: str) -> str:
    # tiny YAML reader for the harness-generated config: the first `base_url:` wins
    with open(config) as f:
        for line in f:
            s = line.strip()
            if s.startswith("base_url:"):
                return s.split(":", 1)[1].strip().rstrip("/")
    raise SystemExit("no base_url in config")


def _worker(sock: socket.socket, base: str) -> None:
    import aiohttp
    from aiohttp import web

    async def main() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def status(_req: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def chat(req: web.Request) -> web.StreamResponse:
            body = await req.read()
            stream = b'"stream":true' in body.replace(b" ", b"")
            async with session.post(
                base + "/chat/completions", data=body, headers={"content-type": "application/json"}
            ) as up:
                if not stream:
                    data = await up.read()
                    return web.Response(body=data, status=up.status, content_type="application/json")
                resp = web.StreamResponse(status=up.status, headers={"content-type": "text/event-stream"})
                await resp.prepare(req)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
                return resp

        app = web.Application()
        app.router.add_get("/api/ai/status", status)
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        await asyncio.Event().wait()

    asyncio.run(main())


def serve(args: argparse.Namespace) -> None:
    base = _read_upstream(args.config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    kids = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _worker(sock, base)
            os._exit(0)
        kids.append(pid)

    def stop(*_a: object) -> None:
        for k in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(k, signal.SIGTERM)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in kids:
        os.wait()


def main() -> None:
    p = argparse.ArgumentParser(prog="fake_sluicegate")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mock-upstream")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--latency-ms", type=float, default=0.0)
    m.add_argument("--chunks", type=int, default=8)
    s = sub.add_parser("serve")
    s.add_argument("--config", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--server", default="uvicorn")
    a = p.parse_args()
    mock_upstream(a) if a.cmd == "mock-upstream" else serve(a)


if __name__ == "__main__":
    main()

"""Hostile and clumsy clients over real sockets: bodies over the limit while still sending,
slow heads and bodies, huge headers, too many connections. Each gets a clear answer in
OpenAI's error shape, never a reset or a socket held forever."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluicegate.testing import GatewayServer, mock_settings

CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GatewayServer]:
    settings = mock_settings(
        data_dir=tmp_path,
        server={"head_timeout_s": 0.5, "body_timeout_s": 0.5, "max_connections": 20},
    )
    with GatewayServer(settings) as gw:
        yield gw


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Read one response (or what arrives before the server closes)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return int(lines[0].split()[1]), headers, body


def error_code(body: bytes) -> str:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return str(error["code"])


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_gets_its_413_while_the_client_is_still_sending(
    server: GatewayServer, announced: bool, close: bool
) -> None:
    """8 MB sent against a 1 MB limit, 10 times: the client always reads the 413 and its body."""
    chunk = b"x" * 65536
    head = CHAT + (b"Connection: close\r\n" if close else b"")
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            if announced:
                sock.sendall(head + b"Content-Length: %d\r\n\r\n" % (128 * len(chunk)))
            else:
                sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
            sent = 0
            try:
                for _ in range(128):
                    piece = chunk if announced else b"%x\r\n%s\r\n" % (len(chunk), chunk)
                    sock.sendall(piece)
                    sent += 1
            except (BrokenPipeError, ConnectionResetError):
                pass  # the gateway has stopped reading: fine, as long as its answer arrived
            status, _headers, body = read_response(sock)
        assert status == 413, (status, sent)
        assert error_code(body) == "request_too_large"


def test_a_head_sent_too_slowly_gets_a_408(server: GatewayServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        status, _, body = read_response(sock)
        assert status == 408 and error_code(body) == "request_timeout"
        assert 0.4 < time.monotonic() - started < 3
        assert sock.recv(10) == b""  # and the socket is closed


def test_a_connection_that_sends_nothing_is_closed(server: GatewayServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        status, _, _ = read_response(sock)
        assert status == 408 and sock.recv(10) == b""


def test_a_body_sent_too_slowly_gets_a_408(server: GatewayServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(CHAT + b"Content-Length: 200\r\n\r\n" + b'{"model": "gpt-4o-mini", ')
        status, _, body = read_response(sock)
        assert status == 408 and error_code(body) == "request_timeout"


def test_a_huge_header_gets_a_431(server: GatewayServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(CHAT + b"X-Junk: " + b"a" * 200_000 + b"\r\n\r\n{}")
        status, _, body = read_response(sock)
        assert status == 431 and error_code(body) == "request_header_fields_too_large"


def test_connections_beyond_the_cap_get_a_503(server: GatewayServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(25)]
    try:
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_response(sock)
        assert status == 503 and headers["retry-after"] == "1"
        assert error_code(body) == "service_unavailable"
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_a_normal_request_still_works_and_keeps_alive(server: GatewayServer) -> None:
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}'
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        for _ in range(3):
            sock.sendall(CHAT + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            status, _, _ = read_response(sock)
            assert status == 200
        time.sleep(0.8)  # idle between requests is the keep-alive timeout's business, not a 408
        sock.sendall(CHAT + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert read_response(sock)[0] == 200


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "connection-close"])
def test_a_client_that_sends_its_whole_body_first_still_reads_the_413(
    server: GatewayServer, close: bool
) -> None:
    """http.client sends all 8 MB before it reads: without a lingering close, the gateway's
    close with unread bytes made the kernel reset the connection, and the client saw
    `Connection reset by peer` instead of the 413 (every time, with `Connection: close`)."""
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"x" * (8 << 20) + b'"}]}'
    headers = {"content-type": "application/json", **({"connection": "close"} if close else {})}
    for _ in range(5):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("POST", "/v1/chat/completions", body, headers)
            response = conn.getresponse()
            assert response.status == 413
            assert error_code(response.read()) == "request_too_large"
        finally:
            conn.close()

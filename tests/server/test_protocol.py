"""The HTTP protocol `sluicegate serve` runs: a response's writes of one loop turn leave as one."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from sluicegate.server.protocol import TurnBufferedTransport
from sluicegate.testing import GatewayServer, mock_settings


class RecordingTransport:
    """Just enough of an asyncio transport to see what reaches the socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)


async def test_writes_of_one_turn_leave_as_one_at_the_end_of_the_turn() -> None:
    raw = RecordingTransport()
    buffered = TurnBufferedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    buffered.write(b"HTTP/1.1 200 OK\r\n\r\n")
    buffered.write(b"body")
    assert raw.writes == []
    assert buffered.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    buffered.write(b"next")  # a later turn: a write of its own
    await asyncio.sleep(0)
    assert raw.writes[-1] == b"next"


async def test_flush_sends_at_once_and_the_turn_end_then_sends_nothing_more() -> None:
    raw = RecordingTransport()
    buffered = TurnBufferedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    buffered.write(b"a")
    buffered.flush()
    assert raw.writes == [b"a"]
    await asyncio.sleep(0)
    assert raw.writes == [b"a"]


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    raw = RecordingTransport()
    buffered = TurnBufferedTransport(raw, loop)  # type: ignore[arg-type]
    buffered.write(b"last words")
    buffered.close()
    assert raw.writes == [b"last words"] and raw.closed
    await asyncio.sleep(0)  # the turn's flush finds the transport closed and writes nothing
    assert raw.writes == [b"last words"]

    raw = RecordingTransport()
    buffered = TurnBufferedTransport(raw, loop)  # type: ignore[arg-type]
    buffered.write(b"never sent")
    buffered.abort()
    await asyncio.sleep(0)
    assert raw.writes == [] and raw.aborted


async def test_the_rest_of_the_transport_is_passed_through() -> None:
    raw = RecordingTransport()
    buffered = TurnBufferedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert buffered.get_extra_info("peername") == ("127.0.0.1", 1)
    buffered.set_write_buffer_limits(10, 5)
    assert raw.limits == (10, 5)
    assert not buffered.is_closing()


def _exchange(port: int, request: bytes) -> list[bytes]:
    """Send ``request`` and collect the segments the server sends back until it has answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        pieces: list[bytes] = []
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            piece = sock.recv(65536)
            if not piece:
                break
            pieces.append(piece)
            data += piece
        return pieces


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.parametrize("path", ["/v1/models", "/api/ai/status"])
def test_a_whole_response_arrives_in_one_write(path: str) -> None:
    with GatewayServer(mock_settings()) as server:
        pieces = _exchange(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    # One write of head and body together; the peer sees them in one read on loopback.
    assert len(pieces) == 1
    assert pieces[0].startswith(b"HTTP/1.1 200 OK\r\n")


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with (
        GatewayServer(mock_settings()) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        for _ in range(3):
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
                data += sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200 OK")

"""Tests for sluicegate.faults: the TCP fault proxy, in front of a small echo server."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from sluicegate.faults import FaultProxy


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with FaultProxy("127.0.0.1", server.server_address[1], seed=1) as fault_proxy:
        yield fault_proxy
    server.shutdown()
    server.server_close()


def echo(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        data = b""
        while len(data) < len(payload):
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
        return data


def test_a_plain_pipe(proxy: FaultProxy) -> None:
    assert echo(proxy.port, b"hello") == b"hello"


def test_latency_each_way(proxy: FaultProxy) -> None:
    proxy.set(latency_ms=100)
    started = time.monotonic()
    assert echo(proxy.port, b"slow") == b"slow"
    assert time.monotonic() - started >= 0.2


def test_bandwidth(proxy: FaultProxy) -> None:
    proxy.set(bandwidth_bps=20_000)
    started = time.monotonic()
    assert echo(proxy.port, b"x" * 4000) == b"x" * 4000
    assert time.monotonic() - started >= 0.35  # 4 kB each way at 20 kB/s


def test_close_after_bytes(proxy: FaultProxy) -> None:
    proxy.set(close_after_bytes=10)
    assert echo(proxy.port, b"0123456789abcdef") == b""  # the request used the 10 bytes up


def test_blackhole_holds_the_connection(proxy: FaultProxy) -> None:
    proxy.set(blackhole=True)
    with pytest.raises(TimeoutError):
        echo(proxy.port, b"anyone?", timeout=0.3)
    proxy.clear()
    assert echo(proxy.port, b"back") == b"back"


def test_reset_and_cut(proxy: FaultProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"a")
        assert sock.recv(10) == b"a"
        proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"b")
            sock.recv(10)
            sock.sendall(b"c")
            sock.recv(10)
    proxy.cut()
    with pytest.raises(ConnectionRefusedError):
        echo(proxy.port, b"x")
    proxy.restore()
    assert echo(proxy.port, b"again") == b"again"


def test_only_loopback_targets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("10.0.0.1", 80)

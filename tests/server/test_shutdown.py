"""Graceful shutdown of `sluicegate serve`: on SIGTERM it stops accepting, lets in-flight
streams finish up to the drain timeout, flushes the cache's pending SQL writes, and exits."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sluicegate.server.app import create_app
from sluicegate.testing import free_port, mock_settings


def start(tmp_path: Path, drain_s: float, chunks: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = tmp_path / "sluicegate.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\n"
        f"server: {{drain_timeout_s: {drain_s}}}\n"
        "ledger: {enabled: false}\n"
        "providers:\n  mock:\n    kind: mock\n"
        f"    mock: {{chunks: {chunks}, chunk_interval_ms: 100}}\n"
        "models:\n  gpt-4o-mini: {provider: mock}\n"
        "cache:\n  memory: {enabled: false}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "sluicegate", "serve", "--config", str(config), "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--workers", "1"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, port
        except OSError:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)


def stream(port: int, into: list[bytes], started: threading.Event) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"drain me"}]}'
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    try:
        while True:
            piece = response.read1(65536)
            if not piece:
                break
            into.append(piece)
            started.set()
    except (OSError, http.client.HTTPException):
        pass
    finally:
        started.set()
        conn.close()


def begin_stream(port: int) -> tuple[list[bytes], threading.Thread]:
    """A stream read in a thread; returns once its first bytes have arrived."""
    received: list[bytes] = []
    started = threading.Event()
    reader = threading.Thread(target=stream, args=(port, received, started))
    reader.start()
    assert started.wait(10)
    return received, reader


def cached_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "sluicegate.db") as db:  # the embedded database, in data_dir
        return int(db.execute("SELECT count(*) FROM cache_entries").fetchone()[0])


def test_sigterm_finishes_the_stream_stops_accepting_and_flushes_the_cache(tmp_path: Path) -> None:
    process, port = start(tmp_path, drain_s=10, chunks=20)  # a stream of about 2 s
    received, reader = begin_stream(port)
    try:
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        reader.join(15)
        # uvicorn re-raises the signal once it has shut down cleanly: the exit status says SIGTERM.
        assert process.wait(15) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    assert b"".join(received).rstrip().endswith(b"data: [DONE]")
    assert cached_rows(tmp_path) == 1  # the stored stream reached SQL before the exit


def test_the_drain_timeout_bounds_the_wait(tmp_path: Path) -> None:
    process, port = start(tmp_path, drain_s=1, chunks=100)  # a stream of about 10 s
    received, reader = begin_stream(port)
    try:
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        assert time.monotonic() - stopping < 5
        reader.join(15)
    finally:
        if process.poll() is None:
            process.kill()
    assert not b"".join(received).rstrip().endswith(b"data: [DONE]")
    assert cached_rows(tmp_path) == 0  # a cut stream is never stored


async def test_closing_the_stores_is_bounded_by_the_drain_timeout(tmp_path: Path) -> None:
    """A database that hangs at shutdown (the last ledger flush, the connections) does not hold
    the worker for minutes: the lifespan's shutdown completes after server.drain_timeout_s."""
    app = create_app(mock_settings(data_dir=tmp_path, server={"drain_timeout_s": 0.2}))

    async def hangs() -> None:
        await asyncio.sleep(3600)

    app.gateway.aclose = hangs  # type: ignore[method-assign]
    messages = iter([{"type": "lifespan.shutdown"}])
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return next(messages)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    started = time.monotonic()
    await app({"type": "lifespan"}, receive, send)  # type: ignore[arg-type]
    assert sent == [{"type": "lifespan.shutdown.complete"}]
    assert time.monotonic() - started < 2.0

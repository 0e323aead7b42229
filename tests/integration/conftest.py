"""Gateway servers as real processes (``python -m sluicegate serve``), and a private Redis server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.conftest import service_missing


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Response:
    """An HTTP response, read whole."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return orjson.loads(self.content)

    @property
    def text(self) -> str:
        """The body as text."""
        return self.content.decode("utf-8", "replace")


def http(method: str, url: str, json: Any = None, headers: dict[str, str] | None = None) -> Response:
    """One HTTP request with the standard library; errors are responses too."""
    data = orjson.dumps(json) if json is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={**(headers or {})})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


def post(url: str, json: Any = None, headers: dict[str, str] | None = None) -> Response:
    """POST ``json``."""
    return http("POST", url, json, headers)


def get(url: str, headers: dict[str, str] | None = None) -> Response:
    """GET."""
    return http("GET", url, None, headers)


@dataclass
class GatewayProcess:
    """One `sluicegate serve` process that this test started."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL), by the PID we started."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _wait_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if get(url + "/api/ai/status").status_code in (200, 503):
                return
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not come up in 40 s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def gateway_processes(tmp_path: Path) -> Iterator[Callable[..., list[GatewayProcess]]]:
    """Start ``count`` gateway processes on one config; all are stopped after the test."""
    started: list[GatewayProcess] = []

    def start(config: dict[str, Any], count: int = 1, workers: int = 1) -> list[GatewayProcess]:
        path = tmp_path / f"sluicegate-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
        servers = []
        for index in range(count):
            port = free_port()
            log = tmp_path / f"gateway-{len(started) + index}.log"
            command = [sys.executable, "-m", "sluicegate", "serve", "--config", str(path)]
            command += ["--port", str(port), "--workers", str(workers)]
            with log.open("wb") as out:
                process = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
                )
            server = GatewayProcess(process, f"http://127.0.0.1:{port}", log)
            started.append(server)
            servers.append(server)
        for server in servers:
            _wait_up(server.url, server.process, server.log)
        return servers

    yield start
    for server in started:
        server.stop()


@dataclass
class PrivateRedis:
    """A redis-server of this test's own, so that it may be paused (SIGSTOP) without harm to others."""

    process: subprocess.Popen[bytes]
    url: str

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open and nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the server."""
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A fresh redis-server on a free port, started and stopped (by PID) by this test."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing("redis-server", "PATH", FileNotFoundError("redis-server"))
        raise AssertionError("unreachable")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            break
        time.sleep(0.05)
    redis = PrivateRedis(process, f"redis://127.0.0.1:{port}/0")
    yield redis
    redis.resume()
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)

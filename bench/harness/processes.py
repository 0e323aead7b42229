"""Starting, watching and stopping the processes the harness runs, and talking to them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .common import ROOT, BenchError
from .procfs import alive, proc_tree


class ProcessRegistry:
    """Every process the harness starts, each in its own session (process group)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a new session with stdout and stderr in ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "wb")  # noqa: SIM115 - closed when the child is reaped
        try:
            p = subprocess.Popen(
                cmd,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(ROOT),
            )
        finally:
            fh.close()
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen[bytes], grace: float = 8.0) -> None:
        """Stop ``p`` and everything it started: SIGTERM to its group, then SIGKILL."""
        tree = proc_tree(p.pid) if p.poll() is None else []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)
                try:
                    p.wait(timeout=grace if sig == signal.SIGTERM else 5)
                except subprocess.TimeoutExpired:
                    continue
            break
        # descendants that left the group (or outlived the leader): kill them by PID
        for pid in tree:
            if pid != p.pid and alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        # the group itself, in case the leader died first and left children behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        self.procs = [(n, q) for (n, q) in self.procs if q is not p]

    def stop_all(self) -> None:
        """Stop every process still registered, newest first."""
        for _name, p in list(reversed(self.procs)):
            self.stop(p, grace=5.0)


REG = ProcessRegistry()


def on_signal(signum: int, _frame: Any) -> None:
    """Turn SIGINT/SIGTERM/SIGHUP into SystemExit, so that clean-up runs."""
    raise SystemExit(128 + signum)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server: byte-compiled modules, no proxies, plus ``extra``."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # servers must use .pyc files (see PEERS.md)
    env.pop("VIRTUAL_ENV", None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    if extra:
        env.update(extra)
    return env


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request without proxies: (status, lower-cased headers, body)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def log_tail(path: Path, n: int = 25) -> str:
    """The last ``n`` lines of a log, indented for an error message."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join("    | " + ln for ln in lines[-n:])


def wait_healthy(name: str, p: subprocess.Popen[bytes], url: str, timeout: float, log_path: Path) -> float:
    """Poll ``url`` until it answers 200; seconds waited. `BenchError` if ``p`` dies or time runs out."""
    t = time.monotonic()
    last = "no answer"
    while time.monotonic() - t < timeout:
        if p.poll() is not None:
            raise BenchError(
                f"{name} exited with code {p.returncode} before it was healthy "
                f"({url}); log {log_path}:\n{log_tail(log_path)}"
            )
        try:
            st, _h, _b = http("GET", url, timeout=2.0)
            if st == 200:
                return time.monotonic() - t
            last = f"HTTP {st}"
        except (OSError, urllib.error.URLError) as e:
            last = str(e)
        time.sleep(0.2)
    raise BenchError(
        f"{name} not healthy after {timeout:.0f}s at {url} (last: {last}); "
        f"log {log_path}:\n{log_tail(log_path)}"
    )


def run_capture(cmd: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a short command to completion: (exit code, stdout+stderr); -1 if it cannot run."""
    try:
        r = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return r.returncode, (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)

#!/usr/bin/env python3
"""Benchmark harness: sluicegate vs the LiteLLM proxy, both in front of `sluicegate mock-upstream`.

Standard library only.  Run it with the project's interpreter:

    .venv/bin/python bench/run.py            # full run (make bench), about 13-15 minutes
    .venv/bin/python bench/run.py --quick    # about 1-1.5 minutes, c=50 only, 1 round

It writes bench/RESULTS.md (text after the `<!-- notes -->` marker is kept) and
bench/results.json.  See bench/README.md for what every cell means.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as _dt
import json
import os
import re
import resource
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
LITELLM_VENV = BENCH / ".litellm-venv"
LITELLM_PIN = "1.109.1"
LITELLM_FALLBACK = "1.106.2"
LITELLM_OVERRIDES = ("certifi==2026.10.18", "litellm-proxy-extras==0.4.110")
NOTES_MARKER = "<!-- notes -->"
PROMPT = "Suggest three OKRs for a sales team"
SLUICEGATE_TOKEN = "sk-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# Acceptance targets (issue text).
TARGET_RPS_0MS_C50 = 8000.0
TARGET_RATIO_0MS_C50 = 40.0
TARGET_OVERHEAD_P50_MS = 0.5
TARGET_OVERHEAD_P99_MS = 3.0
TARGET_RATIO_STREAM_C50 = 10.0
TARGET_RSS_MB = 150.0
NOISE_PCT = 15.0  # CPU used by processes the harness did not start, in % of one core

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- processes


class ProcessRegistry:
    """Every process the harness starts, each in its own session (process group)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
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
            if pid != p.pid and _alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        # the group itself, in case the leader died first and left children behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        self.procs = [(n, q) for (n, q) in self.procs if q is not p]

    def stop_all(self) -> None:
        for _name, p in list(reversed(self.procs)):
            self.stop(p, grace=5.0)


REG = ProcessRegistry()


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


# --------------------------------------------------------------------------- /proc


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime ticks) of one process, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(rest[1]), int(rest[11]) + int(rest[12])


def _all_stats() -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = _stat(int(d))
            if s is not None:
                out[int(d)] = s
    return out


def proc_tree(root: int, stats: dict[int, tuple[int, int]] | None = None) -> list[int]:
    stats = stats if stats is not None else _all_stats()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _t) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out.append(pid)
        todo.extend(kids.get(pid, []))
    return sorted(out)


def tree_cpu(root: int) -> dict[int, int]:
    """CPU ticks (user+system) of every live process in the tree of root."""
    stats = _all_stats()
    return {pid: stats[pid][1] for pid in proc_tree(root, stats)}


def harness_cpu_s(roots: list[int]) -> float:
    """CPU seconds of the process trees of several roots, from one scan of /proc."""
    stats = _all_stats()
    pids: set[int] = set()
    for r in roots:
        pids.update(proc_tree(r, stats))
    return sum(stats[p][1] for p in pids) / CLK_TCK


def system_busy_s() -> float:
    """Busy CPU seconds of the whole machine (all cores) from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_delta(before: dict[int, int], after: dict[int, int]) -> dict[int, float]:
    """Seconds of CPU per PID between two snapshots (new PIDs count from zero)."""
    return {pid: (t - before.get(pid, 0)) / CLK_TCK for pid, t in after.items()}


def vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return "?"


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
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
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def log_tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join("    | " + ln for ln in lines[-n:])


def wait_healthy(name: str, p: subprocess.Popen[bytes], url: str, timeout: float, log_path: Path) -> float:
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


# --------------------------------------------------------------------------- wrk

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
_TIME_RE = r"([0-9.]+)(us|ms|s|m|h)"


def parse_time_ms(s: str) -> float | None:
    m = re.fullmatch(_TIME_RE, s.strip())
    return float(m.group(1)) * _UNIT_MS[m.group(2)] if m else None


def parse_wrk(out: str) -> dict[str, Any]:
    """Parse wrk 4.x text output (run with --latency) plus our Lua done() JSON line."""
    r: dict[str, Any] = {
        "requests": 0,
        "duration_s": None,
        "rps": 0.0,
        "p50_ms": None,
        "p75_ms": None,
        "p90_ms": None,
        "p99_ms": None,
        "avg_ms": None,
        "max_ms": None,
        "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0},
    }
    m = re.search(r"^\s*Latency\s+" + _TIME_RE + r"\s+" + _TIME_RE + r"\s+" + _TIME_RE, out, re.M)
    if m:
        r["avg_ms"] = float(m.group(1)) * _UNIT_MS[m.group(2)]
        r["max_ms"] = float(m.group(5)) * _UNIT_MS[m.group(6)]
    for pct, key in (("50", "p50_ms"), ("75", "p75_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}(?:\.0+)?%\s+{_TIME_RE}\s*$", out, re.M)
        if m:
            r[key] = float(m.group(1)) * _UNIT_MS[m.group(2)]
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m|h)", out, re.M)
    if m:
        r["requests"] = int(m.group(1))
        r["duration_s"] = float(m.group(2)) * _UNIT_MS[m.group(3)] / 1000.0
    m = re.search(r"^Requests/sec:\s*([0-9.]+)", out, re.M)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        for i, k in enumerate(("connect", "read", "write", "timeout")):
            r["errors"][k] = int(m.group(i + 1))
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if m:
        r["errors"]["non2xx"] = int(m.group(1))
    # exact microsecond percentiles from the Lua done() hook, when present
    m = re.search(r"^BENCH_JSON (\{.*\})\s*$", out, re.M)
    if m:
        try:
            j = json.loads(m.group(1))
            r["lua"] = j
            if j.get("requests"):
                for key, lk in (("p50_ms", "p50_us"), ("p90_ms", "p90_us"), ("p99_ms", "p99_us")):
                    r[key] = j[lk] / 1000.0
                r["p999_ms"] = j["p999_us"] / 1000.0
        except (ValueError, KeyError):
            pass
    r["error_count"] = sum(r["errors"].values())
    return r


LUA_TEMPLATE = """-- generated by bench/run.py
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"min_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.min, latency.max, latency.mean, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
"""


def lua_quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_lua(name: str, body: dict[str, Any], token: str) -> Path:
    path = WORK / f"{name}.lua"
    text = json.dumps(body, separators=(",", ":"))
    path.write_text(LUA_TEMPLATE.format(body=lua_quote(text), token=token))
    return path


# --------------------------------------------------------------------------- systems


class System:
    """One server under test (or the mock itself, for the mock-direct rows)."""

    def __init__(self, key: str, label: str, kind: str, token: str) -> None:
        self.key, self.label, self.kind, self.token = key, label, kind, token
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.cmd: list[str] = []
        self.log_path: Path | None = None
        self.start_s: float | None = None
        self.lua: dict[str, Path] = {}
        self.hwm_kb: dict[int, tuple[int, str]] = {}  # pid -> (VmHWM kB, cmdline)
        self.cpu_seen: dict[int, float] = {}  # pid -> CPU seconds used in measured cells

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sample_rss(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in proc_tree(self.pid):
            kb = vm_hwm_kb(pid)
            if kb is not None and kb > self.hwm_kb.get(pid, (0, ""))[0]:
                self.hwm_kb[pid] = (kb, cmdline(pid)[:120])


# --------------------------------------------------------------------------- LiteLLM install


def litellm_python() -> Path:
    return LITELLM_VENV / "bin" / "python"


def litellm_version() -> str | None:
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        return None
    rc, out = run_capture(
        [str(litellm_python()), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        timeout=60,
    )
    return out.strip().splitlines()[-1] if rc == 0 and out.strip() else None


def ensure_litellm() -> tuple[str, list[str]]:
    """Install LiteLLM into bench/.litellm-venv if needed; returns (version, notes)."""
    notes: list[str] = []
    ver = litellm_version()
    if ver is None:
        log(f"installing litellm[proxy]=={LITELLM_PIN} into {LITELLM_VENV} (one-time)")
        base_py = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        py = str(base_py if base_py.exists() else Path(sys.executable))
        uv = shutil.which("uv")
        if LITELLM_VENV.exists():
            shutil.rmtree(LITELLM_VENV)
        if uv:
            rc, out = run_capture([uv, "venv", "--python", py, str(LITELLM_VENV)], timeout=300)
        else:
            rc, out = run_capture([py, "-m", "venv", str(LITELLM_VENV)], timeout=300)
            if rc == 0:
                rc, out = run_capture(
                    [str(litellm_python()), "-m", "pip", "install", "-q", "uv"], timeout=600
                )
                uv = str(LITELLM_VENV / "bin" / "uv")
        if rc != 0 or not uv:
            raise BenchError(f"cannot create {LITELLM_VENV}: {out[-2000:]}")
        ovr = WORK / "litellm-overrides.txt"
        ovr.write_text("\n".join(LITELLM_OVERRIDES) + "\n")
        env = dict(os.environ, VIRTUAL_ENV=str(LITELLM_VENV))
        base = [uv, "pip", "install", "--python", str(litellm_python())]
        cmd = [*base, "--override", str(ovr), f"litellm[proxy]=={LITELLM_PIN}"]
        rc, out = run_capture(cmd, timeout=900, env=env)
        notes.append("install: " + shlex.join(cmd))
        if rc != 0:
            log(f"litellm {LITELLM_PIN} with overrides failed; falling back to {LITELLM_FALLBACK}")
            notes.append(f"{LITELLM_PIN} failed: {out[-400:]}")
            cmd = [*base, f"litellm[proxy]=={LITELLM_FALLBACK}"]
            rc, out = run_capture(cmd, timeout=900, env=env)
            notes.append("install: " + shlex.join(cmd))
            if rc != 0:
                raise BenchError(f"cannot install LiteLLM: {out[-2000:]}")
        (LITELLM_VENV / ".bench-compiled").unlink(missing_ok=True)
        ver = litellm_version()
        if ver is None:
            raise BenchError("LiteLLM installed but `import litellm` metadata lookup fails")
    marker = LITELLM_VENV / ".bench-compiled"
    if not marker.exists():
        log("byte-compiling LiteLLM's site-packages (compileall)")
        rc, sp = run_capture(
            [str(litellm_python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        )
        env = server_env()
        rc, out = run_capture(
            [str(litellm_python()), "-m", "compileall", "-q", "-j", "0", sp.strip()], timeout=900, env=env
        )
        # compileall exits 1 when some vendored test file does not compile; that is harmless
        notes.append(f"compileall exit {rc}")
        marker.write_text(f"compileall exit {rc}\n")
    return ver, notes


# --------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.quick: bool = args.quick
        self.cells: list[dict[str, Any]] = []
        self.commands: list[str] = []
        self.wrk_commands: list[str] = []
        self.smoke: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.idle_check_pct: float | None = None
        self.noise: list[str] = []  # runs during which other processes used > NOISE_PCT of a core
        self.systems_meta: dict[str, dict[str, Any]] = {}
        self.mocks: dict[str, System] = {}
        self.deadline = T0 + args.max_minutes * 60.0
        self.sg_cmd = shlex.split(args.sluicegate_cmd)
        self.mock_cmd = shlex.split(args.mock_cmd) if args.mock_cmd else self.sg_cmd
        self.litellm_key = "sk-bench-" + secrets.token_hex(24)
        self.litellm_version: str | None = None
        self.litellm_notes: list[str] = []
        self.servers: list[str | None] = (
            [s.strip() for s in args.servers.split(",") if s.strip()] if args.servers else [None]
        )

    # ---------------------------------------------------------------- starting things

    def start_mock(self, name: str, latency_ms: int, chunks: int) -> System:
        port = free_port()
        s = System(name, f"mock direct ({latency_ms} ms)", "mock", SLUICEGATE_TOKEN)
        s.cmd = [
            *self.mock_cmd,
            "mock-upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
            "--chunks",
            str(chunks),
        ]
        s.url = f"http://127.0.0.1:{port}"
        s.log_path = WORK / "logs" / f"{name}.log"
        self.commands.append(shlex.join(s.cmd))
        t = time.monotonic()
        s.proc = REG.start(name, s.cmd, server_env(), s.log_path)
        wait_healthy(name, s.proc, s.url + "/_mock/health", 30, s.log_path)
        s.start_s = time.monotonic() - t
        log(f"{name} up on :{port} (pid {s.pid}, {s.start_s:.1f}s)")
        return s

    def start_sluicegate(self, key: str, server: str | None, mock: System) -> System:
        port = free_port()
        label = "sluicegate" + (f" [{server}]" if server else "")
        s = System(key, label, "sluicegate", SLUICEGATE_TOKEN)
        cfg = WORK / f"{key}.yaml"
        cfg.write_text(
            "providers:\n  bench-mock:\n    kind: openai\n"
            f"    base_url: {mock.url}/v1\n    api_key_env: null\n"
            "models:\n  gpt-4o-mini:\n    provider: bench-mock\n"
        )
        s.cmd = [
            *self.sg_cmd,
            "serve",
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(self.a.workers),
        ]
        if server:
            s.cmd += ["--server", server]
        s.url = f"http://127.0.0.1:{port}"
        s.log_path = WORK / "logs" / f"{key}.log"
        self.commands.append(shlex.join(s.cmd))
        t = time.monotonic()
        s.proc = REG.start(key, s.cmd, server_env(), s.log_path)
        return self._await(s, s.url + "/api/ai/status", 60, t)

    def start_litellm(self, key: str, mock: System) -> System:
        port = free_port()
        s = System(key, f"litellm {self.litellm_version}", "litellm", self.litellm_key)
        cfg = WORK / f"{key}.yaml"
        cfg.write_text(
            "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n"
            "      model: openai/gpt-4o-mini\n"
            f"      api_base: {mock.url}/v1\n      api_key: sk-mock\n"
        )
        s.cmd = [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(self.a.workers),
        ]
        env = server_env(
            {
                "LITELLM_MASTER_KEY": self.litellm_key,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "LITELLM_MODE": "PRODUCTION",
                "LITELLM_TELEMETRY": "False",
                "NO_DOCS": "True",
                "VIRTUAL_ENV": str(LITELLM_VENV),
                "PATH": f"{LITELLM_VENV / 'bin'}:{os.environ.get('PATH', '')}",
            }
        )
        s.url = f"http://127.0.0.1:{port}"
        s.log_path = WORK / "logs" / f"{key}.log"
        self.commands.append(
            "LITELLM_MASTER_KEY=sk-bench-<random> LITELLM_LOCAL_MODEL_COST_MAP=True "
            "LITELLM_LOG=ERROR LITELLM_MODE=PRODUCTION LITELLM_TELEMETRY=False NO_DOCS=True "
            + shlex.join(s.cmd)
        )
        t = time.monotonic()
        s.proc = REG.start(key, s.cmd, env, s.log_path)
        return self._await(s, s.url + "/health/liveliness", self.a.litellm_start_timeout, t)

    def _await(self, s: System, health: str, timeout: float, t: float) -> System:
        assert s.proc is not None
        assert s.log_path is not None
        wait_healthy(s.label, s.proc, health, timeout, s.log_path)
        s.start_s = time.monotonic() - t
        # with several workers the first healthy answer may come from one worker only:
        # give the others a moment, then report how many processes the tree has.
        time.sleep(1.0 if s.kind == "sluicegate" else 2.0)
        s.sample_rss()
        log(f"{s.label} up on {s.url} (pid {s.pid}, tree {proc_tree(s.pid)}, healthy after {s.start_s:.1f}s)")
        return s

    def stop(self, s: System) -> None:
        if s.proc is not None:
            s.sample_rss()
            meta = self.systems_meta.setdefault(s.label, {"kind": s.kind, "instances": []})
            meta["instances"].append(
                {
                    "key": s.key,
                    "cmd": shlex.join(s.cmd),
                    "start_to_healthy_s": s.start_s,
                    "processes": [
                        {
                            "pid": pid,
                            "vmhwm_mb": round(kb / 1024, 1),
                            "cmd": c,
                            "cpu_s_measured": round(s.cpu_seen.get(pid, 0.0), 2),
                            "role": "master" if pid == s.pid else "child",
                        }
                        for pid, (kb, c) in sorted(s.hwm_kb.items())
                    ],
                }
            )
            REG.stop(s.proc)
            s.proc = None

    # ---------------------------------------------------------------- smoke check

    def smoke_check(self, s: System, scenario: str, body: dict[str, Any]) -> None:
        url = s.url + "/v1/chat/completions"
        rec: dict[str, Any] = {"system": s.label, "scenario": scenario}
        try:
            st, hdr, data = http(
                "POST",
                url,
                json.dumps(body).encode(),
                {"Content-Type": "application/json", "Authorization": f"Bearer {s.token}"},
                timeout=30,
            )
            rec["status"] = st
            rec["content_type"] = hdr.get("content-type", "")
            ok = st == 200
            if body.get("stream"):
                events = [ln for ln in data.decode(errors="replace").splitlines() if ln.startswith("data:")]
                rec["sse_events"] = len(events)
                rec["done"] = bool(events) and events[-1].strip() == "data: [DONE]"
                ok = ok and rec["done"]
            else:
                try:
                    j = json.loads(data)
                    rec["content"] = j["choices"][0]["message"]["content"][:60]
                except (ValueError, KeyError, IndexError, TypeError):
                    ok = False
            if not ok:
                rec["body"] = data[:300].decode(errors="replace")
            rec["ok"] = ok
        except (OSError, urllib.error.URLError) as e:
            rec.update(ok=False, error=str(e))
        self.smoke.append(rec)
        if not rec["ok"]:
            msg = f"smoke request failed: {s.label} / {scenario}: {json.dumps(rec)[:400]}"
            self.problems.append(msg)
            log("WARNING " + msg)

    # ---------------------------------------------------------------- one wrk run

    def settle(self, quiet_pct: float = 5.0, limit: float = 15.0) -> None:
        """Wait until everything the harness started is idle (a server may still be draining
        requests that the previous wrk run queued but no longer waits for)."""
        roots = [p.pid for _n, p in REG.procs if p.poll() is None]
        t_end = time.monotonic() + limit
        prev = harness_cpu_s(roots)
        while time.monotonic() < t_end:
            time.sleep(0.25)
            cur = harness_cpu_s(roots)
            if (cur - prev) / 0.25 * 100 < quiet_pct:
                return
            prev = cur
        self.problems.append(f"processes still busy {limit:.0f}s after a run (settle timeout)")

    def wrk(
        self,
        s: System,
        scenario: str,
        lua: Path,
        conc: int,
        dur: float,
        *,
        record: bool = True,
        rnd: int = 0,
        extra: str = "",
    ) -> dict[str, Any] | None:
        if time.monotonic() > self.deadline:
            if record:
                self.problems.append(
                    f"time budget (--max-minutes) exhausted: skipped {s.label} {scenario} c={conc}"
                )
            return None
        cmd = [
            "wrk",
            "-t1",
            f"-c{conc}",
            f"-d{dur:g}s",
            "--timeout",
            f"{self.a.wrk_timeout:g}s",
            "--latency",
            "-s",
            str(lua),
            s.url + "/v1/chat/completions",
        ]
        self.settle()
        own_roots = [p.pid for _n, p in REG.procs if p.pid != s.pid and p.poll() is None]
        own0 = harness_cpu_s(own_roots)
        sys0, kids0, self0 = system_busy_s(), children_cpu_s(), self_cpu_s()
        before = tree_cpu(s.pid)
        rc, out = run_capture(cmd, timeout=dur + self.a.wrk_timeout + 30)
        after = tree_cpu(s.pid)
        sys1, kids1, self1 = system_busy_s(), children_cpu_s(), self_cpu_s()
        own1 = harness_cpu_s(own_roots)
        if not record:
            return None
        self.wrk_commands.append(shlex.join(cmd))
        r = parse_wrk(out)
        per_pid = cpu_delta(before, after)
        for pid, sec in per_pid.items():
            s.cpu_seen[pid] = s.cpu_seen.get(pid, 0.0) + sec
        cpu = sum(per_pid.values())
        # CPU that neither the server, the mocks, wrk nor this script used: other work on the machine
        foreign = (sys1 - sys0) - cpu - (own1 - own0) - (kids1 - kids0) - (self1 - self0)
        wall = r["duration_s"] or dur
        r["foreign_cpu_pct"] = round(max(0.0, foreign) / wall * 100, 1)
        r["sibling_cpu_pct"] = round(max(0.0, own1 - own0) / wall * 100, 1)  # our other servers, mocks
        s.sample_rss()
        r.update(
            system=s.label,
            kind=s.kind,
            scenario=scenario,
            concurrency=conc,
            round=rnd,
            duration_s_requested=dur,
            wrk_exit=rc,
            cpu_s=round(cpu, 3),
            cpu_s_per_1k=(round(cpu / r["requests"] * 1000, 4) if r["requests"] else None),
            cpu_by_pid={str(p): round(v, 3) for p, v in per_pid.items()},
            group=extra,
            server_alive=(s.proc is not None and s.proc.poll() is None),
        )
        if rc != 0 or r["requests"] == 0:
            r["wrk_output"] = out[-1500:]
        flags = []
        if rc != 0:
            flags.append(f"wrk exit {rc}")
        if r["requests"] == 0:
            flags.append("no requests completed")
        if r["error_count"]:
            flags.append("errors " + ", ".join(f"{k}={v}" for k, v in r["errors"].items() if v))
        if not r["server_alive"]:
            flags.append("server process died")
        r["flags"] = flags
        if r["foreign_cpu_pct"] > NOISE_PCT:
            self.noise.append(f"{r['foreign_cpu_pct']:.0f}% during {s.label} {scenario} c={conc} round {rnd}")
        self.cells.append(r)
        p50 = f"{r['p50_ms']:.3f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.3f}" if r["p99_ms"] is not None else "-"
        log(
            f"  {scenario:10s} c={conc:<3d} r{rnd} {s.label:28s} {r['rps']:10.1f} req/s  p50 {p50} ms  "
            f"p99 {p99} ms  cpu/1k {r['cpu_s_per_1k']}" + (f"  FLAGGED: {'; '.join(flags)}" if flags else "")
        )
        if flags:
            self.problems.append(f"{s.label} {scenario} c={conc} round {rnd}: {'; '.join(flags)}")
        return r

    def run_cells(
        self,
        scenario: str,
        systems: list[System],
        body: dict[str, Any],
        mock: System | None,
        mock_every_round: bool,
        concs: list[int],
        group: str = "",
    ) -> None:
        for s in systems:
            if scenario not in s.lua:
                s.lua[scenario] = write_lua(f"{s.key}-{scenario}", body, s.token)
            self.smoke_check(s, scenario, body)
            # warm-up (not recorded): first requests open pools, fill caches, import lazily
            self.wrk(s, scenario, s.lua[scenario], min(10, max(concs)), self.a.warmup, record=False)
        if mock is not None:
            mlua = write_lua(f"mock-{scenario}", body, SLUICEGATE_TOKEN)
            self.smoke_check(mock, scenario, body)
        for conc in concs:
            for rnd in range(self.a.rounds):
                for s in systems:  # A B A B ... so drift hits every system alike
                    self.wrk(s, scenario, s.lua[scenario], conc, self.a.duration, rnd=rnd, extra=group)
                if mock is not None and (mock_every_round or rnd == 0):
                    self.wrk(mock, scenario, mlua, conc, self.a.mock_duration, rnd=rnd, extra=group)

    # ---------------------------------------------------------------- phases

    def run(self) -> int:
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "logs").mkdir(exist_ok=True)
        if not shutil.which("wrk"):
            raise BenchError("wrk not found: apt-get update && apt-get install -y wrk")
        if not shutil.which(self.sg_cmd[0]) and not Path(self.sg_cmd[0]).exists():
            raise BenchError(f"sluicegate CLI not found: {self.sg_cmd[0]} (create the .venv first)")
        if not self.a.no_litellm:
            self.litellm_version, self.litellm_notes = ensure_litellm()
            log(f"LiteLLM {self.litellm_version} ready in {LITELLM_VENV}")
        self.check_idle()
        concs = self.a.concurrency
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
        sbody = dict(body, stream=True)

        mock0 = self.start_mock("mock-0ms", 0, self.a.chunks)
        mock50 = self.start_mock("mock-50ms", 50, self.a.chunks)
        self.mocks = {"0": mock0, "50": mock50}

        # ---- phase 1: upstream at 0 ms: pass-through, streaming, server comparison
        log("phase 1: upstream 0 ms")
        systems = self._start_systems("p0", mock0)
        try:
            self.run_cells("pass-0ms", systems, body, mock0, False, concs)
            self.run_cells("stream-8", systems, sbody, mock0, False, concs)
        finally:
            for s in systems:
                self.stop(s)
        if self.a.compare_servers:
            self.compare_servers(mock0, body)

        # ---- phase 2: upstream at 50 ms: overhead against the mock itself
        log("phase 2: upstream 50 ms")
        # quick mode leaves LiteLLM out here: the 50 ms targets compare against the mock itself
        systems = self._start_systems("p50", mock50, with_litellm=not self.quick)
        try:
            self.run_cells("pass-50ms", systems, body, mock50, True, concs)
        finally:
            for s in systems:
                self.stop(s)
        for m in (mock0, mock50):
            self.stop(m)
        return 0

    def check_idle(self, seconds: float = 2.0) -> None:
        """Record how busy the machine is before anything starts (and with --wait-idle, wait for
        it to calm down): numbers taken while tests or other servers run on the same cores are
        not worth quoting."""
        t_end = time.monotonic() + self.a.wait_idle
        while True:
            sys0, self0 = system_busy_s(), self_cpu_s()
            time.sleep(seconds)
            busy = max(0.0, system_busy_s() - sys0 - (self_cpu_s() - self0)) / seconds * 100
            if busy <= NOISE_PCT or time.monotonic() >= t_end:
                break
            log(f"machine busy ({busy:.0f}% of a core used by other processes); waiting (--wait-idle)")
        self.idle_check_pct = round(busy, 1)
        if busy > NOISE_PCT:
            msg = f"machine busy before the run: {busy:.0f}% of a core used by other processes"
            self.problems.append(msg)
            log("WARNING " + msg)

    def _start_systems(self, phase: str, mock: System, with_litellm: bool = True) -> list[System]:
        systems: list[System] = []
        try:
            for srv in self.servers:
                systems.append(self.start_sluicegate(f"sluicegate-{srv or 'default'}-{phase}", srv, mock))
            if with_litellm and not self.a.no_litellm:
                systems.append(self.start_litellm(f"litellm-{phase}", mock))
        except BaseException:
            for s in systems:
                self.stop(s)
            raise
        return systems

    def compare_servers(self, mock0: System, body: dict[str, Any]) -> None:
        log("server comparison: uvicorn vs granian, pass-through 0 ms, c=50")
        systems: list[System] = []
        try:
            for srv in ("uvicorn", "granian"):
                try:
                    systems.append(self.start_sluicegate(f"sluicegate-cmp-{srv}", srv, mock0))
                except BenchError as e:
                    self.problems.append(f"server comparison: --server {srv} did not start: {str(e)[:600]}")
                    log(f"WARNING --server {srv} did not start: {e}")
            if systems:
                self.run_cells("pass-0ms", systems, body, None, False, [50], group="server-compare")
        finally:
            for s in systems:
                self.stop(s)


# --------------------------------------------------------------------------- report


def med(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


def summarize(cells: list[dict[str, Any]]) -> dict[tuple[str, str, int, str], dict[str, Any]]:
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["group"], c["scenario"], c["concurrency"], c["system"]), []).append(c)
    out = {}
    for k, rs in groups.items():
        out[k] = {
            "kind": rs[0]["kind"],
            "rounds": len(rs),
            "rps": med([r["rps"] for r in rs]),
            "rps_all": [round(r["rps"], 1) for r in rs],
            "p50_ms": med([r["p50_ms"] for r in rs]),
            "p99_ms": med([r["p99_ms"] for r in rs]),
            "cpu_s_per_1k": med([r["cpu_s_per_1k"] for r in rs]),
            "requests": sum(r["requests"] for r in rs),
            "errors": sum(r["error_count"] for r in rs),
            "flags": sorted({f for r in rs for f in r["flags"]}),
            "foreign_cpu_pct_max": max(r.get("foreign_cpu_pct", 0.0) for r in rs),
        }
    return out


def fnum(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def fms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def versions(a: argparse.Namespace, litellm_ver: str | None) -> dict[str, str]:
    gpy = a.gateway_python
    v: dict[str, str] = {"python (harness)": sys.version.split()[0]}
    rc, out = run_capture([gpy, "-c", "import sys; print(sys.version.split()[0])"])
    v["python (gateway .venv)"] = out if rc == 0 else "?"
    rc, out = run_capture([gpy, "-c", "import sluicegate; print(sluicegate.__version__)"])
    v["sluicegate"] = out.splitlines()[-1] if rc == 0 and out else f"? ({out[-120:]})"
    code = (
        "import importlib.metadata as m\n"
        "for p in ('uvicorn','uvloop','httptools','orjson','aiohttp','granian'):\n"
        "    try: print(p, m.version(p))\n"
        "    except Exception: print(p, 'not installed')\n"
    )
    rc, out = run_capture([gpy, "-c", code])
    for ln in out.splitlines():
        parts = ln.split(" ", 1)
        if len(parts) == 2:
            v[parts[0]] = parts[1]
    v["litellm"] = litellm_ver or "not run"
    _rc, out = run_capture(["wrk", "-v"])
    v["wrk"] = out.splitlines()[0] if out else "?"
    return v


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(ln.split()[1])
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    _rc, nproc = run_capture(["nproc"])
    _rc, kern = run_capture(["uname", "-sr"])
    return {"nproc": nproc, "cpu": cpu, "memory": f"{mem_kb / 1048576:.1f} GiB", "kernel": kern}


def build_report(
    b: Bench, ver: dict[str, str], mach: dict[str, str], started: str, elapsed: float, status: str
) -> tuple[str, dict[str, Any], list[str]]:
    a = b.a
    summ = summarize(b.cells)
    sg_labels = ["sluicegate" + (f" [{s}]" if s else "") for s in b.servers]
    primary = sg_labels[0]
    ll = next((k[3] for k in summ if summ[k]["kind"] == "litellm"), None)
    L: list[str] = []
    w = L.append
    w("# sluicegate benchmark results")
    w("")
    w("Generated by `bench/run.py`; everything above the notes marker is rewritten on every run.")
    w("")
    invocation = " ".join(shlex.quote(arg) for arg in ["bench/run.py", *sys.argv[1:]])
    w(f"- command: `{invocation}` (`make bench` runs it bare, `make bench-quick` with `--quick`)")
    w(f"- date (UTC): {started}; wall time {elapsed / 60:.1f} min; status: **{status}**")
    w(
        f"- mode: {'quick' if a.quick else 'full'}; {a.rounds} round(s) per cell, "
        f"{a.duration:g} s per wrk run (mock direct {a.mock_duration:g} s), warm-up {a.warmup:g} s; "
        f"concurrency {', '.join(map(str, a.concurrency))}; "
        f"{a.workers} workers per system; wrk -t1 --timeout {a.wrk_timeout:g}s"
    )
    w(f"- machine: {mach['nproc']} cores, {mach['cpu']}, {mach['memory']} RAM, {mach['kernel']}")
    w(
        f"- CPU used by other processes in the 2 s before the run: {fnum(b.idle_check_pct, '{:.0f}')}% "
        f"of a core (above {NOISE_PCT:.0f}% the numbers are noisy)"
    )
    w("- versions: " + "; ".join(f"{k} {v}" for k, v in ver.items()))
    w("- load generator, mock, and servers share the same cores (wrk -t1 takes up to one core itself).")
    w("")

    # targets
    w("## Acceptance targets")
    w("")
    tg = targets(b, summ, primary, ll)
    w("| target | measured | result |")
    w("|---|---|---|")
    for name, meas, res in tg:
        w(f"| {name} | {meas} | {res} |")
    w("")

    scen_titles = {
        "pass-0ms": "Pass-through, upstream 0 ms (non-streaming)",
        "pass-50ms": "Pass-through, upstream 50 ms (non-streaming) — overhead vs mock direct",
        "stream-8": f"Streaming, {a.chunks} chunks, upstream 0 ms",
    }
    for scen in ("pass-0ms", "pass-50ms", "stream-8"):
        keys = sorted(
            {k for k in summ if k[0] == "" and k[1] == scen}, key=lambda k: (k[2], _order(summ[k]["kind"]))
        )
        if not keys:
            continue
        w(f"## {scen_titles[scen]}")
        w("")
        w(
            "Medians over rounds. `ratio` = sluicegate req/s ÷ LiteLLM req/s in the same cell. "
            "CPU = CPU-seconds of the server's whole process tree per 1,000 completed requests. "
            "`other CPU %` = the most CPU (in % of one core) that processes this harness did not start "
            "used during any round of the cell; above 15 the cell is noisy."
        )
        w("")
        hdr = "| c | system | req/s | p50 ms | p99 ms | CPU s/1k req | ratio vs LiteLLM |"
        if scen == "pass-50ms":
            hdr += " overhead p50 ms | overhead p99 ms |"
        hdr += " errors | req/s per round | other CPU % |"
        w(hdr)
        w("|" + "---|" * (hdr.count("|") - 1))
        for k in keys:
            r = summ[k]
            conc, sysl = k[2], k[3]
            ratio = "-"
            llr = summ.get(("", scen, conc, ll)) if ll else None
            if r["kind"] == "sluicegate" and llr and llr["rps"]:
                ratio = f"{r['rps'] / llr['rps']:,.1f}x"
            row = (
                f"| {conc} | {sysl} | {fnum(r['rps'])} | {fms(r['p50_ms'])} | {fms(r['p99_ms'])} | "
                f"{fnum(r['cpu_s_per_1k'], '{:.3f}')} | {ratio} |"
            )
            if scen == "pass-50ms":
                mk = ("", scen, conc, "mock direct (50 ms)")
                m = summ.get(mk)
                if r["kind"] != "mock" and m and r["p50_ms"] is not None and m["p50_ms"] is not None:
                    row += f" {r['p50_ms'] - m['p50_ms']:+.3f} | {r['p99_ms'] - m['p99_ms']:+.3f} |"
                else:
                    row += " - | - |"
            err = str(r["errors"]) + (" ⚠ " + "; ".join(r["flags"]) if r["flags"] else "")
            row += f" {err} | {', '.join(f'{x:,.0f}' for x in r['rps_all'])} | "
            row += f"{r['foreign_cpu_pct_max']:.0f} |"
            w(row)
        w("")
    keys = sorted(k for k in summ if k[0] == "server-compare")
    if keys:
        w(
            "## Server comparison: sluicegate `--server uvicorn` vs `--server granian` "
            "(pass-through 0 ms, c=50)"
        )
        w("")
        w("| system | req/s (median) | req/s per round | p50 ms | p99 ms | CPU s/1k req | errors |")
        w("|---|---|---|---|---|---|---|")
        for k in keys:
            r = summ[k]
            w(
                f"| {k[3]} | {fnum(r['rps'])} | {', '.join(f'{x:,.0f}' for x in r['rps_all'])} | "
                f"{fms(r['p50_ms'])} | {fms(r['p99_ms'])} | "
                f"{fnum(r['cpu_s_per_1k'], '{:.3f}')} | {r['errors']} |"
            )
        w("")
    # balance
    w("## Worker balance (c=50 cells: CPU seconds per process of the server tree)")
    w("")
    w(
        "With several workers, wrk's long-lived connections are spread only when accepted, so one worker "
        "can get most of them. Share = that process's CPU ÷ the tree's CPU over the c=50 runs."
    )
    w("")
    w("| scenario | system | per-process CPU share (pid: share) | verdict |")
    w("|---|---|---|---|")
    for grp, scen, conc, sysl in sorted(summ):
        if conc != 50 or summ[(grp, scen, conc, sysl)]["kind"] == "mock":
            continue
        tot: dict[str, float] = {}
        for c in b.cells:
            if (c["group"], c["scenario"], c["concurrency"], c["system"]) == (grp, scen, conc, sysl):
                for pid, v in c["cpu_by_pid"].items():
                    tot[pid] = tot.get(pid, 0.0) + v
        allcpu = sum(tot.values()) or 1.0
        shares = sorted(((v / allcpu, pid) for pid, v in tot.items()), reverse=True)
        busy = [sh for sh, _ in shares if sh >= 0.05]
        verdict = (
            "single busy process"
            if len(busy) <= 1
            else (
                "balanced" if min(busy) / max(busy) >= 0.6 else f"unbalanced ({max(busy) / min(busy):.1f}:1)"
            )
        )
        w(
            f"| {scen}{' (' + grp + ')' if grp else ''} | {sysl} | "
            + ", ".join(f"{pid}: {sh:.0%}" for sh, pid in shares if sh >= 0.005)
            + f" | {verdict} |"
        )
    w("")
    # memory
    w("## Peak RSS (VmHWM) per process")
    w("")
    w("| system | instance | pid | role | peak RSS MB | CPU s in measured runs | command |")
    w("|---|---|---|---|---|---|---|")
    for label, meta in b.systems_meta.items():
        for inst in meta["instances"]:
            for p in inst["processes"]:
                w(
                    f"| {label} | {inst['key']} | {p['pid']} | {p['role']} | {p['vmhwm_mb']:.1f} | "
                    f"{p['cpu_s_measured']:.1f} | `{p['cmd'][:70]}` |"
                )
    w("")
    w("## Start-up (process start to first healthy answer)")
    w("")
    for label, meta in b.systems_meta.items():
        w(
            f"- {label}: "
            + ", ".join(
                f"{i['key']} {i['start_to_healthy_s']:.1f} s"
                for i in meta["instances"]
                if i["start_to_healthy_s"] is not None
            )
        )
    w("")
    w("## Smoke requests (one request per system and scenario, before the wrk runs)")
    w("")
    for s in b.smoke:
        w(
            f"- {'ok' if s.get('ok') else 'FAILED'}: {s['system']} / {s['scenario']}: "
            + ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("system", "scenario", "ok"))
        )
    w("")
    if b.problems:
        w("## Problems seen during the run")
        w("")
        for p in b.problems:
            w(f"- {p}")
        w("")
    w("## Commands")
    w("")
    w("Servers (ports are picked free at run time):")
    w("")
    w("```")
    for c in b.commands:
        w(c)
    w("```")
    if b.litellm_notes:
        w("")
        w("LiteLLM install/compile: " + "; ".join(f"`{n}`" for n in b.litellm_notes))
    w("")
    w(f"<details><summary>All {len(b.wrk_commands)} measured wrk command lines, in run order</summary>")
    w("")
    w("```")
    for c in b.wrk_commands:
        w(c)
    w("```")
    w("")
    w("</details>")
    w("")
    data = {
        "date_utc": started,
        "elapsed_s": round(elapsed, 1),
        "status": status,
        "mode": "quick" if a.quick else "full",
        "args": dict(vars(a).items()),
        "machine": mach,
        "versions": ver,
        "targets": [{"target": t, "measured": m, "result": r} for t, m, r in tg],
        "summary": [
            dict(group=k[0], scenario=k[1], concurrency=k[2], system=k[3], **v) for k, v in summ.items()
        ],
        "idle_check_other_cpu_pct": b.idle_check_pct,
        "noisy_runs": b.noise,
        "cells": b.cells,
        "systems": b.systems_meta,
        "smoke": b.smoke,
        "problems": b.problems,
        "server_commands": b.commands,
        "wrk_commands": b.wrk_commands,
        "litellm_install": b.litellm_notes,
    }
    table = console_table(summ, ll)
    return "\n".join(L), data, table + [""] + [f"{t}: {m} -> {r}" for t, m, r in tg]


def _order(kind: str) -> int:
    return {"sluicegate": 0, "litellm": 1, "mock": 2}.get(kind, 3)


def targets(
    b: Bench, summ: dict[tuple[str, str, int, str], dict[str, Any]], primary: str, ll: str | None
) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []

    def cell(scen: str, sysl: str | None) -> dict[str, Any] | None:
        return summ.get(("", scen, 50, sysl)) if sysl else None

    def flag(*cs: dict[str, Any] | None) -> str:
        fl = [f for c in cs if c for f in c["flags"]]
        return f" (cell flagged: {'; '.join(sorted(set(fl)))})" if fl else ""

    def verdict(ok: bool, *cs: dict[str, Any] | None) -> str:
        bad = any(c and c["kind"] == "sluicegate" and c["errors"] for c in cs)
        return ("PASS" if ok and not bad else "MISS") + flag(*cs)

    def ratio_target(
        what: str, target: float, g: dict[str, Any] | None, l_: dict[str, Any] | None
    ) -> tuple[str, str, str]:
        label = f"{what}: ≥ {target:.0f}x LiteLLM"
        if not (g and l_ and l_["rps"] and g["rps"] is not None):
            return (label, "LiteLLM not measured", "n/a")
        ratio = g["rps"] / l_["rps"]
        measured = f"{ratio:,.1f}x ({g['rps']:,.0f} vs {l_['rps']:,.0f})"
        return (label, measured, verdict(ratio >= target, g, l_))

    g, l_ = cell("pass-0ms", primary), cell("pass-0ms", ll)
    if g and g["rps"] is not None:
        out.append(
            (
                f"pass-through 0 ms c=50: ≥ {TARGET_RPS_0MS_C50:,.0f} req/s",
                f"{g['rps']:,.0f} req/s",
                verdict(g["rps"] >= TARGET_RPS_0MS_C50, g),
            )
        )
    else:
        out.append((f"pass-through 0 ms c=50: ≥ {TARGET_RPS_0MS_C50:,.0f} req/s", "not measured", "MISS"))
    out.append(ratio_target("pass-through 0 ms c=50", TARGET_RATIO_0MS_C50, g, l_))
    g, m = cell("pass-50ms", primary), cell("pass-50ms", "mock direct (50 ms)")
    if g and m and None not in (g["p50_ms"], m["p50_ms"], g["p99_ms"], m["p99_ms"]):
        o50, o99 = g["p50_ms"] - m["p50_ms"], g["p99_ms"] - m["p99_ms"]
        out.append(
            (
                f"50 ms c=50 overhead p50 ≤ {TARGET_OVERHEAD_P50_MS} ms",
                f"{o50:+.3f} ms ({g['p50_ms']:.3f} vs mock {m['p50_ms']:.3f})",
                verdict(o50 <= TARGET_OVERHEAD_P50_MS, g, m),
            )
        )
        out.append(
            (
                f"50 ms c=50 overhead p99 ≤ {TARGET_OVERHEAD_P99_MS} ms",
                f"{o99:+.3f} ms ({g['p99_ms']:.3f} vs mock {m['p99_ms']:.3f})",
                verdict(o99 <= TARGET_OVERHEAD_P99_MS, g, m),
            )
        )
    else:
        out.append(("50 ms c=50 overhead p50/p99", "not measured", "MISS"))
    out.append(
        ratio_target(
            "streaming c=50", TARGET_RATIO_STREAM_C50, cell("stream-8", primary), cell("stream-8", ll)
        )
    )
    # RSS: every process of the primary sluicegate that served traffic (≥ 2 % of its measured CPU)
    meta = b.systems_meta.get(primary)
    if meta:
        worst, who = 0.0, ""
        for inst in meta["instances"]:
            tot = sum(p["cpu_s_measured"] for p in inst["processes"]) or 1.0
            for p in inst["processes"]:
                serving = p["cpu_s_measured"] / tot >= 0.02 or len(inst["processes"]) == 1
                if serving and p["vmhwm_mb"] > worst:
                    worst, who = p["vmhwm_mb"], f"pid {p['pid']} ({p['role']})"
        allmax = max((p["vmhwm_mb"] for i in meta["instances"] for p in i["processes"]), default=0.0)
        out.append(
            (
                f"peak RSS ≤ {TARGET_RSS_MB:.0f} MB per worker",
                f"{worst:.1f} MB worst serving process, {who}; {allmax:.1f} MB worst of any process",
                "PASS" if 0 < worst <= TARGET_RSS_MB else "MISS",
            )
        )
    else:
        out.append((f"peak RSS ≤ {TARGET_RSS_MB:.0f} MB per worker", "not measured", "MISS"))
    return out


def console_table(summ: dict[tuple[str, str, int, str], dict[str, Any]], ll: str | None) -> list[str]:
    rows = [
        f"{'scenario':26s} {'c':>4s} {'system':30s} {'req/s':>10s} {'p50 ms':>9s} {'p99 ms':>9s} "
        f"{'cpu s/1k':>9s} {'ratio':>7s} {'err':>5s}"
    ]
    for k in sorted(summ, key=lambda k: (k[0], k[1], k[2], _order(summ[k]["kind"]), k[3])):
        r = summ[k]
        llr = summ.get((k[0], k[1], k[2], ll)) if ll else None
        ratio = f"{r['rps'] / llr['rps']:.1f}x" if (r["kind"] == "sluicegate" and llr and llr["rps"]) else ""
        scen = k[1] + (f"/{k[0]}" if k[0] else "")
        rows.append(
            f"{scen:26s} {k[2]:>4d} {k[3][:30]:30s} {fnum(r['rps']):>10s} {fms(r['p50_ms']):>9s} "
            f"{fms(r['p99_ms']):>9s} {fnum(r['cpu_s_per_1k'], '{:.3f}'):>9s} {ratio:>7s} "
            f"{r['errors']:>5d}" + (" FLAGGED" if r["flags"] else "")
        )
    return rows


def write_outputs(md: str, data: dict[str, Any]) -> None:
    res = BENCH / "RESULTS.md"
    notes = ""
    if res.exists():
        old = res.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    res.write_text(md.rstrip("\n") + "\n\n" + NOTES_MARKER + (notes if notes else "\n"))
    (BENCH / "results.json").write_text(json.dumps(data, indent=1, default=str) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="about a minute: c=50 only, 1 round, 4 s runs")
    p.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (no install, no ratio targets)")
    p.add_argument(
        "--servers",
        default="",
        help="comma list of --server values for sluicegate, e.g. uvicorn,granian; each becomes its "
        "own system in every cell (default: the gateway's configured default server)",
    )
    p.add_argument(
        "--no-server-compare",
        dest="compare_servers",
        action="store_false",
        default=None,
        help="skip the uvicorn-vs-granian comparison (on by default in full mode)",
    )
    p.add_argument("--concurrency", default=None, help="comma list (default 1,10,50,100; quick: 50)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per cell (default 3; quick: 1)")
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 7; quick: 4)")
    p.add_argument(
        "--mock-duration", type=float, default=None, help="seconds per mock-direct run (default 4; quick 3)"
    )
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds per system and scenario")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--chunks", type=int, default=8, help="content chunks per streamed answer")
    p.add_argument("--wrk-timeout", type=float, default=10.0, help="wrk --timeout seconds")
    p.add_argument("--litellm-start-timeout", type=float, default=180.0)
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for other processes to leave the CPU before starting",
    )
    p.add_argument(
        "--max-minutes", type=float, default=None, help="hard time budget; later cells are skipped"
    )
    p.add_argument(
        "--sluicegate-cmd",
        default=str(ROOT / ".venv" / "bin" / "sluicegate"),
        help="command that runs the sluicegate CLI (default: .venv/bin/sluicegate)",
    )
    p.add_argument(
        "--mock-cmd",
        default="",
        help="command whose `mock-upstream` runs the mock (default: the sluicegate CLI; harness tests only)",
    )
    p.add_argument(
        "--gateway-python",
        default=str(ROOT / ".venv" / "bin" / "python"),
        help="interpreter of the gateway's venv, for version reporting",
    )
    a = p.parse_args(argv)
    q = a.quick
    a.concurrency = [int(x) for x in (a.concurrency or ("50" if q else "1,10,50,100")).split(",")]
    a.rounds = a.rounds or (1 if q else 3)
    a.duration = a.duration or (4.0 if q else 7.0)
    a.mock_duration = a.mock_duration or (3.0 if q else 4.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 2.0)
    a.max_minutes = a.max_minutes or (5.0 if q else 22.0)
    if a.compare_servers is None:
        a.compare_servers = not q
    if a.compare_servers and len([s for s in a.servers.split(",") if s.strip()]) >= 2:
        a.compare_servers = False  # every cell already compares the listed servers
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(REG.stop_all)
    started = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    b = Bench(a)
    status, rc = "complete", 0
    try:
        b.run()
    except BenchError as e:
        status, rc = f"aborted: {str(e).splitlines()[0][:300]}", 2
        b.problems.append("ABORTED: " + str(e))
        log(f"ERROR: {e}")
    except (SystemExit, KeyboardInterrupt) as e:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the clean-up below finish
        status, rc = f"interrupted ({e})", 130
        b.problems.append(f"interrupted ({e})")
        log("interrupted")
    finally:
        REG.stop_all()
    if b.noise:
        b.problems.append(
            f"noise: in {len(b.noise)} of {len(b.cells)} measured runs other processes used more than "
            f"{NOISE_PCT:.0f}% of a core (worst: {max(b.noise, key=lambda x: float(x.split('%')[0]))}); "
            "see `foreign_cpu_pct` in results.json"
        )
    if b.problems and rc == 0:
        status = "complete, with problems (see below)"
    mach = machine()
    ver = versions(a, b.litellm_version)
    md, data, table = build_report(b, ver, mach, started, time.monotonic() - T0, status)
    write_outputs(md, data)
    print()
    print("\n".join(table))
    print()
    log(f"wrote {BENCH / 'RESULTS.md'} and {BENCH / 'results.json'} ({status})")
    return rc


if __name__ == "__main__":
    sys.exit(main())

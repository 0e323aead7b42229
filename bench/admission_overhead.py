#!/usr/bin/env python3
"""What rate limits and the usage ledger add to a request: one gateway worker per variant in
front of the 0 ms mock, wrk at c=50 with a distinct user per request (so that no limit is
reached), rounds alternating between the variants, CPU of each gateway from /proc. The other
processes' CPU per request is shown too (the mock, Redis and wrk: they share the machine's
cores with the gateway), and their sum with the gateway's, "all": on a machine of N cores no
variant can pass N / all requests a second, whatever the gateway saves.

    .venv/bin/python bench/admission_overhead.py            # about 2 minutes
    .venv/bin/python bench/admission_overhead.py --rounds 5 --duration 8
    .venv/bin/python bench/admission_overhead.py --workers 2 --only plain full-redis

Variants (every request goes upstream: the cache is off, or, in full-redis, scoped per user):
  plain         no limits, no ledger
  NAME@REF      with --baseline REF, each variant again on the code of git revision REF: before/after
  limit-redis   a per-user limit of 100 an hour, in Redis (db 13 of 127.0.0.1:6379, flushed)
  limit-sql     the same limit without Redis: rows in the embedded SQLite
  ledger        no limits, the usage ledger on (SQLite)
  budget        a budget for the org (SQLite): a reservation and a settlement per request
  budget-redis  the same budget, counted in Redis
  tokens-redis  a token limit per minute for the org, in Redis (never reached)
  cache-memory  a user-scoped cache in process only (every request a miss)
  cache-redis   a user-scoped cache alone (in process and Redis; every request a miss)
  full-redis    the whole pipeline with Redis: the per-user limit, a user-scoped cache (in
                process and Redis; every request a miss), the budget and the ledger (SQLite)
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from harness.processes import free_port  # bench/ is on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
SG = [str(ROOT / ".venv" / "bin" / "sluicegate")]
REDIS_URL = "redis://127.0.0.1:6379/13"
LIMIT = "limits:\n  requests:\n    - {per: user, limit: 100, window_s: 3600}\n"
NO_CACHE = "cache:\n  enabled: false\n"
NO_LEDGER = NO_CACHE + "ledger:\n  enabled: false\n"
REDIS = f"redis:\n  url: {REDIS_URL}\n"
TOKENS = "limits:\n  tokens:\n    - {per: org, tokens_per_minute: 1000000000}\n"
BUDGET = "budgets:\n  orgs:\n    - {org: local, limit_usd: 1000000}\n"
USER_CACHE = (
    "cache:\n  enabled: true\nfeatures:\n  default:\n    cache:\n      scope: user\n"
    "      tiers: [memory, redis]\n"
)
MEMORY_CACHE = USER_CACHE.replace("[memory, redis]", "[memory]")
VARIANTS = {
    "plain": NO_LEDGER,
    "cache-memory": MEMORY_CACHE + "ledger:\n  enabled: false\n",
    "limit-redis": NO_LEDGER + REDIS + LIMIT,
    "limit-sql": NO_LEDGER + LIMIT,
    "ledger": NO_CACHE,
    "budget": NO_LEDGER + BUDGET,
    "budget-redis": NO_LEDGER + REDIS + BUDGET,
    "tokens-redis": NO_LEDGER + REDIS + TOKENS,
    "cache-redis": REDIS + USER_CACHE + "ledger:\n  enabled: false\n",
    "full-redis": REDIS + LIMIT + BUDGET + USER_CACHE,
}
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
nonce = tostring(os.time()) .. tostring(math.floor(os.clock() * 1000000))
request = function()
  counter = counter + 1
  local headers = {["Content-Type"] = "application/json"}
  headers["x-sluicegate-user"] = "u" .. nonce .. "-" .. counter
  return wrk.format("POST", nil, headers,
    '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write three OKRs"}],"temperature":0}')
end
"""


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tree_ticks(pid: int) -> int:
    """CPU ticks of ``pid`` and its descendants (the server's workers)."""
    total = cpu_ticks(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        total += sum(tree_ticks(int(child)) for child in children)
    return total


def redis_pid() -> int | None:
    """The PID of the Redis server at 127.0.0.1:6379 (to count its CPU), or None."""
    out = subprocess.run(["redis-cli", "info", "server"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"^process_id:(\d+)", out, re.M)
    return int(found.group(1)) if found and Path(f"/proc/{found.group(1)}").exists() else None


def children_ticks() -> float:
    """CPU seconds of this script's finished children (wrk)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--baseline", metavar="REF", help="also run each variant on the code of revision REF")
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="run only these variants")
    parser.add_argument("--workers", type=int, default=1, help="server workers per variant (CPU: all)")
    parser.add_argument(
        "--connections", type=int, default=50, help="wrk's connections (1: each request's own latency)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("install wrk first (make wrk)")
    work = Path(tempfile.mkdtemp(prefix="sg-admission-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    started: list[subprocess.Popen[bytes]] = []
    try:
        mock_port = free_port()
        started.append(
            subprocess.Popen(
                [*SG, "mock-upstream", "--port", str(mock_port)], env=env, start_new_session=True
            )
        )
        servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
        subprocess.run(["redis-cli", "-n", "13", "flushdb"], check=False, capture_output=True)
        variants = {
            name: (extra, env) for name, extra in VARIANTS.items() if not args.only or name in args.only
        }
        if args.baseline:
            # The same plain config, served by the code of an earlier revision (its src first on the path).
            old = work / "baseline"
            old.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", args.baseline, "src"], capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            old_env = {**env, "PYTHONPATH": str(old / "src")}
            for name in list(variants):
                variants[f"{name}@{args.baseline}"] = (VARIANTS[name], old_env)
        for name, (extra, variant_env) in variants.items():
            folder = work / name.replace("@", "-at-").replace("/", "-")
            folder.mkdir()
            config = folder / "sluicegate.yaml"
            config.write_text(
                # The database URL too: code before fc5c891 (a --baseline) kept it in ./.sluicegate.
                f"data_dir: {folder}\ndatabase:\n  url: sqlite+aiosqlite:///{folder}/sluicegate.db\n"
                "providers:\n  mock:\n    kind: openai\n"
                f"    base_url: http://127.0.0.1:{mock_port}/v1\nmodels:\n  gpt-4o-mini:\n"
                "    provider: mock\n" + extra
            )
            port = free_port()
            command = [*SG, "serve", "--config", str(config), "--port", str(port)]
            command += ["--workers", str(args.workers)]
            process = subprocess.Popen(
                command,
                env=variant_env,
                stdout=(folder / "serve.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started.append(process)
            servers[name] = (port, process)
            # One at a time: many workers starting at once on two cores miss uvicorn's health
            # checks and are restarted over and over.
            try:
                wait_up(f"http://127.0.0.1:{port}/api/ai/status")
            except RuntimeError:
                sys.exit(f"{name} did not come up:\n{(folder / 'serve.log').read_text()[-2000:]}")
        script = work / "users.lua"
        script.write_text(LUA)
        redis = redis_pid()
        mock = started[0].pid
        print(
            f"{'round':>5} {'variant':<12} {'req/s':>8} {'CPU µs/req':>11} {'p50 ms':>7} {'p99 ms':>7}"
            f" {'mock':>6} {'redis':>6} {'wrk':>5} {'all':>6}"
        )
        tick = os.sysconf("SC_CLK_TCK")
        for round_ in range(args.rounds):
            for name, (port, process) in servers.items():
                before = tree_ticks(process.pid)
                others = (tree_ticks(mock), cpu_ticks(redis) if redis else 0, children_ticks())
                out = subprocess.run(
                    [
                        "wrk",
                        "-t1",
                        f"-c{args.connections}",
                        f"-d{args.duration}s",
                        "--latency",
                        "-s",
                        str(script),
                        f"http://127.0.0.1:{port}/v1/chat/completions",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                ticks = tree_ticks(process.pid) - before
                mock_s = (tree_ticks(mock) - others[0]) / tick
                redis_s = ((cpu_ticks(redis) - others[1]) / tick) if redis else 0.0
                wrk_s = children_ticks() - others[2]
                requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
                rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))  # type: ignore[union-attr]
                p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
                p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
                cpu_us = ticks / tick / requests * 1e6
                each = [seconds / requests * 1e6 for seconds in (mock_s, redis_s, wrk_s)]
                print(
                    f"{round_:>5} {name:<12} {rps:>8,.0f} {cpu_us:>11.1f} {p50:>7} {p99:>7}"
                    f" {each[0]:>6.0f} {each[1]:>6.0f} {each[2]:>5.0f} {cpu_us + sum(each):>6.0f}",
                    flush=True,
                )
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        subprocess.run(["redis-cli", "-n", "13", "flushdb"], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

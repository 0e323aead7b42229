#!/usr/bin/env python3
"""Instructions per request, counted by valgrind: steadier than CPU time on a shared machine.

Each variant runs an in-process gateway (the in-process mock, c=50, a distinct user per
request) twice under ``valgrind --tool=callgrind``, with 200 and with 1,200 requests after a
warm-up; the difference over 1,000 is the figure, so start-up does not count. The controls
and cache-counter polls are slowed down (under valgrind a run takes 50 times longer, and they
would count many times over) and the Redis timeouts raised (so that valgrind's slowness trips
none). Redis: db 13 of 127.0.0.1:6379 (each run's users are its own). Two variants run at a
time; each run takes about a minute.

    .venv/bin/python bench/instructions.py plain full
    .venv/bin/python bench/instructions.py --src /tmp/old/src full   # another checkout's code

With ``--http``, each variant is a real server instead (``sluicegate serve --workers 1`` under
callgrind, in front of ``sluicegate mock-upstream``, a distinct user per request): 400
requests warm it up, its counters are zeroed (``callgrind_control -z``), 1,000 requests at
c=20 follow, and the count dumped then (``callgrind_control -d``), over 1,000, is the figure.
It includes the HTTP server and client, so it is the measure of a cache miss against the
pass-through that the benchmark's CPU time takes, without the machine's noise. Background
work in the window counts too (the cache's counters are flushed every second, about 50
times as often per request as without valgrind): an upper bound.

    .venv/bin/python bench/instructions.py --http plain cache-memory   # about 3 minutes

Variants: plain, cache-memory, cache-redis, limit, budget, ledger, full (the limit, the
user-scoped cache in memory and Redis, the budget and the ledger).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from harness.processes import free_port  # bench/ is on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/13"
OFF = {"enabled": False}
USER_CACHE = {"default": {"cache": {"scope": "user", "tiers": ["memory", "redis"]}}}
LIMIT = {"requests": [{"per": "user", "limit": 100, "window_s": 3600}], "redis_timeout_ms": 5000}
BUDGET = {"orgs": [{"org": "local", "limit_usd": 1000000}], "redis_timeout_ms": 5000}
REDIS_CACHE = {"enabled": True, "redis": {"timeout_ms": 5000}}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"cache": OFF, "ledger": OFF},
    "cache-memory": {
        "cache": {"enabled": True, "redis": OFF, "sql": OFF},
        "ledger": OFF,
        "features": {"default": {"cache": {"scope": "user", "tiers": ["memory"]}}},
    },
    "cache-redis": {"redis": {"url": REDIS_URL}, "cache": REDIS_CACHE, "ledger": OFF, "features": USER_CACHE},
    "limit": {"redis": {"url": REDIS_URL}, "cache": OFF, "ledger": OFF, "limits": LIMIT},
    "budget": {"redis": {"url": REDIS_URL}, "cache": OFF, "ledger": OFF, "budgets": BUDGET},
    "ledger": {"cache": OFF},
    "full": {
        "redis": {"url": REDIS_URL},
        "cache": REDIS_CACHE,
        "limits": LIMIT,
        "budgets": BUDGET,
        "features": USER_CACHE,
    },
}
SMALL, LARGE = 200, 1200


async def serve(variant: str, requests: int) -> None:
    """The measured program: a warm-up of 200 requests, then ``requests`` more."""
    import sluicegate.cache.stats as stats
    from sluicegate import RequestContext, create_gateway
    from sluicegate.testing import mock_settings

    original = stats.CacheStats.__init__

    def slow_counters(self: stats.CacheStats, flush: stats.Flush, interval_s: float = 1.0) -> None:
        original(self, flush, 1000.0)

    stats.CacheStats.__init__ = slow_counters  # type: ignore[method-assign]
    nonce = secrets.token_hex(4)
    settings = mock_settings(
        data_dir=Path(tempfile.mkdtemp()), controls={"poll_interval_s": 10}, **VARIANTS[variant]
    )
    async with create_gateway(settings) as gateway:
        gate = asyncio.Semaphore(50)

        async def one(n: int) -> None:
            async with gate:
                context = RequestContext("local", f"u{nonce}-{n}", "default")
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Write three OKRs"}]}
                await gateway.send(gateway.new_call("chat", body, context))

        await asyncio.gather(*(one(n) for n in range(200)))
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)  # as a server worker does
        await asyncio.gather(*(one(1000 + n) for n in range(requests)))


def count(variant: str, requests: int, env: dict[str, str]) -> int:
    """Instructions of one run under callgrind."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--run",
        variant,
        str(requests),
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=900).stderr
    found = re.search(r"Collected : (\d+)", out)
    if found is None:
        raise RuntimeError(f"valgrind printed no count:\n{out[-2000:]}")
    return int(found.group(1))


def per_request(variant: str, env: dict[str, str]) -> float:
    return (count(variant, LARGE, env) - count(variant, SMALL, env)) / (LARGE - SMALL)


def per_http_request(variant: str, env: dict[str, str]) -> float:
    """Instructions per request of a one-worker server under callgrind (see ``--http``)."""
    sluicegate = str(ROOT / ".venv" / "bin" / "sluicegate")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        mock_port, port = free_port(), free_port()
        config = {
            "data_dir": str(work),
            "controls": {"poll_interval_s": 10},
            "providers": {"upstream": {"kind": "openai", "base_url": f"http://127.0.0.1:{mock_port}/v1"}},
            "models": {"gpt-4o-mini": {"provider": "upstream"}},
            **VARIANTS[variant],
        }
        (work / "sluicegate.yaml").write_text(json.dumps(config))  # JSON is YAML
        out = work / "callgrind.out"
        server = ["serve", "--config", str(work / "sluicegate.yaml"), "--port", str(port), "--workers", "1"]
        started = [
            subprocess.Popen(
                [sluicegate, "mock-upstream", "--port", str(mock_port)], env=env, stdout=subprocess.DEVNULL
            ),
            subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sluicegate, *server],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(work / "serve.log").open("wb"),
            ),
        ]
        try:
            wait_up(port, started[1])
            asyncio.run(send(port, 400, "warm"))
            subprocess.run(["callgrind_control", "-z", str(started[1].pid)], check=True, capture_output=True)
            asyncio.run(send(port, 1000, "measured"))
            subprocess.run(["callgrind_control", "-d", str(started[1].pid)], check=True, capture_output=True)
            dumps = sorted(work.glob("callgrind.out.*"))
            annotate = ["callgrind_annotate", str(dumps[-1])]
            text = subprocess.run(annotate, capture_output=True, text=True, check=False).stdout
            found = re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text)
            if found is None:
                raise RuntimeError(f"callgrind_annotate printed no total:\n{text[-2000:]}")
            return int(found.group(1).replace(",", "")) / 1000
        finally:
            for process in started:
                process.send_signal(signal.SIGTERM)
            for process in started:
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()


def wait_up(port: int, process: subprocess.Popen[bytes]) -> None:
    """Wait (valgrind starts slowly) until the server answers its status page."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server under valgrind exited")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ai/status", timeout=5).read()
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError("the server under valgrind did not come up in 10 minutes")


async def send(port: int, requests: int, tag: str) -> None:
    """``requests`` chat completions at c=20, each from a user of its own."""
    import aiohttp

    gate = asyncio.Semaphore(20)
    nonce = f"{secrets.token_hex(4)}-{tag}"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Write three OKRs"}]}
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> None:
            async with gate:
                headers = {"x-sluicegate-user": f"u{nonce}-{n}"}
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                async with session.post(url, json=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"the server answered {response.status}")

        await asyncio.gather(*(one(n) for n in range(requests)))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--run":
        import uvloop

        uvloop.install()
        asyncio.run(serve(sys.argv[2], int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    parser.add_argument("--src", help="run this src directory's code instead (PYTHONPATH)")
    parser.add_argument("--http", action="store_true", help="count a real server's instructions")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    if args.src:
        env["PYTHONPATH"] = args.src
    measure = per_request if not args.http else per_http_request
    with ThreadPoolExecutor(2) as pool:
        figures = pool.map(lambda variant: (variant, measure(variant, env)), args.variants)
        for variant, figure in figures:
            print(f"{variant:<13} {figure:>10,.0f} instructions per request", flush=True)


if __name__ == "__main__":
    main()

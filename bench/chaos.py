#!/usr/bin/env python3
"""The chaos run: 50 clients against a 2-worker gateway while, every 2 s, one fault strikes.

    .venv/bin/python bench/chaos.py                 # about 75 s; loopback only; stops by itself
    .venv/bin/python bench/chaos.py --duration 30

The faults, one every 2 s, drawn at random:
  redis-pause     Redis unreachable for 1-3 s (a fault proxy in front of it holds every byte)
  kill-worker     one gateway worker SIGKILLed (uvicorn starts another)
  upstream-503    the upstream answers 503 to everything for 5 s
  upstream-slow   2 s added to the upstream's answers for 2 s

The gateway serves the feature `insights` with a 1 h cache, stale-if-error for a day, a
static fallback answer and a 5 s deadline. The clients ask 400 distinct questions, Zipf-like
(a few are asked often), as the application's users do; a client whose connection is reset
tries once more, as the OpenAI SDKs do. Reported: the success rate (every request here is
cached or has a fallback, so the target is ≥ 99 %), how answers were served, p50/p99 latency,
upstream calls per client request, and the slowest request against the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sluicegate.faults import FaultProxy  # noqa: E402
from sluicegate.testing import MockUpstream, free_port  # noqa: E402

DEADLINE_S = 5.0
FAULTS = ("redis-pause", "kill-worker", "upstream-503", "upstream-slow")


def config(data: Path, upstream_port: int, redis_port: int) -> str:
    return f"""
data_dir: {data}
redis: {{url: "redis://127.0.0.1:{redis_port}/14"}}
providers:
  upstream:
    kind: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    timeouts: {{connect: 1, first_byte: 1.5, total: 10}}
models:
  gpt-4o-mini: {{provider: upstream}}
cache:
  redis: {{timeout_ms: 50}}
features:
  insights:
    deadline_s: {DEADLINE_S}
    fallback_answer: "Insights are catching their breath; they will be back in a minute."
    cache: {{ttl_s: 3600, scope: org, stale_if_error_s: 86400, cache_temperature: true}}
"""


def worker_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


class Run:
    def __init__(self, url: str, duration: float, clients: int) -> None:
        self.url = url + "/v1/chat/completions"
        self.duration = duration
        self.clients = clients
        self.outcomes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.requests = 0
        self.retried = 0

    async def client(self, session: aiohttp.ClientSession, rng: random.Random, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            question = min(int(rng.paretovariate(1.2)), 400)
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"What changed in metric {question} this quarter?"}],
            }
            started = time.monotonic()
            outcome = await self.ask(session, body)
            self.latencies.append(time.monotonic() - started)
            self.outcomes[outcome] += 1
            self.requests += 1

    async def ask(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> str:
        for attempt in (1, 2):
            try:
                async with session.post(
                    self.url, json=body, headers={"x-sluicegate-feature": "insights"}
                ) as r:
                    await r.read()
                    if r.status != 200:
                        return f"http-{r.status}"
                    if r.headers.get("x-sluicegate-degraded"):
                        return "degraded-static"
                    return r.headers.get("x-sluicegate-cache", "?")
            except (aiohttp.ClientConnectionError, aiohttp.ServerDisconnectedError):
                if attempt == 2:
                    return "connection-error"
                self.retried += 1
            except TimeoutError:
                return "client-timeout"
        return "?"


async def inject(
    stop_at: float,
    rng: random.Random,
    gateway: subprocess.Popen[bytes],
    upstream: MockUpstream,
    upstream_proxy: FaultProxy,
    redis_proxy: FaultProxy,
    log: list[str],
) -> None:
    started = time.monotonic()
    while time.monotonic() + 2 < stop_at:
        await asyncio.sleep(2)
        fault = rng.choice(FAULTS)
        at = time.monotonic() - started
        if fault == "redis-pause":
            seconds = rng.uniform(1, 3)
            redis_proxy.set(blackhole=True)
            log.append(f"{at:5.1f}s redis paused {seconds:.1f} s")
            asyncio.get_running_loop().call_later(seconds, redis_proxy.clear)
        elif fault == "kill-worker":
            pids = worker_pids(gateway.pid)
            if pids:
                victim = rng.choice(pids)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                log.append(f"{at:5.1f}s worker {victim} killed")
        elif fault == "upstream-503":
            upstream.behave(latency=20, error_rate=1.0, error_status=503)
            log.append(f"{at:5.1f}s upstream 503 for 5 s")
            asyncio.get_running_loop().call_later(5, lambda: upstream.behave(latency=20))
        else:
            upstream_proxy.set(latency_ms=1000)  # each way: 2 s added to an answer
            log.append(f"{at:5.1f}s upstream +2 s for 2 s")
            asyncio.get_running_loop().call_later(2, upstream_proxy.clear)


async def drive(
    args: argparse.Namespace,
    url: str,
    gateway: subprocess.Popen[bytes],
    upstream: MockUpstream,
    upstream_proxy: FaultProxy,
    redis_proxy: FaultProxy,
) -> tuple[Run, list[str]]:
    run = Run(url, args.duration, args.clients)
    log: list[str] = []
    rng = random.Random(args.seed)
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S + 10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        stop_at = time.monotonic() + args.duration
        tasks = [run.client(session, random.Random(rng.random()), stop_at) for _ in range(args.clients)]
        await asyncio.gather(
            *tasks, inject(stop_at, rng, gateway, upstream, upstream_proxy, redis_proxy, log)
        )
    return run, log


def report(run: Run, calls: int, log: list[str]) -> None:
    latencies = sorted(run.latencies)
    ok = sum(
        n for outcome, n in run.outcomes.items() if not outcome.startswith(("http-", "connection", "client"))
    )

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    print(f"faults ({len(log)}):")
    for line in log:
        print("   ", line)
    print(f"requests            {run.requests:,} from {run.clients} clients in {run.duration:.0f} s")
    print(f"success rate        {ok / max(run.requests, 1):.3%}  (200s, degraded answers included)")
    print("served as           " + ", ".join(f"{k} {v:,}" for k, v in run.outcomes.most_common()))
    print(f"client retries      {run.retried} (a reset connection, tried once more)")
    print(
        f"latency             p50 {pct(0.50):.1f} ms, p99 {pct(0.99):.1f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )
    print(f"upstream calls      {calls:,}: {calls / max(run.requests, 1):.3f} per client request")
    within = "yes" if latencies[-1] <= DEADLINE_S + 1.0 else "NO"
    print(
        f"within the deadline {within} (the slowest took {latencies[-1]:.2f} s; "
        f"the deadline is {DEADLINE_S:g} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="sg-chaos-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    calls = [0]
    with MockUpstream() as upstream, FaultProxy("127.0.0.1", 6379) as redis_proxy:
        upstream.behave(latency=20)
        reply = upstream.engine.reply

        def counted(method: str, path: str, body: bytes) -> Any:
            calls[0] += 1
            return reply(method, path, body)

        upstream.engine.reply = counted  # type: ignore[method-assign]
        with FaultProxy("127.0.0.1", upstream.port) as upstream_proxy:
            (data / "sluicegate.yaml").write_text(config(data, upstream_proxy.port, redis_proxy.port))
            subprocess.run(["redis-cli", "-n", "14", "flushdb"], capture_output=True, check=False)
            port = free_port()
            log_file = (data / "gateway.log").open("wb")
            gateway = subprocess.Popen(
                [
                    str(ROOT / ".venv" / "bin" / "sluicegate"),
                    "serve",
                    "--config",
                    str(data / "sluicegate.yaml"),
                    "--port",
                    str(port),
                    "--workers",
                    "2",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    with contextlib.suppress(OSError):
                        import urllib.request

                        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ai/status", timeout=1).close()
                        break
                    time.sleep(0.2)
                else:
                    sys.exit(f"the gateway did not come up; see {data / 'gateway.log'}")
                run, log = asyncio.run(
                    drive(args, f"http://127.0.0.1:{port}", gateway, upstream, upstream_proxy, redis_proxy)
                )
            finally:
                os.killpg(gateway.pid, signal.SIGTERM)
                try:
                    gateway.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(gateway.pid, signal.SIGKILL)
                subprocess.run(["redis-cli", "-n", "14", "flushdb"], capture_output=True, check=False)
                log_file.close()
    report(run, calls[0], log)


if __name__ == "__main__":
    main()

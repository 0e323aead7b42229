#!/usr/bin/env python3
"""Hedging against a latency target, in-process: two deployments of one model, one of them
slowed to 3 s for 10 % of its calls; the feature `okr-template` (target: 2 s at p95), with and
without hedging. Reported: p50/p95/p99 latency and the extra upstream calls hedging costs.

    .venv/bin/python bench/hedging.py                    # about 30 s
    .venv/bin/python bench/hedging.py --requests 4000 --concurrency 50
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from sluicegate import RequestContext, create_gateway
from sluicegate.testing import mock_settings


async def run(hedge: bool, requests: int, concurrency: int) -> tuple[list[float], int, int]:
    settings = mock_settings(
        data_dir=Path(tempfile.mkdtemp(prefix="sg-hedging-")),
        providers={
            "east": {"kind": "mock", "mock": {"latency": 50, "slow_rate": 0.1, "slow_ms": 3000, "seed": 1}},
            "west": {"kind": "mock", "mock": {"latency": 50, "seed": 2}},
        },
        models={"gpt-4o-mini": {"provider": "east", "deployments": [{"provider": "west"}]}},
        features={"okr-template": {"latency_target_ms": 2000, "hedge": hedge}},
        cache={"enabled": False},
        ledger={"enabled": False},
    )
    context = RequestContext("acme", feature="okr-template")
    latencies: list[float] = []
    hedged = 0
    async with create_gateway(settings) as gateway:
        gate = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            nonlocal hedged
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"OKR {n}"}]}
            async with gate:
                started = time.perf_counter()
                reply = await gateway.send(gateway.new_call("chat", body, context))
                latencies.append(time.perf_counter() - started)
                hedged += "x-sluicegate-hedge" in reply.headers

        await asyncio.gather(*(one(n) for n in range(requests)))
        calls = sum(len(p.transport.engine.calls) for p in gateway.providers.values())  # type: ignore[attr-defined]
    return sorted(latencies), calls, hedged


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    print(f"{'hedging':<8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'calls':>7} {'extra':>7} {'hedged':>7}")
    for hedge in (False, True):
        latencies, calls, hedged = asyncio.run(run(hedge, args.requests, args.concurrency))

        def pct(p: float, values: list[float] = latencies) -> float:
            return values[min(len(values) - 1, int(p * len(values)))] * 1000

        extra = calls / args.requests - 1
        print(
            f"{'on' if hedge else 'off':<8} {pct(0.5):>8.0f} {pct(0.95):>8.0f} {pct(0.99):>8.0f} "
            f"{calls:>7} {extra:>7.1%} {hedged:>7}"
        )


if __name__ == "__main__":
    main()

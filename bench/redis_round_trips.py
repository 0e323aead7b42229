#!/usr/bin/env python3
"""What a Redis command on the request path costs the gateway's CPU, by how it is sent.

50 tasks each run requests through a stack of 10 coroutines (as the pipeline's stages nest),
and each request makes its Redis commands through `store.redis.LuaScript` over the `Wire`
(db 13 of 127.0.0.1:6379): none; 1, 2 or 3 scripts one after the other, each awaited; 3
sent in one loop turn and then awaited (one write, one round trip); or one script doing the
work of 3. The figure is this process's CPU per request (Redis's own CPU is not counted);
three rounds, alternating.

    .venv/bin/python bench/redis_round_trips.py          # about 20 seconds
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import uvloop

from sluicegate.store.redis import LuaScript, create_redis

REDIS_URL = "redis://127.0.0.1:6379/13"
DEPTH, TASKS, REQUESTS = 10, 50, 20_000
ONE = "return 1"
THREE = "local x = 0 for i = 1, 3 do x = x + redis.call('EXISTS', KEYS[1]) end return x"
Request = Callable[[], Awaitable[None]]


async def nested(depth: int, request: Request) -> None:
    """``request`` under ``depth`` coroutines, as a stage under the ones before it."""
    if depth == 0:
        await request()
    else:
        await nested(depth - 1, request)


async def main() -> None:
    redis = create_redis(REDIS_URL)
    one, three = LuaScript(redis, ONE, 1.0), LuaScript(redis, THREE, 1.0)
    wire = redis.wire  # type: ignore[attr-defined]
    await one(["k{a}"], [])
    await three(["k{a}"], [])

    def awaited(count: int) -> Request:
        async def request() -> None:
            for _ in range(count):
                await one(["k{a}"], ["x"])

        return request

    async def pipelined() -> None:
        futures = [wire.call(("EVALSHA", one.sha, 1, "k{a}", "x"), 1.0) for _ in range(3)]
        for future in futures:
            await future

    async def merged() -> None:
        await three(["k{a}"], ["x"])

    variants = {
        "no command": awaited(0),
        "1 awaited": awaited(1),
        "2 awaited, one after the other": awaited(2),
        "3 awaited, one after the other": awaited(3),
        "3 sent together, one round trip": pipelined,
        "1 script doing the work of 3": merged,
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(3):
        for name, request in variants.items():

            async def task(count: int, request: Request = request) -> None:
                for _ in range(count):
                    await nested(DEPTH, request)

            started = time.process_time()
            await asyncio.gather(*(task(REQUESTS // TASKS) for _ in range(TASKS)))
            results[name].append((time.process_time() - started) / REQUESTS * 1e6)
    await redis.aclose()
    print(f"{'commands per request':36} CPU µs per request (3 rounds; the median first)")
    for name, rounds in results.items():
        print(f"{name:36} {sorted(rounds)[1]:6.2f}   ({', '.join(f'{r:.2f}' for r in rounds)})")


if __name__ == "__main__":
    uvloop.run(main())

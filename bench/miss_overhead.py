#!/usr/bin/env python3
"""The cache stage's own CPU per miss, in-process: a gateway over the in-process mock, cache on
against cache off, distinct prompts, ``time.process_time`` per batch.

    .venv/bin/python bench/miss_overhead.py        # about 20 s
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from pathlib import Path

from sluicegate import RequestContext, create_gateway
from sluicegate.testing import mock_settings

BATCHES, PER_BATCH = 4, 5000


async def measure(cache_on: bool) -> list[float]:
    """Microseconds of CPU per call, one figure a batch."""
    settings = mock_settings(
        data_dir=Path(tempfile.mkdtemp()),
        cache={"enabled": cache_on, "redis": {"enabled": False}, "sql": {"enabled": False}},
    )
    out = []
    async with create_gateway(settings) as gateway:
        context = RequestContext("acme", None, "insights")
        gc.collect()
        gc.freeze()
        for batch in range(BATCHES):
            started = time.process_time()
            for i in range(PER_BATCH):
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"p {batch} {i}"}]}
                await gateway.send(gateway.new_call("chat", body, context))
            out.append((time.process_time() - started) / PER_BATCH * 1e6)
    return out


def main() -> None:
    """Print both series and their medians."""
    for cache_on in (False, True, False, True):
        figures = asyncio.run(measure(cache_on))
        print(
            f"cache {'on ' if cache_on else 'off'}: "
            + ", ".join(f"{f:.1f}" for f in figures)
            + " µs per call"
        )


if __name__ == "__main__":
    main()

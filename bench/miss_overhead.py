#!/usr/bin/env python3
"""The cache stage's own CPU per miss, in-process: a gateway over the in-process mock, the
in-process tier alone against the cache switched off, 15,000 distinct prompts per run,
``time.process_time`` over the run. The ledger is off, and the cyclic GC is set as a server
worker sets it (start-up heap frozen, ``server.gc_thresholds``).

Each run is a process of its own; the runs alternate (on, off, and with ``--src`` the other
checkout's on), six of each, and the minimum is the figure: on a shared machine, noise only
ever adds.

    .venv/bin/python bench/miss_overhead.py                       # about a minute
    .venv/bin/python bench/miss_overhead.py --src /tmp/old/src    # also another checkout's miss
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS, CALLS, WARM_UP = 6, 15_000, 2_000


async def measure(cache_on: bool) -> float:
    """Microseconds of CPU per call over one run."""
    from sluicegate import RequestContext, create_gateway
    from sluicegate.testing import mock_settings

    settings = mock_settings(
        data_dir=Path(tempfile.mkdtemp()),
        cache={"enabled": cache_on, "redis": {"enabled": False}, "sql": {"enabled": False}},
        ledger={"enabled": False},
    )
    async with create_gateway(settings) as gateway:
        context = RequestContext("acme", None, "insights")
        for i in range(WARM_UP):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"warm {i}"}]}
            await gateway.send(gateway.new_call("chat", body, context))
        gc.collect()
        gc.freeze()
        gc.set_threshold(*settings.server.gc_thresholds)
        started = time.process_time()
        for i in range(CALLS):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"p {i}"}]}
            await gateway.send(gateway.new_call("chat", body, context))
        return (time.process_time() - started) / CALLS * 1e6


def run(mode: str, src: str | None) -> float:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    out = subprocess.run(
        [sys.executable, __file__, "--run", mode], env=env, capture_output=True, text=True, check=True
    ).stdout
    return float(out.split()[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        print(asyncio.run(measure(sys.argv[2] == "on")))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", help="also measure the miss with this src directory's code")
    args = parser.parse_args()
    series: dict[str, list[float]] = {"on": [], "off": []}
    if args.src:
        series["on (--src)"] = []
    for _ in range(RUNS):
        series["on"].append(run("on", None))
        series["off"].append(run("off", None))
        if args.src:
            series["on (--src)"].append(run("on", args.src))
    for name, figures in series.items():
        shown = ", ".join(f"{f:.1f}" for f in sorted(figures))
        print(f"cache {name:<11} min {min(figures):6.1f} µs per call  (all: {shown})")
    print(f"a miss's own cost: {min(series['on']) - min(series['off']):.1f} µs", end="")
    if args.src:
        print(f"; with --src: {min(series['on (--src)']) - min(series['off']):.1f} µs", end="")
    print()


if __name__ == "__main__":
    main()

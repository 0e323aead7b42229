#!/usr/bin/env python3
"""The pipeline's own cost per call, in-process (no HTTP, no sockets): `Gateway.send` over the
in-process mock, cache and ledger off, best of many short rounds; with ``--baseline REF``, the
same on git revision REF's code in a child process, alternating, for a before/after in one run.

    .venv/bin/python bench/pipeline_cost.py --baseline HEAD~3      # about a minute
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Write three OKRs"}],
    "temperature": 0,
}


async def measure(rounds: int, calls: int) -> float:
    from sluicegate import create_gateway
    from sluicegate.testing import mock_settings

    settings = mock_settings(
        data_dir=Path(tempfile.mkdtemp(prefix="sg-pipeline-")),
        ledger={"enabled": False},
        cache={"enabled": False},
    )
    async with create_gateway(settings) as gateway:
        for _ in range(2000):
            await gateway.send(gateway.new_call("chat", BODY))
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(calls):
                await gateway.send(gateway.new_call("chat", BODY))
            best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", metavar="REF", help="also measure git revision REF's code")
    parser.add_argument("--repeat", type=int, default=3, help="alternations of current and baseline")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(f"{asyncio.run(measure(args.rounds, args.calls)):.2f}")
        return
    variants = {"current": {**os.environ}}
    if args.baseline:
        old = Path(tempfile.mkdtemp(prefix="sg-baseline-"))
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline, "src"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        variants[args.baseline] = {**os.environ, "PYTHONPATH": str(old / "src")}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, env in variants.items():
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--rounds",
                    str(args.rounds),
                    "--calls",
                    str(args.calls),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[name].append(float(out.strip()))
    for name, values in results.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:<12} best {min(values):6.1f} µs per call   (runs: {shown})")


if __name__ == "__main__":
    main()

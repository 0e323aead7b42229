#!/usr/bin/env python3
"""A realistic workload against sluicegate: 100 users of three AI features, for a bounded time.

Starts three mock providers (template generation ≈1.5 s, chat streamed with the first token
after 0.8 s, insights ≈3 s) and a sluicegate with 2 workers in front of them, with one virtual
key per org; or, with --url, drives a sluicegate already running on 127.0.0.1. Every user
picks a feature, draws a prompt from that feature's fixed pool with Zipf weights, sends it with
X-Sluicegate-Feature and X-Sluicegate-User, and thinks before the next one. After --duration
seconds it stops, stops everything it started (by PID), and reports the hit ratio per tier and
feature (from X-Sluicegate-Cache), latencies of hits and misses, upstream calls and tokens saved.

    .venv/bin/python bench/workload.py                 # 60 s, about 1.5 minutes in all
    .venv/bin/python bench/workload.py --duration 300  # a warmer cache

It writes bench/.work/workload/WORKLOAD.md (a section for bench/RESULTS.md) and workload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import functools
import json
import random
import shlex
import signal
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import aiohttp
from harness.common import ROOT, WORK, BenchError, log
from harness.processes import REG, on_signal
from harness.workload_report import Sample, as_json, markdown, summarize, targets
from harness.workload_stack import FEATURES, Feature, Stack

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TEAMS = (
    "sales",
    "marketing",
    "engineering",
    "support",
    "finance",
    "people",
    "product",
    "design",
    "data",
    "legal",
)
THEMES = (
    "growth",
    "retention",
    "quality",
    "efficiency",
    "hiring",
    "launch",
    "cost",
    "customer trust",
    "speed",
    "risk",
)
METRICS = (
    "revenue",
    "churn",
    "pipeline",
    "NPS",
    "velocity",
    "headcount",
    "burn",
    "activation",
    "uptime",
    "CAC",
)


@functools.cache
def prompt_pool(feature: str, size: int) -> list[str]:
    """A fixed pool of ``size`` distinct prompts for one feature (the same on every run)."""
    out = []
    for i in range(size):
        team, theme = TEAMS[i % len(TEAMS)], THEMES[(i // len(TEAMS)) % len(THEMES)]
        variant = i // (len(TEAMS) * len(THEMES))
        if feature == "okr-template":
            text = f"Draft an OKR template for a {team} team focused on {theme}"
        elif feature == "chat":
            text = f"How should a {team} team measure progress on {theme}?"
        else:
            text = f"Summarise the {METRICS[i % len(METRICS)]} trend for the {team} team around {theme}"
        out.append(text + (f" (variant {variant})" if variant else ""))
    return out


@functools.cache
def zipf_weights(n: int, s: float) -> list[float]:
    """Cumulative Zipf weights over ranks 1..n: rank k is drawn with probability ∝ 1/k^s."""
    return list(accumulate(1 / k**s for k in range(1, n + 1)))


def request_body(feature: Feature, prompt: str) -> dict[str, Any]:
    """The chat completion a feature sends."""
    body: dict[str, Any] = {"model": feature.model, "messages": [{"role": "user", "content": prompt}]}
    if feature.stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


async def send(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    feature: Feature,
    prompt: str,
    sample: Sample,
) -> None:
    """Send one request and fill in ``sample`` (status, cache header, latencies, tokens)."""
    t0 = time.monotonic()
    try:
        async with session.post(url, json=request_body(feature, prompt), headers=headers) as resp:
            sample.status = resp.status
            sample.cache = resp.headers.get("x-sluicegate-cache", "(none)")
            usage = None
            if feature.stream:
                async for line in resp.content:
                    if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                        continue
                    event = json.loads(line[5:])
                    choices = event.get("choices") or []
                    if sample.ttft_s is None and any((c.get("delta") or {}).get("content") for c in choices):
                        sample.ttft_s = time.monotonic() - t0
                    usage = event.get("usage") or usage
            else:
                payload = await resp.json(content_type=None)
                usage = payload.get("usage") if isinstance(payload, dict) else None
            sample.tokens = int((usage or {}).get("total_tokens") or 0)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        sample.status = sample.status if sample.status != 200 else 0
        sample.error = f"{type(e).__name__}: {e}"[:200]
    sample.total_s = time.monotonic() - t0


@dataclass
class Window:
    """What every user shares: the flags, the HTTP session, the URL, the clock and the samples."""

    args: argparse.Namespace
    session: aiohttp.ClientSession
    url: str
    start: float  # the measured window opens (after the warm-up) ...
    end: float  # ... and closes
    samples: list[Sample] = field(default_factory=list)


async def user(w: Window, org: str, name: str, key: str | None, rng: random.Random) -> None:
    """One user: pick a feature and a prompt, send, think; until the window closes."""
    args = w.args
    cum = zipf_weights(args.pool, args.zipf_s)
    weights = [f.weight for f in FEATURES]
    await asyncio.sleep(rng.uniform(0, args.think_s))  # users arrive spread out, not all at once
    while time.monotonic() < w.end:
        feature = rng.choices(FEATURES, weights)[0]
        index = rng.choices(range(args.pool), cum_weights=cum)[0]
        headers = {"X-Sluicegate-Feature": feature.name, "X-Sluicegate-User": name}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # t < 0: a warm-up request, left out of the report
        sample = Sample(feature.name, org, name, index, time.monotonic() - w.start, 0, "(none)", 0.0)
        await send(w.session, w.url, headers, feature, prompt_pool(feature.name, args.pool)[index], sample)
        w.samples.append(sample)
        await asyncio.sleep(min(rng.expovariate(1 / args.think_s), max(0.0, w.end - time.monotonic())))


async def drive(
    args: argparse.Namespace, url: str, keys: dict[str, str | None], mocks: list[str]
) -> list[Sample]:
    """Run every user through the warm-up and the measured window; requests still open 30 s
    after it are cut. The mocks' call logs are cleared when the measured window opens."""
    rng = random.Random(args.seed)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as session:
        now = time.monotonic()
        w = Window(
            args, session, url + "/v1/chat/completions", now + args.warmup, now + args.warmup + args.duration
        )
        tasks = [
            asyncio.create_task(user(w, org, f"{org}-user{u:02d}", key, random.Random(rng.random())))
            for org, key in keys.items()
            for u in range(args.users_per_org)
        ]
        log(f"{len(tasks)} users running: {args.warmup:g} s warm-up, then {args.duration:g} s measured")
        if args.warmup:
            await asyncio.sleep(args.warmup)
            for m in mocks:
                async with session.delete(m + "/_mock/calls") as resp:
                    resp.raise_for_status()
            log("warm-up over: measuring")
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, w.end - time.monotonic()) + 30)
        for t in pending:
            t.cancel()
        for t in done:
            t.result()
    return [s for s in w.samples if s.t >= 0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds (default 60, at most 900)")
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="seconds of the same load before measuring (default 0: a cold cache)",
    )
    p.add_argument("--orgs", type=int, default=10)
    p.add_argument("--users-per-org", type=int, default=10)
    p.add_argument(
        "--think-s", type=float, default=1.0, help="mean think time between requests (exponential)"
    )
    p.add_argument("--pool", type=int, default=100, help="prompts per feature (default 100)")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of the prompt choice")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--redis-url", default=None, help="give the gateway Redis (e.g. redis://127.0.0.1:6379/14)"
    )
    p.add_argument("--url", default=None, help="drive this running sluicegate (127.0.0.1 only) instead")
    p.add_argument("--keys", type=Path, default=None, help="with --url: file of `org key` lines, one a line")
    p.add_argument("--sluicegate-cmd", default=str(ROOT / ".venv" / "bin" / "sluicegate"))
    p.add_argument(
        "--out", type=Path, default=WORK / "workload", help="folder for WORKLOAD.md and workload.json"
    )
    a = p.parse_args(argv)
    if not 0 < a.duration <= 900 or not 0 <= a.warmup <= 900:
        p.error("--duration must be between 0 and 900 seconds, --warmup between 0 and 900")
    if a.url and urllib.parse.urlsplit(a.url).hostname not in LOOPBACK:
        p.error("--url must point at this machine (127.0.0.1 or localhost)")
    return a


def run(a: argparse.Namespace) -> dict[str, Any]:
    """Set up (or target) the gateway, drive it, collect the upstream calls; the report data."""
    stack = None
    if a.url:
        url, keys = a.url.rstrip("/"), _read_keys(a.keys)
    else:
        stack = Stack(shlex.split(a.sluicegate_cmd), a.workers, a.redis_url, a.seed)
        keys = dict(stack.start([f"org{i:02d}" for i in range(a.orgs)]))
        url = stack.url
        stack.reset_calls()
    samples = asyncio.run(drive(a, url, keys, list(stack.mocks.values()) if stack else []))
    upstream = stack.upstream_calls() if stack else None
    summary = summarize(samples, [(f.name, f.stream) for f in FEATURES], upstream, a.duration)
    return {
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "config": _config(a, stack, url, len(keys)),
        "summary": summary,
        "targets": targets(summary),
        "commands": stack.commands if stack else [],
        "samples": as_json(samples),
    }


def _read_keys(path: Path | None) -> dict[str, str | None]:
    if path is None:
        log("no --keys: every request goes without a key, to the gateway's one development org")
        return {"local": None}
    keys: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            org, key = line.split()
            keys[org] = key
    return keys


def _config(a: argparse.Namespace, stack: Stack | None, url: str, orgs: int) -> dict[str, Any]:
    gateway = f"{url}, started here with {a.workers} workers, cache tiers memory + SQLite"
    gateway += f" + Redis ({a.redis_url})" if a.redis_url else " (no Redis)"
    return {
        "command": " ".join(shlex.quote(x) for x in ["bench/workload.py", *sys.argv[1:]]),
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "orgs": orgs,
        "users_per_org": a.users_per_org,
        "users": orgs * a.users_per_org,
        "think_s": a.think_s,
        "pool": a.pool,
        "zipf_s": a.zipf_s,
        "mix": ", ".join(
            f"{f.name} {f.weight:.0%} (scope {f.scope}{', streamed' if f.stream else ''})" for f in FEATURES
        ),
        "gateway": gateway if stack else f"{url} (not started here)",
        "providers": "; ".join(f"{f.name} → {f.model}: {json.dumps(f.mock)}" for f in FEATURES),
        "upstream_source": "the mocks' call logs"
        if stack
        else "with --url: estimated, the answers not served from the cache",
    }


def main(argv: list[str] | None = None) -> int:
    """Run the workload and write its report; the exit code."""
    a = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        data = run(a)
    except BenchError as e:
        log(f"ERROR: {e}")
        return 2
    finally:
        REG.stop_all()
    a.out.mkdir(parents=True, exist_ok=True)
    md = markdown(data)
    (a.out / "WORKLOAD.md").write_text(md)
    (a.out / "workload.json").write_text(json.dumps(data, indent=1) + "\n")
    print()
    print(md)
    log(f"wrote {a.out / 'WORKLOAD.md'} and {a.out / 'workload.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark harness: sluicegate vs the LiteLLM proxy, both in front of `sluicegate mock-upstream`.

Standard library only.  Run it with the project's interpreter:

    .venv/bin/python bench/run.py            # full run (make bench), about 13-15 minutes
    .venv/bin/python bench/run.py --quick    # about 1-1.5 minutes, c=50 only, 1 round
    .venv/bin/python bench/run.py --cache-only --quick   # the response-cache cells alone

It writes bench/RESULTS.md (text after the `<!-- notes -->` marker is kept) and
bench/results.json.  See bench/README.md for what every cell means.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import signal
import sys
import time
from pathlib import Path

from .cache_cells import DEFAULT_PG_URL
from .common import BENCH, NOISE_PCT, ROOT, T0, BenchError, log
from .environment import machine, versions
from .processes import REG, on_signal
from .report import build_report, write_outputs
from .scenarios import Bench

# The cache cells join the full run (make bench) once the gateway's cache has landed; until
# then they run only with --cache or --cache-only.
CACHE_IN_FULL_RUN = True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with the defaults that depend on --quick filled in."""
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
    _add_cache_args(p)
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
    p.add_argument(
        "--results-dir",
        type=Path,
        default=BENCH,
        help="where RESULTS.md and results.json go (default: bench/; use another folder for trial runs)",
    )
    return _fill_defaults(p.parse_args(argv))


def _add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the response-cache cells (hits per tier vs LiteLLM's cache, miss CPU), c=50; "
        f"default: {'on in full mode' if CACHE_IN_FULL_RUN else 'off'}",
    )
    p.add_argument(
        "--cache-only",
        action="store_true",
        help="run only the cache cells (no pass-through, streaming or server comparison)",
    )
    p.add_argument(
        "--cache-pg-url",
        default=DEFAULT_PG_URL,
        metavar="URL",
        help="database of the PostgreSQL variant of the SQL-hit cell; '' skips it "
        "(default: %(default)s, the test suite's database: do not run it beside the tests)",
    )


def _fill_defaults(a: argparse.Namespace) -> argparse.Namespace:
    q = a.quick
    a.concurrency = [int(x) for x in (a.concurrency or ("50" if q else "1,10,50,100")).split(",")]
    a.rounds = a.rounds or (1 if q else 3)
    a.duration = a.duration or (4.0 if q else 7.0)
    a.mock_duration = a.mock_duration or (3.0 if q else 4.0)
    a.warmup = a.warmup if a.warmup is not None else (1.0 if q else 2.0)
    if a.compare_servers is None:
        a.compare_servers = not q
    if a.compare_servers and len([s for s in a.servers.split(",") if s.strip()]) >= 2:
        a.compare_servers = False  # every cell already compares the listed servers
    if a.cache is None:
        a.cache = a.cache_only or (CACHE_IN_FULL_RUN and not q)
    a.cache_only = a.cache_only and a.cache
    # the cache cells take about 1.5 minutes quick and 5 full: leave room for them
    a.max_minutes = a.max_minutes or (5.0 if q else 22.0) + ((3.0 if q else 8.0) if a.cache else 0.0)
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results; the exit code (2 aborted, 130 interrupted)."""
    a = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(REG.stop_all)
    started = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    b = Bench(a)
    rec = b.rec
    status, rc = "complete", 0
    try:
        b.run()
    except BenchError as e:
        status, rc = f"aborted: {str(e).splitlines()[0][:300]}", 2
        rec.problems.append("ABORTED: " + str(e))
        log(f"ERROR: {e}")
    except (SystemExit, KeyboardInterrupt) as e:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the clean-up below finish
        status, rc = f"interrupted ({e})", 130
        rec.problems.append(f"interrupted ({e})")
        log("interrupted")
    finally:
        REG.stop_all()
    if rec.noise:
        rec.problems.append(
            f"noise: in {len(rec.noise)} of {len(rec.cells)} measured runs other processes used more than "
            f"{NOISE_PCT:.0f}% of a core (worst: {max(rec.noise, key=lambda x: float(x.split('%')[0]))}); "
            "see `foreign_cpu_pct` in results.json"
        )
    if rec.problems and rc == 0:
        status = "complete, with problems (see below)"
    mach = machine()
    ver = versions(a, rec.litellm_version)
    md, data, table = build_report(a, rec, b.servers, ver, mach, started, time.monotonic() - T0, status)
    write_outputs(md, data, a.results_dir)
    print()
    print("\n".join(table))
    print()
    log(f"wrote {a.results_dir / 'RESULTS.md'} and {a.results_dir / 'results.json'} ({status})")
    return rc


if __name__ == "__main__":
    sys.exit(main())

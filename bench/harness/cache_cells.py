"""Phase 3, the response cache: hits per tier beside LiteLLM's own cache, and the CPU of a miss.

Every sluicegate answer names the tier that served it in ``X-Sluicegate-Cache``; LiteLLM sends
``x-litellm-cache-key`` only on a hit. Before a system is measured its key is warmed and five
answers in a row must carry the expected value, or the system is not measured (and the report
says why). A peer (LiteLLM) whose cache answers only some of them is measured all the same when
at least half of its check answers carried its header (`PEER_SHARE`): its local cache is per
worker process and answers intermittently, and the report shows and flags the share. During the
measured runs wrk counts the header on every response, so the report also shows which share of
the answers really came from the expected tier.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import socket
import urllib.error
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .common import PROMPT, WORK, BenchError, log
from .processes import http
from .record import Record
from .systems import CACHE_OFF_YAML, System
from .wrk import COUNTER, write_counting_lua

if TYPE_CHECKING:
    from .scenarios import Bench

CACHE_HEADER = "x-sluicegate-cache"
LITELLM_HIT_HEADER = "x-litellm-cache-key"  # LiteLLM sends it on cache hits only
LITELLM_HIT = "(present)"  # what a LiteLLM answer with that header counts as
NO_HEADER = "(none)"  # the Lua scripts' name for an answer without the header
CACHE_CONC = 50
SG_REDIS_URL = "redis://127.0.0.1:6379/14"
LITELLM_REDIS = ("127.0.0.1", 6379)
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
MIN_SHARE = 0.99  # a cell where fewer answers carry the expected header is flagged
CHECK_STREAK = 5  # answers in a row with the expected header before a system is measured
CHECK_TRIES = 30
PEER_SHARE = 0.5  # a peer is measured when this share of its check answers carried the header

HIT, MISS = "cache-hit", "cache-miss"
# temperature 0: an answer to a request with temperature > 0 is not cached by default
# For the Redis and SQL tiers the hit cell cycles through HIT_POOL warmed prompts, so that the 50
# requests in flight at once ask different entries: a single hot key would be answered by each
# gateway's single-flight (one lookup shared by every identical request in flight) and not
# measure the tier's lookups. The in-process tier (which answers before any flight) and LiteLLM
# get one hot prompt, as before.
HIT_POOL = 256
POOLED_TIERS = frozenset({"redis", "sql-sqlite", "sql-postgresql"})
HIT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": f"{PROMPT} (#{COUNTER})"}],
    "temperature": 0,
}
MISS_BODY: dict[str, Any] = dict(HIT_BODY, messages=[{"role": "user", "content": f"{PROMPT} ({COUNTER})"}])

# Each tier is measured alone: the usage ledger (a stage of its own, which writes a row per
# request) is off, and the `+ ledger` systems show what it adds with the embedded SQLite.
_NO_LEDGER = "ledger:\n  enabled: false\n"
_MEMORY = "cache:\n  memory:\n    enabled: true\n  redis:\n    enabled: false\n  sql:\n    enabled: false\n"
_ONLY_MEMORY = _MEMORY + _NO_LEDGER
_ONLY_REDIS = "cache:\n  memory:\n    enabled: false\n  sql:\n    enabled: false\n" + _NO_LEDGER
_ONLY_SQL = "cache:\n  memory:\n    enabled: false\n  redis:\n    enabled: false\n" + _NO_LEDGER


@dataclass(frozen=True)
class CacheSystem:
    """A system of the cache phase: its config and the header value its answers must carry."""

    key: str
    label: str
    kind: str  # "sluicegate" or "litellm"
    tier: str  # memory, redis, sql-sqlite, sql-postgresql, off, litellm-local, litellm-redis
    expect: str  # the expected header value on a measured answer (for the hit cells)
    yaml: str = ""
    database_url: str | None = None  # sluicegate: None is a fresh SQLite file of its own


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _pg_address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def _sluicegate(tier: str, expect: str, yaml: str, database_url: str | None = None) -> CacheSystem:
    name = tier.replace("sql-", "sql (") + (")" if tier.startswith("sql-") else "")
    name = name.replace("-ledger", " + ledger")
    return CacheSystem(
        f"sg-cache-{tier}", f"sluicegate cache: {name}", "sluicegate", tier, expect, yaml, database_url
    )


def _litellm(version: str | None, kind: str, params: dict[str, str | int]) -> CacheSystem:
    # litellm_settings: {cache: true, cache_params: {type: KIND, ...PARAMS}}
    yaml = "litellm_settings:\n  cache: true\n  cache_params:\n" + "".join(
        f"    {k}: {v}\n" for k, v in {"type": kind, **params}.items()
    )
    label = f"litellm {version} cache: {kind}"
    return CacheSystem(f"litellm-cache-{kind}", label, "litellm", f"litellm-{kind}", LITELLM_HIT, yaml)


def hit_systems(
    args: argparse.Namespace, litellm_version: str | None, problems: list[str]
) -> list[CacheSystem]:
    """The systems of the hit cells that can run here; the others are listed in ``problems``."""
    redis_up = _reachable(*LITELLM_REDIS)
    out = [
        _sluicegate("memory", "hit-memory", _ONLY_MEMORY),
        _sluicegate("memory-ledger", "hit-memory", _MEMORY),
    ]
    if redis_up:
        out.append(
            _sluicegate("redis", "hit-redis", f"redis:\n  url: {json.dumps(SG_REDIS_URL)}\n" + _ONLY_REDIS)
        )
    else:
        problems.append(f"cache cells: no Redis at {SG_REDIS_URL}; the Redis cells were skipped")
    out.append(_sluicegate("sql-sqlite", "hit-sql", _ONLY_SQL))
    if args.cache_pg_url and _reachable(*_pg_address(args.cache_pg_url)):
        out.append(_sluicegate("sql-postgresql", "hit-sql", _ONLY_SQL, args.cache_pg_url))
    elif args.cache_pg_url:
        problems.append(f"cache cells: no PostgreSQL at {args.cache_pg_url}; that cell was skipped")
    if not args.no_litellm:
        out.append(_litellm(litellm_version, "local", {}))
        if redis_up:
            host, port = LITELLM_REDIS
            out.append(_litellm(litellm_version, "redis", {"host": host, "port": port}))
    return out


# With the cache off the gateway has no cache stage, and its answers carry no cache header.
MISS_SYSTEMS = (
    _sluicegate("off", NO_HEADER, CACHE_OFF_YAML + _NO_LEDGER),
    _sluicegate("off-ledger", NO_HEADER, CACHE_OFF_YAML),
)


def sluicegate_cache_yaml(spec: CacheSystem) -> str:
    """The YAML a cache system adds to the bench config: its own data folder and database."""
    folder = WORK / "cache" / spec.key
    url = spec.database_url
    if url is None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("sluicegate.db", "sluicegate.db-wal", "sluicegate.db-shm"):
            (folder / name).unlink(missing_ok=True)  # start from an empty cache
        url = f"sqlite+aiosqlite:///{folder / 'sluicegate.db'}"
    return f"data_dir: {json.dumps(str(folder))}\ndatabase:\n  url: {json.dumps(url)}\n" + spec.yaml


def run_cache_phase(bench: Bench, mock: System) -> None:
    """Hit cells for every tier and LiteLLM's caches, then the miss cell against cache off."""
    log(f"phase 3: response cache, c={CACHE_CONC}")
    rec = bench.rec
    started: dict[str, tuple[System, CacheSystem]] = {}
    try:
        for spec in hit_systems(bench.a, rec.litellm_version, rec.problems):
            _start(bench, spec, mock, started)
        _measure(bench, HIT, HIT_BODY, list(started.values()), expect_of=lambda spec: spec.expect)
        # The miss cell keeps every sluicegate tier (the target is the in-process one's; the
        # Redis and SQL rows show what a shared tier adds to a miss) and drops LiteLLM.
        for key in [k for k, (_s, spec) in started.items() if spec.kind != "sluicegate"]:
            bench.launcher.stop(started.pop(key)[0])
        for spec in MISS_SYSTEMS:
            _start(bench, spec, mock, started)
        # every request distinct: with the cache on each must be a miss; with it off, no header
        _measure(bench, MISS, MISS_BODY, list(started.values()), expect_of=_miss_expect)
    finally:
        for s, _spec in started.values():
            bench.launcher.stop(s)


def _miss_expect(spec: CacheSystem) -> str:
    return spec.expect if spec.tier.startswith("off") else "miss"


def _start(
    bench: Bench, spec: CacheSystem, mock: System, started: dict[str, tuple[System, CacheSystem]]
) -> None:
    header = CACHE_HEADER if spec.kind == "sluicegate" else LITELLM_HIT_HEADER
    bench.rec.cache_systems[spec.label] = {"tier": spec.tier, "expect": spec.expect, "header": header}
    try:
        if spec.kind == "litellm":
            s = bench.launcher.start_litellm(spec.key, mock, label=spec.label, extra_yaml=spec.yaml)
        else:
            yaml = sluicegate_cache_yaml(spec)
            s = bench.launcher.start_sluicegate(spec.key, None, mock, label=spec.label, extra_yaml=yaml)
    except BenchError as e:
        # one tier that does not start (a database, say) leaves the others to measure
        bench.rec.problems.append(f"cache cells: {spec.label} did not start: {str(e)[:600]}")
        log(f"WARNING {spec.label} did not start: {e}")
        return
    started[spec.key] = (s, spec)


def _measure(
    bench: Bench,
    scenario: str,
    body: dict[str, Any],
    pairs: list[tuple[System, CacheSystem]],
    *,
    expect_of: Callable[[CacheSystem], str],
) -> None:
    measured: list[System] = []
    expected: dict[str, str] = {}
    for s, spec in pairs:
        expect = expect_of(spec)
        header = bench.rec.cache_systems[spec.label]["header"]
        pool = HIT_POOL if scenario == HIT and spec.tier in POOLED_TIERS else None
        # One hot prompt for the in-process tier and LiteLLM; the pool for the shared tiers.
        mine = body if pool or scenario == MISS else _pooled(body, 0)
        # the cache-off system has nothing to verify: its row is the baseline whatever it says
        if spec.tier.startswith("off") or check_tier(bench.rec, s, scenario, mine, header, expect, pool):
            distinct = scenario == MISS
            s.lua[scenario] = write_counting_lua(
                f"{s.key}-{scenario}", mine, s.token, header, distinct=distinct, pool=pool
            )
            measured.append(s)
            expected[s.label] = expect
    if measured:
        bench.run_cells(scenario, measured, _smoke_body(body), None, False, [CACHE_CONC], group="cache")
    flag_shares(bench.rec, scenario, expected)


def _smoke_body(body: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(body)
    return json.loads(text.replace(COUNTER, "smoke-" + secrets.token_hex(6))) if COUNTER in text else body


def _pooled(body: dict[str, Any], index: int) -> dict[str, Any]:
    """The hit cell's prompt number ``index``."""
    return json.loads(json.dumps(body).replace(COUNTER, str(index)))


def header_value(headers: dict[str, str], header: str) -> str:
    """The value an answer counts as: the header's value, `LITELLM_HIT`, or `NO_HEADER`."""
    value = headers.get(header)
    if value is None:
        return NO_HEADER
    return LITELLM_HIT if header == LITELLM_HIT_HEADER else value


def check_tier(
    rec: Record,
    s: System,
    scenario: str,
    body: dict[str, Any],
    header: str,
    expect: str,
    pool: int | None = None,
) -> bool:
    """Warm the key (every prompt of a ``pool``), then require `CHECK_STREAK` answers in a row
    that carry ``expect`` (for a peer, at least `PEER_SHARE` of the answers)."""
    answers: list[str] = []
    streak = 0
    if pool:
        for index in range(pool):
            with contextlib.suppress(OSError, urllib.error.URLError):
                http(
                    "POST",
                    s.url + "/v1/chat/completions",
                    json.dumps(_pooled(body, index)).encode(),
                    {"Content-Type": "application/json", "Authorization": f"Bearer {s.token}"},
                    timeout=30,
                )
    for attempt in range(CHECK_TRIES):
        pooled = _pooled(body, attempt % pool) if pool else body
        req = _smoke_body(body) if scenario == MISS else pooled
        try:
            st, hdr, _data = http(
                "POST",
                s.url + "/v1/chat/completions",
                json.dumps(req).encode(),
                {"Content-Type": "application/json", "Authorization": f"Bearer {s.token}"},
                timeout=30,
            )
        except (OSError, urllib.error.URLError) as e:
            answers.append(f"error {e}")
            break
        value = header_value(hdr, header)
        answers.append(f"{st} {value}")
        streak = streak + 1 if st == 200 and value == expect else 0
        if streak >= CHECK_STREAK:
            break
    hits = sum(1 for answer in answers if answer == f"200 {expect}")
    ok = streak >= CHECK_STREAK or (s.kind != "sluicegate" and hits >= PEER_SHARE * len(answers) > 0)
    seen = dict(Counter(answers))
    rec.tier_checks.append(
        {
            "system": s.label,
            "scenario": scenario,
            "header": header,
            "expected": expect,
            "ok": ok,
            "answers": seen,
        }
    )
    if ok:
        log(f"  {s.label}: {header}: {expect} verified ({sum(seen.values())} requests)")
        return True
    hint = ""
    if all(a.endswith(NO_HEADER) for a in answers):
        hint = f" (no {header} header at all: is the cache in this build?)"
    msg = f"{s.label} / {scenario}: expected {header}: {expect}, got {seen}{hint}; not measured"
    rec.problems.append(msg)
    log("WARNING " + msg)
    return False


def expected_share(counts: dict[str, int], expect: str) -> float | None:
    """The share of answers counted by wrk that carried ``expect``."""
    total = sum(counts.values())
    return counts.get(expect, 0) / total if total else None


def flag_shares(rec: Record, scenario: str, expected: dict[str, str]) -> None:
    """Flag the measured runs in which fewer than `MIN_SHARE` of the answers carried the expected header."""
    for r in rec.cells:
        if r["group"] != "cache" or r["scenario"] != scenario or r["system"] not in expected:
            continue
        expect = expected[r["system"]]
        counts = dict(r.get("header_counts", {}))
        if rec.cache_systems[r["system"]]["header"] == LITELLM_HIT_HEADER:
            counts = {
                LITELLM_HIT: sum(v for k, v in counts.items() if k != NO_HEADER),
                NO_HEADER: counts.get(NO_HEADER, 0),
            }
        share = expected_share(counts, expect)
        r["expected_header"] = expect
        r["expected_share"] = None if share is None else round(share, 5)
        r["expected_answers"] = [counts.get(expect, 0), sum(counts.values())]
        if rec.cache_systems[r["system"]]["tier"].startswith("off"):
            continue  # the baseline: whatever it answers
        if share is None or share < MIN_SHARE:
            got = "no header counts from wrk" if share is None else f"{share:.1%} {expect}"
            # The folded counts (LiteLLM's hit header carries the key, one value per entry).
            shown = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:4])
            flag = f"only {got} (counts {shown}{', …' if len(counts) > 4 else ''})"
            r["flags"].append(flag)
            rec.problems.append(f"{r['system']} {scenario} round {r['round']}: {flag}")

"""The cache cells in RESULTS.md: their tables, header checks and targets."""

from __future__ import annotations

from typing import Any

from .cache_cells import CACHE_CONC, HIT, MIN_SHARE, MISS
from .record import Record
from .summary import Summary, fms, fnum
from .targets import Target, verdict

TARGET_HIT_MEMORY_RPS = 20_000.0
TARGET_HIT_MEMORY_RATIO = 70.0  # against LiteLLM's local (in-memory) cache
TARGET_HIT_REDIS_RPS = 10_000.0
TARGET_HIT_SQL_RPS = 3_000.0
TARGET_MISS_CPU_RATIO = 1.10  # CPU per request of a miss ÷ that of the pass-through (cache off)


def _label(rec: Record, tier: str) -> str | None:
    return next((lb for lb, v in rec.cache_systems.items() if v["tier"] == tier), None)


def _cell(summ: Summary, scenario: str, label: str | None) -> dict[str, Any] | None:
    return summ.get(("cache", scenario, CACHE_CONC, label)) if label else None


def _answers(rec: Record, scenario: str, label: str) -> tuple[int, int]:
    """(answers with the expected header, answers counted) over the rounds of one cell."""
    got = total = 0
    for r in rec.cells:
        if (r["group"], r["scenario"], r["system"]) == ("cache", scenario, label):
            n, t = r.get("expected_answers", (0, 0))
            got, total = got + n, total + t
    return got, total


def _verified(rec: Record, scenario: str, label: str) -> bool:
    got, total = _answers(rec, scenario, label)
    return total > 0 and got / total >= MIN_SHARE


def _why_not(rec: Record, scenario: str, label: str | None) -> str:
    if label is None:
        return "not measured (skipped, see problems)"
    for c in rec.tier_checks:
        if (c["system"], c["scenario"]) == (label, scenario) and not c["ok"]:
            return f"not measured: header check expected {c['expected']}, got {c['answers']}"
    return "not measured"


def cache_targets(rec: Record, summ: Summary) -> list[Target]:
    """The cache cells' targets; a hit target passes only if ≥ 99 % of the answers were hits."""
    out: list[Target] = []
    mem = _label(rec, "memory")
    for tier, what, target in (
        ("memory", "in-process", TARGET_HIT_MEMORY_RPS),
        ("redis", "Redis (near-cache off)", TARGET_HIT_REDIS_RPS),
        ("sql-sqlite", "SQL (SQLite)", TARGET_HIT_SQL_RPS),
        ("sql-postgresql", "SQL (PostgreSQL)", TARGET_HIT_SQL_RPS),
    ):
        label = _label(rec, tier)
        if tier == "sql-postgresql" and label is None:
            continue  # an optional cell
        name = f"cache hit {what} c={CACHE_CONC}: ≥ {target:,.0f} req/s"
        c = _cell(summ, HIT, label)
        if c is None or c["rps"] is None or label is None:
            out.append((name, _why_not(rec, HIT, label), "MISS"))
            continue
        got, total = _answers(rec, HIT, label)
        share = f"{got / total:.1%} {rec.cache_systems[label]['expect']}" if total else "no header counts"
        ok = c["rps"] >= target and _verified(rec, HIT, label)
        out.append((name, f"{c['rps']:,.0f} req/s ({share})", verdict(ok, c)))
        if tier == "memory":
            out.append(_ratio_target(rec, summ, label, c))
    out.append(_miss_target(rec, summ, mem))
    return out


def _ratio_target(rec: Record, summ: Summary, mem: str, c: dict[str, Any]) -> Target:
    name = f"cache hit in-process c={CACHE_CONC}: ≥ {TARGET_HIT_MEMORY_RATIO:.0f}x LiteLLM's local cache"
    ll = _label(rec, "litellm-local")
    lc = _cell(summ, HIT, ll)
    if ll is None or not (lc and lc["rps"]):
        return (name, "LiteLLM not measured" if ll is None else _why_not(rec, HIT, ll), "n/a")
    ratio = c["rps"] / lc["rps"]
    ok = ratio >= TARGET_HIT_MEMORY_RATIO and _verified(rec, HIT, mem) and _verified(rec, HIT, ll)
    return (name, f"{ratio:,.1f}x ({c['rps']:,.0f} vs {lc['rps']:,.0f})", verdict(ok, c, lc))


def _miss_target(rec: Record, summ: Summary, mem: str | None) -> Target:
    name = (
        f"cache miss c={CACHE_CONC}: CPU per request ≤ {TARGET_MISS_CPU_RATIO:.2f}x pass-through (cache off)"
    )
    miss, off = _cell(summ, MISS, mem), _cell(summ, MISS, _label(rec, "off"))
    if not (miss and off and miss["cpu_s_per_1k"] and off["cpu_s_per_1k"]) or mem is None:
        return (name, _why_not(rec, MISS, mem), "MISS")
    ratio = miss["cpu_s_per_1k"] / off["cpu_s_per_1k"]
    measured = f"{ratio:.2f}x ({miss['cpu_s_per_1k']:.3f} vs {off['cpu_s_per_1k']:.3f} CPU s/1k req)"
    return (name, measured, verdict(ratio <= TARGET_MISS_CPU_RATIO and _verified(rec, MISS, mem), miss, off))


def cache_section(rec: Record, summ: Summary) -> list[str]:
    """The markdown of the cache cells, or nothing when they did not run."""
    if not rec.cache_systems:
        return []
    L: list[str] = []
    w = L.append
    w(f"## Response cache, c={CACHE_CONC}: hits per tier, and the cost of a miss")
    w("")
    w(
        "Every sluicegate answer names its tier in `X-Sluicegate-Cache`; LiteLLM sends `x-litellm-cache-"
        "key` on hits only. Each system's key is warmed and 5 answers in a row must carry the expected "
        "value before it is measured (LiteLLM: at least half of 30, since its local cache lives in each "
        "worker process and answers intermittently). `expected answers` = the share of all measured "
        "answers, counted by wrk on every response, that carried it. In the hit cell the in-process tier "
        "and LiteLLM repeat one request (temperature 0), and the Redis and SQL tiers cycle through 256 "
        "warmed prompts, so that the requests in flight at once do not share one lookup through single-"
        "flight; the miss cell makes every request distinct (a counter in the prompt) and compares each "
        "tier with the cache switched off (the target is the in-process tier's). Medians over rounds; CPU"
        " as above."
    )
    w("")
    ll = _cell(summ, HIT, _label(rec, "litellm-local"))
    off = _cell(summ, MISS, _label(rec, "off"))
    hdr = "| cell | system | expected answers | req/s | p50 ms | p99 ms | CPU s/1k req | compared | errors |"
    w(hdr + " req/s per round | other CPU % |")
    w("|" + "---|" * 11)
    for scenario in (HIT, MISS):
        for label, meta in rec.cache_systems.items():
            c = _cell(summ, scenario, label)
            if c is None:
                continue
            got, total = _answers(rec, scenario, label)
            share = f"{got / total:.1%} {meta['expect'] if scenario == HIT else _miss_word(meta)}"
            share = share if total else "-"
            compared = "-"
            if scenario == HIT and ll and ll["rps"] and meta["tier"] != "litellm-local" and c["rps"]:
                compared = f"{c['rps'] / ll['rps']:,.1f}x LiteLLM local req/s"
            if (
                scenario == MISS
                and off
                and off["cpu_s_per_1k"]
                and meta["tier"] != "off"
                and c["cpu_s_per_1k"]
            ):
                compared = f"{c['cpu_s_per_1k'] / off['cpu_s_per_1k']:.2f}x cache-off CPU"
            err = str(c["errors"]) + (" ⚠ " + "; ".join(c["flags"]) if c["flags"] else "")
            w(
                f"| {scenario} | {label} | {share} | {fnum(c['rps'])} | {fms(c['p50_ms'])} | "
                f"{fms(c['p99_ms'])} | {fnum(c['cpu_s_per_1k'], '{:.3f}')} | {compared} | {err} | "
                f"{', '.join(f'{x:,.0f}' for x in c['rps_all'])} | {c['foreign_cpu_pct_max']:.0f} |"
            )
    w("")
    w("Header checks before measuring:")
    w("")
    for chk in rec.tier_checks:
        ok = "ok" if chk["ok"] else "FAILED (not measured)"
        w(
            f"- {ok}: {chk['system']} / {chk['scenario']}: expected `{chk['header']}: {chk['expected']}`, "
            f"answers {chk['answers']}"
        )
    w("")
    return L


def _miss_word(meta: dict[str, str]) -> str:
    return meta["expect"] if meta["tier"].startswith("off") else "miss"

"""The workload's results: hit ratios per tier and feature, latencies of hits and misses,
upstream calls and tokens saved, as a markdown section and as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

TARGET_HIT_RATIO = 0.70
TARGET_P95_CUT = 0.80  # the p95 of hits at least this much below the p95 of misses


@dataclass
class Sample:
    """One request of the workload and what came back."""

    feature: str
    org: str
    user: str
    prompt: int  # index in the feature's pool
    t: float  # seconds since the measured window opened (negative: warm-up)
    status: int  # 0: no answer (connection error, timeout)
    cache: str  # X-Sluicegate-Cache, or "(none)"
    total_s: float
    ttft_s: float | None = None  # streams: first content chunk
    tokens: int = 0  # usage.total_tokens of the answer
    error: str = ""


def is_hit(cache: str) -> bool:
    """Whether an X-Sluicegate-Cache value means the answer came from the cache."""
    return cache.startswith("hit-") or cache == "stale"


def pct(xs: list[float], q: float) -> float | None:
    """The nearest-rank percentile ``q`` (0-100) of ``xs``, or None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def _latency(samples: list[Sample], attr: str) -> dict[str, float | None]:
    xs = [getattr(s, attr) for s in samples if getattr(s, attr) is not None]
    return {f"p{q}": pct(xs, q) for q in (50, 95, 99)}


def _group(samples: list[Sample], upstream: int | None, stream: bool) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200]
    hits = [s for s in ok if is_hit(s.cache)]
    misses = [s for s in ok if not is_hit(s.cache)]
    tiers: dict[str, int] = {}
    for s in ok:
        tiers[s.cache] = tiers.get(s.cache, 0) + 1
    out: dict[str, Any] = {
        "requests": len(samples),
        "answered": len(ok),
        "errors": len(samples) - len(ok),
        "hit_ratio": len(hits) / len(ok) if ok else None,
        "tiers": dict(sorted(tiers.items(), key=lambda kv: -kv[1])),
        "hit_total_s": _latency(hits, "total_s"),
        "miss_total_s": _latency(misses, "total_s"),
        "tokens_saved": sum(s.tokens for s in hits),
        "tokens_served": sum(s.tokens for s in ok),
        # without the mocks' logs: every answer that was not served from the cache went upstream
        "upstream_calls": upstream if upstream is not None else len(misses),
    }
    if stream:
        out["hit_ttft_s"] = _latency(hits, "ttft_s")
        out["miss_ttft_s"] = _latency(misses, "ttft_s")
    return out


def summarize(
    samples: list[Sample], features: list[tuple[str, bool]], upstream: dict[str, int] | None, duration: float
) -> dict[str, Any]:
    """Everything the report shows, as plain data."""
    by_feature = {
        name: _group(
            [s for s in samples if s.feature == name], upstream.get(name) if upstream else None, stream
        )
        for name, stream in features
    }
    total_up = sum(upstream.values()) if upstream else None
    late = [s for s in samples if s.t >= duration * 2 / 3]
    return {
        "overall": _group(samples, total_up, False),
        "last_third": _group(late, None, False),
        "features": by_feature,
    }


def _cut(hit: float | None, miss: float | None) -> float | None:
    return None if hit is None or not miss else 1 - hit / miss


def targets(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/MISS) for the hit ratio and the p95 of hits against misses."""
    out = []
    overall = summary["overall"]
    ratio = overall["hit_ratio"]
    late = summary["last_third"]["hit_ratio"]
    measured = "-" if ratio is None else f"{ratio:.1%} (last third of the run: {_p(late)})"
    ok = ratio is not None and ratio > TARGET_HIT_RATIO
    out.append((f"hit ratio > {TARGET_HIT_RATIO:.0%}", measured, "PASS" if ok else "MISS"))
    rows = [("all features, total time", overall, "total_s")]
    rows += [(f"{n}, total time", g, "total_s") for n, g in summary["features"].items()]
    rows += [
        (f"{n}, time to first token", g, "ttft_s")
        for n, g in summary["features"].items()
        if "hit_ttft_s" in g
    ]
    for label, g, attr in rows:
        hit, miss = g[f"hit_{attr}"]["p95"], g[f"miss_{attr}"]["p95"]
        cut = _cut(hit, miss)
        measured = (
            "not enough hits and misses" if cut is None else f"{cut:.0%} below ({_s(hit)} vs {_s(miss)})"
        )
        verdict = "PASS" if cut is not None and cut >= TARGET_P95_CUT else "MISS"
        out.append((f"p95 of hits ≥ {TARGET_P95_CUT:.0%} below p95 of misses: {label}", measured, verdict))
    return out


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.0f} ms"


def _lat(d: dict[str, float | None]) -> str:
    return " / ".join(_s(d[k]) for k in ("p50", "p95", "p99"))


def markdown(data: dict[str, Any]) -> str:
    """The section to paste into RESULTS.md."""
    cfg, summ = data["config"], data["summary"]
    o = summ["overall"]
    L = [
        "## Realistic workload (bench/workload.py)",
        "",
        f"- command: `{cfg['command']}`; date (UTC) {data['date_utc']}; "
        f"measured window {cfg['duration_s']:g} s after {cfg['warmup_s']:g} s of warm-up",
        f"- {cfg['users']} users ({cfg['orgs']} orgs x {cfg['users_per_org']}), think time exponential, mean "
        f"{cfg['think_s']:g} s; prompts Zipf s={cfg['zipf_s']:g} over a pool of {cfg['pool']} per feature; "
        f"feature mix {cfg['mix']}",
        f"- gateway: {cfg['gateway']}",
        f"- providers: {cfg['providers']}",
        f"- {o['requests']:,} requests, {o['errors']} errors; upstream calls {_n(o['upstream_calls'])} "
        f"({cfg['upstream_source']}); tokens saved {o['tokens_saved']:,} of {o['tokens_served']:,} served",
        "",
        "| target | measured | result |",
        "|---|---|---|",
        *[f"| {t} | {m} | {r} |" for t, m, r in data["targets"]],
        "",
        "| feature | requests | hit ratio | answers by X-Sluicegate-Cache | upstream calls | tokens saved | "
        "hits p50 / p95 / p99 | misses p50 / p95 / p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups = [*summ["features"].items(), ("all", o)]
    for name, g in groups:
        tiers = ", ".join(f"{k} {v:,}" for k, v in g["tiers"].items())
        L.append(
            f"| {name} | {g['requests']:,} | {_p(g['hit_ratio'])} | {tiers} | {_n(g['upstream_calls'])} | "
            f"{g['tokens_saved']:,} | {_lat(g['hit_total_s'])} | {_lat(g['miss_total_s'])} |"
        )
        if "hit_ttft_s" in g:
            ttft = f"{_lat(g['hit_ttft_s'])} | {_lat(g['miss_ttft_s'])}"
            L.append(f"| {name}, time to first token | | | | | | {ttft} |")
    L += [
        "",
        f"Latencies are client-side, from sending the request to the end of the answer (streams: to the "
        f"first content chunk on the `time to first token` row). The hit ratio counts answered requests; "
        f"the last third of the run, with a warmer cache, had {_p(summ['last_third']['hit_ratio'])}.",
        "",
    ]
    return "\n".join(L)


def _n(x: int | None) -> str:
    return "-" if x is None else f"{x:,}"


def as_json(samples: list[Sample]) -> list[dict[str, Any]]:
    """The raw samples, for results JSON."""
    return [asdict(s) for s in samples]

"""The acceptance targets of the main cells (the issue's numbers) and their verdicts."""

from __future__ import annotations

from typing import Any

from .record import Record
from .summary import Summary

TARGET_RPS_0MS_C50 = 8000.0
TARGET_RATIO_0MS_C50 = 40.0
TARGET_OVERHEAD_P50_MS = 0.5
TARGET_OVERHEAD_P99_MS = 3.0
TARGET_RATIO_STREAM_C50 = 10.0
TARGET_RSS_MB = 150.0

Target = tuple[str, str, str]  # (target, measured, result)


def flag(*cs: dict[str, Any] | None) -> str:
    """A note naming the flags of the cells a verdict rests on, or ""."""
    fl = [f for c in cs if c for f in c["flags"]]
    return f" (cell flagged: {'; '.join(sorted(set(fl)))})" if fl else ""


def verdict(ok: bool, *cs: dict[str, Any] | None) -> str:
    """PASS when ``ok`` and no sluicegate cell had errors, else MISS; plus the cells' flags."""
    bad = any(c and c["kind"] == "sluicegate" and c["errors"] for c in cs)
    return ("PASS" if ok and not bad else "MISS") + flag(*cs)


def ratio_target(what: str, target: float, g: dict[str, Any] | None, l_: dict[str, Any] | None) -> Target:
    """sluicegate's req/s at least ``target`` times LiteLLM's."""
    label = f"{what}: ≥ {target:.0f}x LiteLLM"
    if not (g and l_ and l_["rps"] and g["rps"] is not None):
        return (label, "LiteLLM not measured", "n/a")
    ratio = g["rps"] / l_["rps"]
    measured = f"{ratio:,.1f}x ({g['rps']:,.0f} vs {l_['rps']:,.0f})"
    return (label, measured, verdict(ratio >= target, g, l_))


def targets(rec: Record, summ: Summary, primary: str, ll: str | None) -> list[Target]:
    """The main cells' targets, each with what was measured and PASS, MISS or n/a."""
    out: list[Target] = []

    def cell(scen: str, sysl: str | None) -> dict[str, Any] | None:
        return summ.get(("", scen, 50, sysl)) if sysl else None

    g, l_ = cell("pass-0ms", primary), cell("pass-0ms", ll)
    if g and g["rps"] is not None:
        out.append(
            (
                f"pass-through 0 ms c=50: ≥ {TARGET_RPS_0MS_C50:,.0f} req/s",
                f"{g['rps']:,.0f} req/s",
                verdict(g["rps"] >= TARGET_RPS_0MS_C50, g),
            )
        )
    else:
        out.append((f"pass-through 0 ms c=50: ≥ {TARGET_RPS_0MS_C50:,.0f} req/s", "not measured", "MISS"))
    out.append(ratio_target("pass-through 0 ms c=50", TARGET_RATIO_0MS_C50, g, l_))
    out.extend(_overhead_targets(cell("pass-50ms", primary), cell("pass-50ms", "mock direct (50 ms)")))
    out.append(
        ratio_target(
            "streaming c=50", TARGET_RATIO_STREAM_C50, cell("stream-8", primary), cell("stream-8", ll)
        )
    )
    out.append(_rss_target(rec, primary))
    return out


def _overhead_targets(g: dict[str, Any] | None, m: dict[str, Any] | None) -> list[Target]:
    if not (g and m and None not in (g["p50_ms"], m["p50_ms"], g["p99_ms"], m["p99_ms"])):
        return [("50 ms c=50 overhead p50/p99", "not measured", "MISS")]
    o50, o99 = g["p50_ms"] - m["p50_ms"], g["p99_ms"] - m["p99_ms"]
    return [
        (
            f"50 ms c=50 overhead p50 ≤ {TARGET_OVERHEAD_P50_MS} ms",
            f"{o50:+.3f} ms ({g['p50_ms']:.3f} vs mock {m['p50_ms']:.3f})",
            verdict(o50 <= TARGET_OVERHEAD_P50_MS, g, m),
        ),
        (
            f"50 ms c=50 overhead p99 ≤ {TARGET_OVERHEAD_P99_MS} ms",
            f"{o99:+.3f} ms ({g['p99_ms']:.3f} vs mock {m['p99_ms']:.3f})",
            verdict(o99 <= TARGET_OVERHEAD_P99_MS, g, m),
        ),
    ]


def _rss_target(rec: Record, primary: str) -> Target:
    # every process of the primary sluicegate that served traffic (≥ 2 % of its measured CPU)
    meta = rec.systems_meta.get(primary)
    if not meta:
        return (f"peak RSS ≤ {TARGET_RSS_MB:.0f} MB per worker", "not measured", "MISS")
    worst, who = 0.0, ""
    for inst in meta["instances"]:
        tot = sum(p["cpu_s_measured"] for p in inst["processes"]) or 1.0
        for p in inst["processes"]:
            serving = p["cpu_s_measured"] / tot >= 0.02 or len(inst["processes"]) == 1
            if serving and p["vmhwm_mb"] > worst:
                worst, who = p["vmhwm_mb"], f"pid {p['pid']} ({p['role']})"
    allmax = max((p["vmhwm_mb"] for i in meta["instances"] for p in i["processes"]), default=0.0)
    return (
        f"peak RSS ≤ {TARGET_RSS_MB:.0f} MB per worker",
        f"{worst:.1f} MB worst serving process, {who}; {allmax:.1f} MB worst of any process",
        "PASS" if 0 < worst <= TARGET_RSS_MB else "MISS",
    )

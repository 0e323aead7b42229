"""Medians over rounds, number formats, and the table printed at the end of a run."""

from __future__ import annotations

import statistics
from typing import Any

# (group, scenario, concurrency, system label) -> the medians of that cell
Summary = dict[tuple[str, str, int, str], dict[str, Any]]


def med(xs: list[float | None]) -> float | None:
    """The median of the values that are not None, or None."""
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


def summarize(cells: list[dict[str, Any]]) -> Summary:
    """Group the measured runs by cell and system, with medians over rounds."""
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["group"], c["scenario"], c["concurrency"], c["system"]), []).append(c)
    out = {}
    for k, rs in groups.items():
        out[k] = {
            "kind": rs[0]["kind"],
            "rounds": len(rs),
            "rps": med([r["rps"] for r in rs]),
            "rps_all": [round(r["rps"], 1) for r in rs],
            "p50_ms": med([r["p50_ms"] for r in rs]),
            "p99_ms": med([r["p99_ms"] for r in rs]),
            "cpu_s_per_1k": med([r["cpu_s_per_1k"] for r in rs]),
            "requests": sum(r["requests"] for r in rs),
            "errors": sum(r["error_count"] for r in rs),
            "flags": sorted({f for r in rs for f in r["flags"]}),
            "foreign_cpu_pct_max": max(r.get("foreign_cpu_pct", 0.0) for r in rs),
        }
    return out


def fnum(x: float | None, fmt: str = "{:,.0f}") -> str:
    """``x`` formatted, or "-"."""
    return "-" if x is None else fmt.format(x)


def fms(x: float | None) -> str:
    """Milliseconds: three decimals below 10, one above; "-" for None."""
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def order(kind: str) -> int:
    """Table order of a system kind: sluicegate, LiteLLM, the mock."""
    return {"sluicegate": 0, "litellm": 1, "mock": 2}.get(kind, 3)


def litellm_label(summ: Summary) -> str | None:
    """The label of the LiteLLM system of the main cells (not the cache cells), if it ran."""
    return next((k[3] for k in summ if summ[k]["kind"] == "litellm" and k[0] != "cache"), None)


def console_table(summ: Summary, ll: str | None) -> list[str]:
    """Every cell, one line each, for the terminal."""
    rows = [
        f"{'scenario':26s} {'c':>4s} {'system':30s} {'req/s':>10s} {'p50 ms':>9s} {'p99 ms':>9s} "
        f"{'cpu s/1k':>9s} {'ratio':>7s} {'err':>5s}"
    ]
    for k in sorted(summ, key=lambda k: (k[0], k[1], k[2], order(summ[k]["kind"]), k[3])):
        r = summ[k]
        llr = summ.get((k[0], k[1], k[2], ll)) if ll else None
        ratio = f"{r['rps'] / llr['rps']:.1f}x" if (r["kind"] == "sluicegate" and llr and llr["rps"]) else ""
        scen = k[1] + (f"/{k[0]}" if k[0] else "")
        rows.append(
            f"{scen:26s} {k[2]:>4d} {k[3][:30]:30s} {fnum(r['rps']):>10s} {fms(r['p50_ms']):>9s} "
            f"{fms(r['p99_ms']):>9s} {fnum(r['cpu_s_per_1k'], '{:.3f}'):>9s} {ratio:>7s} "
            f"{r['errors']:>5d}" + (" FLAGGED" if r["flags"] else "")
        )
    return rows

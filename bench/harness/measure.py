"""One measured wrk run, with the CPU, memory and machine noise around it; smoke requests."""

from __future__ import annotations

import argparse
import json
import shlex
import time
import urllib.error
from pathlib import Path
from typing import Any

from .common import NOISE_PCT, T0, log
from .processes import REG, http, run_capture
from .procfs import children_cpu_s, cpu_delta, harness_cpu_s, self_cpu_s, system_busy_s, tree_cpu
from .record import Record
from .systems import System
from .wrk import parse_wrk


class Meter:
    """Runs wrk against a system and records what it measured."""

    def __init__(self, args: argparse.Namespace, rec: Record) -> None:
        self.a = args
        self.rec = rec
        self.deadline = T0 + args.max_minutes * 60.0

    def check_idle(self, seconds: float = 2.0) -> None:
        """Record how busy the machine is before anything starts (and with --wait-idle, wait for
        it to calm down): numbers taken while tests or other servers run on the same cores are
        not worth quoting."""
        t_end = time.monotonic() + self.a.wait_idle
        while True:
            sys0, self0 = system_busy_s(), self_cpu_s()
            time.sleep(seconds)
            busy = max(0.0, system_busy_s() - sys0 - (self_cpu_s() - self0)) / seconds * 100
            if busy <= NOISE_PCT or time.monotonic() >= t_end:
                break
            log(f"machine busy ({busy:.0f}% of a core used by other processes); waiting (--wait-idle)")
        self.rec.idle_check_pct = round(busy, 1)
        if busy > NOISE_PCT:
            msg = f"machine busy before the run: {busy:.0f}% of a core used by other processes"
            self.rec.problems.append(msg)
            log("WARNING " + msg)

    def smoke_check(self, s: System, scenario: str, body: dict[str, Any]) -> None:
        """One request, its answer checked (JSON content, or SSE events ending in [DONE])."""
        url = s.url + "/v1/chat/completions"
        rec: dict[str, Any] = {"system": s.label, "scenario": scenario}
        try:
            st, hdr, data = http(
                "POST",
                url,
                json.dumps(body).encode(),
                {"Content-Type": "application/json", "Authorization": f"Bearer {s.token}"},
                timeout=30,
            )
            rec["status"] = st
            rec["content_type"] = hdr.get("content-type", "")
            ok = st == 200
            if body.get("stream"):
                events = [ln for ln in data.decode(errors="replace").splitlines() if ln.startswith("data:")]
                rec["sse_events"] = len(events)
                rec["done"] = bool(events) and events[-1].strip() == "data: [DONE]"
                ok = ok and rec["done"]
            else:
                try:
                    j = json.loads(data)
                    rec["content"] = j["choices"][0]["message"]["content"][:60]
                except (ValueError, KeyError, IndexError, TypeError):
                    ok = False
            if not ok:
                rec["body"] = data[:300].decode(errors="replace")
            rec["ok"] = ok
        except (OSError, urllib.error.URLError) as e:
            rec.update(ok=False, error=str(e))
        self.rec.smoke.append(rec)
        if not rec["ok"]:
            msg = f"smoke request failed: {s.label} / {scenario}: {json.dumps(rec)[:400]}"
            self.rec.problems.append(msg)
            log("WARNING " + msg)

    def settle(self, quiet_pct: float = 5.0, limit: float = 15.0) -> None:
        """Wait until everything the harness started is idle (a server may still be draining
        requests that the previous wrk run queued but no longer waits for)."""
        roots = [p.pid for _n, p in REG.procs if p.poll() is None]
        t_end = time.monotonic() + limit
        prev = harness_cpu_s(roots)
        while time.monotonic() < t_end:
            time.sleep(0.25)
            cur = harness_cpu_s(roots)
            if (cur - prev) / 0.25 * 100 < quiet_pct:
                return
            prev = cur
        self.rec.problems.append(f"processes still busy {limit:.0f}s after a run (settle timeout)")

    def wrk(
        self,
        s: System,
        scenario: str,
        lua: Path,
        conc: int,
        dur: float,
        *,
        record: bool = True,
        rnd: int = 0,
        extra: str = "",
    ) -> dict[str, Any] | None:
        """One wrk run against ``s``; with ``record``, the parsed result, also kept in the record."""
        if time.monotonic() > self.deadline:
            if record:
                self.rec.problems.append(
                    f"time budget (--max-minutes) exhausted: skipped {s.label} {scenario} c={conc}"
                )
            return None
        cmd = [
            "wrk",
            "-t1",
            f"-c{conc}",
            f"-d{dur:g}s",
            "--timeout",
            f"{self.a.wrk_timeout:g}s",
            "--latency",
            "-s",
            str(lua),
            s.url + "/v1/chat/completions",
        ]
        self.settle()
        own_roots = [p.pid for _n, p in REG.procs if p.pid != s.pid and p.poll() is None]
        own0 = harness_cpu_s(own_roots)
        sys0, kids0, self0 = system_busy_s(), children_cpu_s(), self_cpu_s()
        before = tree_cpu(s.pid)
        rc, out = run_capture(cmd, timeout=dur + self.a.wrk_timeout + 30)
        after = tree_cpu(s.pid)
        sys1, kids1, self1 = system_busy_s(), children_cpu_s(), self_cpu_s()
        own1 = harness_cpu_s(own_roots)
        if not record:
            return None
        self.rec.wrk_commands.append(shlex.join(cmd))
        r = parse_wrk(out)
        per_pid = cpu_delta(before, after)
        for pid, sec in per_pid.items():
            s.cpu_seen[pid] = s.cpu_seen.get(pid, 0.0) + sec
        cpu = sum(per_pid.values())
        # CPU that neither the server, the mocks, wrk nor this script used: other work on the machine
        foreign = (sys1 - sys0) - cpu - (own1 - own0) - (kids1 - kids0) - (self1 - self0)
        wall = r["duration_s"] or dur
        r["foreign_cpu_pct"] = round(max(0.0, foreign) / wall * 100, 1)
        r["sibling_cpu_pct"] = round(max(0.0, own1 - own0) / wall * 100, 1)  # our other servers, mocks
        s.sample_rss()
        r.update(
            system=s.label,
            kind=s.kind,
            scenario=scenario,
            concurrency=conc,
            round=rnd,
            duration_s_requested=dur,
            wrk_exit=rc,
            cpu_s=round(cpu, 3),
            cpu_s_per_1k=(round(cpu / r["requests"] * 1000, 4) if r["requests"] else None),
            cpu_by_pid={str(p): round(v, 3) for p, v in per_pid.items()},
            group=extra,
            server_alive=(s.proc is not None and s.proc.poll() is None),
        )
        if rc != 0 or r["requests"] == 0:
            r["wrk_output"] = out[-1500:]
        self._flag(s, scenario, conc, rnd, r)
        return r

    def _flag(self, s: System, scenario: str, conc: int, rnd: int, r: dict[str, Any]) -> None:
        flags = []
        if r["wrk_exit"] != 0:
            flags.append(f"wrk exit {r['wrk_exit']}")
        if r["requests"] == 0:
            flags.append("no requests completed")
        if r["error_count"]:
            flags.append("errors " + ", ".join(f"{k}={v}" for k, v in r["errors"].items() if v))
        if not r["server_alive"]:
            flags.append("server process died")
        r["flags"] = flags
        if r["foreign_cpu_pct"] > NOISE_PCT:
            self.rec.noise.append(
                f"{r['foreign_cpu_pct']:.0f}% during {s.label} {scenario} c={conc} round {rnd}"
            )
        self.rec.cells.append(r)
        p50 = f"{r['p50_ms']:.3f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.3f}" if r["p99_ms"] is not None else "-"
        log(
            f"  {scenario:10s} c={conc:<3d} r{rnd} {s.label:28s} {r['rps']:10.1f} req/s  p50 {p50} ms  "
            f"p99 {p99} ms  cpu/1k {r['cpu_s_per_1k']}" + (f"  FLAGGED: {'; '.join(flags)}" if flags else "")
        )
        if flags:
            self.rec.problems.append(f"{s.label} {scenario} c={conc} round {rnd}: {'; '.join(flags)}")

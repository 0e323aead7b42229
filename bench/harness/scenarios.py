"""The phases of a run and their cells: which systems meet which request, in which order."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from . import cache_cells
from .common import LITELLM_VENV, PROMPT, SLUICEGATE_TOKEN, WORK, BenchError, log
from .litellm_install import ensure_litellm
from .measure import Meter
from .record import Record
from .systems import Launcher, System
from .wrk import write_lua

BODY: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}


def sluicegate_servers(args: argparse.Namespace) -> list[str | None]:
    """The ``--server`` values to run sluicegate with; None is the gateway's default."""
    return [s.strip() for s in args.servers.split(",") if s.strip()] if args.servers else [None]


class Bench:
    """One run: starts the systems phase by phase and measures every cell."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.quick: bool = args.quick
        self.rec = Record()
        self.launcher = Launcher(args, self.rec)
        self.meter = Meter(args, self.rec)
        self.mocks: dict[str, System] = {}
        self.servers = sluicegate_servers(args)

    def run(self) -> int:
        """Run every phase; the results are in ``self.rec``."""
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "logs").mkdir(exist_ok=True)
        if not shutil.which("wrk"):
            raise BenchError("wrk not found: apt-get update && apt-get install -y wrk")
        sg = self.launcher.sg_cmd[0]
        if not shutil.which(sg) and not Path(sg).exists():
            raise BenchError(f"sluicegate CLI not found: {sg} (create the .venv first)")
        if not self.a.no_litellm:
            self.rec.litellm_version, self.rec.litellm_notes = ensure_litellm()
            log(f"LiteLLM {self.rec.litellm_version} ready in {LITELLM_VENV}")
        self.meter.check_idle()
        mock0 = self.launcher.start_mock("mock-0ms", 0, self.a.chunks)
        self.mocks = {"0": mock0}
        if not self.a.cache_only:
            self.mocks["50"] = self.launcher.start_mock("mock-50ms", 50, self.a.chunks)
            self.phase_0ms(mock0)
            self.phase_50ms(self.mocks["50"])
        if self.a.cache:
            # ---- phase 3: the response cache, hits by tier and the cost of a miss
            cache_cells.run_cache_phase(self, mock0)
        for m in self.mocks.values():
            self.launcher.stop(m)
        return 0

    def phase_0ms(self, mock0: System) -> None:
        """Phase 1, upstream at 0 ms: pass-through, streaming, and the server comparison."""
        log("phase 1: upstream 0 ms")
        concs = self.a.concurrency
        systems = self._start_systems("p0", mock0)
        try:
            self.run_cells("pass-0ms", systems, BODY, mock0, False, concs)
            self.run_cells("stream-8", systems, dict(BODY, stream=True), mock0, False, concs)
        finally:
            for s in systems:
                self.launcher.stop(s)
        if self.a.compare_servers:
            self.compare_servers(mock0, BODY)

    def phase_50ms(self, mock50: System) -> None:
        """Phase 2, upstream at 50 ms: the overhead against the mock itself."""
        log("phase 2: upstream 50 ms")
        # quick mode leaves LiteLLM out here: the 50 ms targets compare against the mock itself
        systems = self._start_systems("p50", mock50, with_litellm=not self.quick)
        try:
            self.run_cells("pass-50ms", systems, BODY, mock50, True, self.a.concurrency)
        finally:
            for s in systems:
                self.launcher.stop(s)

    def run_cells(
        self,
        scenario: str,
        systems: list[System],
        body: dict[str, Any],
        mock: System | None,
        mock_every_round: bool,
        concs: list[int],
        group: str = "",
    ) -> None:
        """Smoke-check and warm every system, then run each concurrency in rounds, A B A B."""
        for s in systems:
            if scenario not in s.lua:
                s.lua[scenario] = write_lua(f"{s.key}-{scenario}", body, s.token)
            self.meter.smoke_check(s, scenario, body)
            # warm-up (not recorded): first requests open pools, fill caches, import lazily
            self.meter.wrk(s, scenario, s.lua[scenario], min(10, max(concs)), self.a.warmup, record=False)
        mock_run: tuple[System, Path] | None = None
        if mock is not None:
            mock_run = (mock, write_lua(f"mock-{scenario}", body, SLUICEGATE_TOKEN))
            self.meter.smoke_check(mock, scenario, body)
        self.run_rounds(scenario, systems, concs, group, mock=mock_run, mock_every_round=mock_every_round)

    def run_rounds(
        self,
        scenario: str,
        systems: list[System],
        concs: list[int],
        group: str,
        *,
        mock: tuple[System, Path] | None = None,
        mock_every_round: bool = False,
    ) -> None:
        """The measured runs: every system in turn within a round, so drift hits all alike."""
        for conc in concs:
            for rnd in range(self.a.rounds):
                for s in systems:  # A B A B ... so drift hits every system alike
                    self.meter.wrk(s, scenario, s.lua[scenario], conc, self.a.duration, rnd=rnd, extra=group)
                if mock is not None and (mock_every_round or rnd == 0):
                    self.meter.wrk(
                        mock[0], scenario, mock[1], conc, self.a.mock_duration, rnd=rnd, extra=group
                    )

    def _start_systems(self, phase: str, mock: System, with_litellm: bool = True) -> list[System]:
        systems: list[System] = []
        try:
            for srv in self.servers:
                key = f"sluicegate-{srv or 'default'}-{phase}"
                systems.append(self.launcher.start_sluicegate(key, srv, mock))
            if with_litellm and not self.a.no_litellm:
                systems.append(self.launcher.start_litellm(f"litellm-{phase}", mock))
        except BaseException:
            for s in systems:
                self.launcher.stop(s)
            raise
        return systems

    def compare_servers(self, mock0: System, body: dict[str, Any]) -> None:
        """sluicegate under uvicorn and under granian, pass-through 0 ms, c=50."""
        log("server comparison: uvicorn vs granian, pass-through 0 ms, c=50")
        systems: list[System] = []
        try:
            for srv in ("uvicorn", "granian"):
                try:
                    systems.append(self.launcher.start_sluicegate(f"sluicegate-cmp-{srv}", srv, mock0))
                except BenchError as e:
                    self.rec.problems.append(
                        f"server comparison: --server {srv} did not start: {str(e)[:600]}"
                    )
                    log(f"WARNING --server {srv} did not start: {e}")
            if systems:
                self.run_cells("pass-0ms", systems, body, None, False, [50], group="server-compare")
        finally:
            for s in systems:
                self.launcher.stop(s)

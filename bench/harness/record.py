"""Everything one run records, from which the report is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    """The raw results of one run: wrk runs, commands, checks, problems."""

    cells: list[dict[str, Any]] = field(default_factory=list)  # one per measured wrk run
    commands: list[str] = field(default_factory=list)  # server command lines
    wrk_commands: list[str] = field(default_factory=list)
    smoke: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)  # runs during which other processes used > NOISE_PCT
    systems_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    idle_check_pct: float | None = None
    litellm_version: str | None = None
    litellm_notes: list[str] = field(default_factory=list)
    # cache cells: label -> {"tier", "expect", "header"}, and the header check before each is measured
    cache_systems: dict[str, dict[str, str]] = field(default_factory=dict)
    tier_checks: list[dict[str, Any]] = field(default_factory=list)

"""Paths and constants every part of the harness shares, and its log line."""

from __future__ import annotations

import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
LITELLM_VENV = BENCH / ".litellm-venv"
LITELLM_PIN = "1.109.1"
LITELLM_FALLBACK = "1.106.2"
LITELLM_OVERRIDES = ("certifi==2026.10.18", "litellm-proxy-extras==0.4.110")
NOTES_MARKER = "<!-- notes -->"
PROMPT = "Suggest three OKRs for a sales team"
SLUICEGATE_TOKEN = "sk-bench"
NOISE_PCT = 15.0  # CPU used by processes the harness did not start, in % of one core

# Log lines and the --max-minutes budget count from the moment the harness is imported.
T0 = time.monotonic()


def log(msg: str) -> None:
    """Print one timestamped progress line."""
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


class BenchError(RuntimeError):
    """A failure that aborts the run (a server that does not start, a missing tool)."""

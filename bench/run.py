#!/usr/bin/env python3
"""Benchmark harness entry point: sluicegate vs the LiteLLM proxy (see bench/README.md).

    .venv/bin/python bench/run.py [--quick] [--cache | --cache-only] [--help]

The harness itself lives in bench/harness/, one module per concern.
"""

from __future__ import annotations

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())

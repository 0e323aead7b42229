"""The CLI's two consoles: messages on stderr, results on stdout (whole tables when piped)."""

from __future__ import annotations

import sys

from rich.console import Console

__all__ = ["console", "out"]

console = Console(stderr=True)
# Piped or redirected, rich would wrap tables at 80 columns and cut the amounts short.
out = Console(width=None if sys.stdout.isatty() else 200)

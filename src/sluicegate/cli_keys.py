"""What the key commands print, and ``sluicegate keys rotate``'s grace period."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from rich.table import Table

from .errors import InvalidRequest
from .virtual_keys import MAX_GRACE_S, KeyRecord

__all__ = ["keys_table", "parse_grace", "rotated_message"]

_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
_DURATION = re.compile(r"(\d+)([smhd])")


def parse_grace(text: str) -> int:
    """Seconds in ``90s``, ``15m``, ``24h``, ``7d`` or ``0``; `InvalidRequest` for anything else."""
    text = text.strip().lower()
    if text == "0":
        return 0
    match = _DURATION.fullmatch(text)
    seconds = int(match[1]) * _UNITS[match[2]] if match else -1
    if not 0 <= seconds <= MAX_GRACE_S:
        raise InvalidRequest(
            f"--grace takes a number and a unit, such as 90s, 15m, 24h or 7d (at most 365d), "
            f"or 0 to end the old key now; not {text!r}",
            param="grace",
        )
    return seconds


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


def keys_table(records: Iterable[KeyRecord]) -> Table:
    """The keys as a table: never the keys themselves, only their prefixes (a rotated key's
    successor too, which ``keys rotate`` and ``keys revoke`` accept)."""
    table = Table("id", "prefix", "org", "user", "name", "created", "revoked", "expires", "replaced by")
    for r in records:
        table.add_row(
            r.id,
            r.prefix + "…",
            r.org,
            r.user or "",
            r.name or "",
            _when(r.created_at),
            _when(r.revoked_at),
            _when(r.expires_at),
            f"{r.replaced_by_prefix}…" if r.replaced_by_prefix else "",
        )
    return table


def rotated_message(new: KeyRecord, old: KeyRecord, poll_interval_s: float) -> str:
    """What ``keys rotate`` says after the new key, on standard error."""
    assert old.expires_at is not None
    return (
        f"rotated key {old.id} ({old.prefix}…) of org {old.org}: the new key above is {new.id} "
        f"({new.prefix}…); store it now, it is not shown again. The old key works until "
        f"{_when(old.expires_at)}, then every gateway refuses it within {poll_interval_s:g} s"
    )

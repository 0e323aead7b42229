"""The base of every settings value object."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

__all__ = ["MAX_NAME", "Frozen", "name_problem"]

MAX_NAME = 128  # the longest org, user, key name or cache tag: the database's columns hold that many
# Control characters (C0, DEL, C1) and the line and paragraph separators: a NUL is refused by
# PostgreSQL, a line break would split a log line or a header. Joiners (ZWJ, ZWNJ) are letters' business.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]").search


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot name an org, a user or a tag (pure): empty, longer than `MAX_NAME`
    characters, or with a control character (a NUL, a line break); None when it can."""
    if not value:
        return "cannot be empty"
    if len(value) > MAX_NAME:
        return f"has at most {MAX_NAME} characters (got {len(value)})"
    if _CONTROL(value) is not None:
        return "cannot contain control characters (such as NUL or a line break)"
    return None


class Frozen(BaseModel):
    """A frozen value object that rejects unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

"""The base of every settings value object."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["MAX_NAME", "Frozen", "name_problem"]

MAX_NAME = 128  # the longest org, user, key name or cache tag: the database's columns hold that many


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot name an org, a user or a tag (pure): empty, longer than `MAX_NAME`
    characters, or with a control character (a NUL, a line break); None when it can."""
    if not value:
        return "cannot be empty"
    if len(value) > MAX_NAME:
        return f"has at most {MAX_NAME} characters (got {len(value)})"
    if not value.isprintable():
        return "cannot contain control characters (such as NUL or a line break)"
    return None


class Frozen(BaseModel):
    """A frozen value object that rejects unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

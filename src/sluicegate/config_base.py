"""The base of every settings value object."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import SplitResult, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict

__all__ = ["MAX_NAME", "Frozen", "WebhookUrl", "check_origin", "check_webhook_url", "name_problem"]

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


def check_webhook_url(value: str | None) -> str | None:
    """``value`` if it is an http(s) URL with a host (an alert's webhook); raises otherwise, so that
    a typo is found at start-up rather than at the first alert."""
    if value is None:
        return None
    if _http_url(value) is None or _CONTROL(value) is not None:
        raise ValueError(f"webhook_url must be an http:// or https:// URL with a host, got {value!r}")
    return value


def _http_url(value: str) -> SplitResult | None:
    """``value``'s parts if it is an http(s) URL with a host, no blank, and a port (if any) from
    0 to 65535; None otherwise."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        return None
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number from 0 to 65535)
    except ValueError:
        return None
    return parts


WebhookUrl = Annotated[str | None, AfterValidator(check_webhook_url)]


def check_origin(value: str) -> str:
    """``value`` if it is ``*`` or an origin a browser sends (``scheme://host[:port]``, a trailing
    slash tolerated); raises otherwise: a path or a bare host would never match."""
    if value.strip() == "*":
        return value
    if "*" in value:
        raise ValueError(f"{value!r}: an origin has no wildcards; list each origin, or * alone for any")
    parts = _http_url(value.strip())
    if (
        parts is None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(
            f"{value!r} is not an origin: write it as a browser sends it, scheme://host[:port] "
            "(e.g. https://app.example.com), or * for any"
        )
    return value


class Frozen(BaseModel):
    """A frozen value object that rejects unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

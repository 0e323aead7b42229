"""Reading a request's headers: lines sent more than once make one list (RFC 9110, 5.3)."""

from __future__ import annotations

from typing import Any

from sluicegate.cache.answers import etag_matches
from sluicegate.cache.policy import parse_cache_control
from sluicegate.server.http import Request


async def nothing(*_: Any) -> Any:
    return None


def request(*headers: tuple[bytes, bytes]) -> Request:
    return Request.from_asgi({"headers": list(headers)}, nothing, nothing, "r1")


def test_repeated_cache_control_lines_are_read_as_one_list() -> None:
    for lines in ((b"max-stale=0", b"max-age=1"), (b"max-age=1", b"max-stale=0")):
        got = request(*((b"cache-control", line) for line in lines))
        assert got.cache_control is not None
        assert parse_cache_control(got.cache_control).max_age == 1  # whatever the lines' order


def test_repeated_if_none_match_lines_are_read_as_one_list() -> None:
    for lines in ((b'"abc"', b'"zzz"'), (b'"zzz"', b'"abc"')):
        got = request(*((b"if-none-match", line) for line in lines))
        assert got.if_none_match is not None and etag_matches(got.if_none_match, '"abc"')


def test_a_header_sent_once_is_read_as_sent() -> None:
    got = request((b"cache-control", b"no-cache"), (b"if-none-match", b'W/"e"'))
    assert (got.cache_control, got.if_none_match) == ("no-cache", 'W/"e"')

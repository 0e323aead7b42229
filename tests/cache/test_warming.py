"""Tests for sluicegate.cache.warming: the JSON Lines format, and warming a started gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sluicegate import Gateway, RequestContext, create_gateway
from sluicegate.cache.layered import LayeredCache
from sluicegate.cache.warming import WarmItem, WarmReport, parse_lines, warm
from sluicegate.calls import Call, CallKind, Reply
from sluicegate.errors import InvalidRequest
from sluicegate.testing import mock_settings
from sluicegate.upstream.mock import MockEngine

# parse_lines


def line(**value: Any) -> bytes:
    """One JSON line."""
    return orjson.dumps(value)


def test_parse_both_line_shapes() -> None:
    """A request under "request" and a request given as the remaining fields read the same."""
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    nested = line(feature="okr-template", org="acme", user="ann", request=request)
    flat = line(feature="okr-template", org="acme", user="ann", **request)
    first, second = parse_lines([nested, flat.decode()], "local")
    assert first.body == second.body == request
    assert first.context == second.context == RequestContext("acme", "ann", "okr-template")
    assert (first.line, second.line, first.kind) == (1, 2, "chat")


def test_parse_defaults_and_kinds() -> None:
    """Org defaults to the given one, feature to "default", user to none; embeddings are allowed."""
    (item,) = parse_lines([line(kind="embeddings", model="e", input="text")], "local")
    assert item.kind == "embeddings"
    assert item.context == RequestContext("local", None, "default")
    assert item.body == {"model": "e", "input": "text"}


def test_parse_skips_blank_lines_and_keeps_numbering() -> None:
    """Blank lines are skipped, and items keep their line numbers in the file."""
    items = parse_lines(["", line(model="m", messages=[]), "   ", line(model="m2", messages=[])], "o")
    assert [item.line for item in items] == [2, 4]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([line(model="m"), b"{not json"], "line 2 is not JSON"),
        ([b"[1, 2]"], "line 1 must be a JSON object"),
        ([b"", line(model="m"), b'"text"'], "line 3 must be a JSON object"),
        ([line(kind="images", model="m")], "line 1: kind must be chat or embeddings"),
        ([line(model="m"), line(request=["not", "an", "object"])], "line 2: kind must be chat or embeddings"),
        ([line(org="", model="m")], "line 1: org must be a non-empty string"),
        ([line(user=7, model="m")], "line 1: user must be a non-empty string"),
        ([line(feature=["chat"], model="m")], "line 1: feature must be a non-empty string"),
    ],
)
def test_parse_bad_lines_name_the_line(lines: list[bytes], message: str) -> None:
    """A bad line is an InvalidRequest that names its line number."""
    with pytest.raises(InvalidRequest) as raised:
        parse_lines(lines, "local")
    assert raised.value.message.startswith(message)


def test_estimated_tokens() -> None:
    """The estimate is the ledger's: the prompt's JSON characters over 4, plus the completion
    limit (times n) when set."""
    messages = [{"role": "user", "content": "x" * 100}]
    prompt = -(-len(orjson.dumps([messages, None, None])) // 4)
    item = WarmItem(1, "chat", {"messages": messages}, RequestContext("o"))
    limited = WarmItem(1, "chat", {"messages": messages, "max_tokens": 50, "n": 2}, RequestContext("o"))
    assert item.estimated_tokens() == prompt
    assert limited.estimated_tokens() == prompt + 100


# warm, through a started gateway over the in-process mock


def requests(count: int, feature: str = "okr-template", **extra: Any) -> list[WarmItem]:
    """``count`` distinct chat requests for acme."""
    lines = [
        line(
            feature=feature,
            org="acme",
            request={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"OKR template {i}"}],
                **extra,
            },
        )
        for i in range(count)
    ]
    return parse_lines(lines, "local")


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A started gateway over the in-process mock, answering after 20 ms."""
    settings = mock_settings(
        data_dir=tmp_path / "data", providers={"upstream": {"kind": "mock", "mock": {"latency": 20}}}
    )
    async with create_gateway(settings) as gw:
        yield gw


def upstream_calls(gateway: Gateway) -> int:
    """Chat calls that reached the mock."""
    engine: MockEngine = gateway.providers["upstream"].transport.engine  # type: ignore[attr-defined]
    return sum(1 for c in engine.calls if c.path.endswith("/chat/completions"))


class Counting:
    """The gateway as a warming runner, counting the sends in flight at once."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.cache: LayeredCache | None = gateway.cache
        self.in_flight = 0
        self.most = 0

    def new_call(
        self,
        kind: CallKind,
        body: Any,
        context: RequestContext | None = None,
        request_id: str | None = None,
        *,
        cache_control: str | None = None,
        if_none_match: str | None = None,
    ) -> Call:
        return self.gateway.new_call(
            kind, body, context, request_id, cache_control=cache_control, if_none_match=if_none_match
        )

    @property
    def send(self) -> Any:
        async def send(call: Call) -> Reply:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                return await self.gateway.send(call)
            finally:
                self.in_flight -= 1

        return send


async def test_warm_fetches_then_skips_fresh_entries(gateway: Gateway) -> None:
    """A first run fetches every request; a second finds them all fresh and calls nothing."""
    items = requests(5)
    first = await warm(gateway, items)
    assert (first.fetched, first.fresh, first.failed) == (5, 0, 0)
    assert upstream_calls(gateway) == 5
    second = await warm(gateway, items)
    assert (second.fetched, second.fresh) == (0, 5)
    assert upstream_calls(gateway) == 5
    context = RequestContext("acme", "someone", "okr-template")
    reply = await gateway.send(gateway.new_call("chat", dict(items[0].body), context))
    assert reply.headers["x-sluicegate-cache"] == "hit-memory"


async def test_warm_refetches_entries_that_are_no_longer_fresh(gateway: Gateway) -> None:
    """An entry past its TTL is fetched again."""
    items = requests(2)
    await warm(gateway, items)
    assert gateway.cache is not None and gateway.cache.memory is not None
    for stored in gateway.cache.memory.entries():
        stored.expires_at = stored.created_at
    report = await warm(gateway, items[:1])
    assert (report.fetched, report.fresh) == (1, 0)


async def test_max_requests_caps_the_fetches(gateway: Gateway) -> None:
    """max_requests bounds the upstream calls; fresh entries do not use up the allowance."""
    items = requests(6)
    await warm(gateway, items[:2])
    report = await warm(gateway, items, max_requests=3)
    assert (report.fetched, report.fresh) == (3, 2)
    assert upstream_calls(gateway) == 5


async def test_dry_run_calls_nothing(gateway: Gateway) -> None:
    """A dry run counts what it would fetch and its tokens, and never calls the upstream."""
    items = requests(4, max_tokens=100)
    report = await warm(gateway, items, dry_run=True)
    assert report.fetched == 4
    assert report.estimated_tokens == sum(item.estimated_tokens() for item in items)
    assert report.estimated_tokens > 400
    assert upstream_calls(gateway) == 0
    assert (await warm(gateway, items)).fetched == 4


async def test_concurrency_is_bounded(gateway: Gateway) -> None:
    """No more than `concurrency` requests are in flight, and that many are used."""
    runner = Counting(gateway)
    report = await warm(runner, requests(12), concurrency=3)
    assert report.fetched == 12
    assert runner.most == 3


async def test_failures_are_reported_with_their_line(gateway: Gateway) -> None:
    """A request the gateway refuses is counted as failed and named by its line."""
    good = requests(1)[0]
    bad = WarmItem(7, "chat", {"model": "no-such-model", "messages": []}, RequestContext("acme"))
    progress: list[int] = []
    report = await warm(gateway, [good, bad], progress=lambda: progress.append(1))
    assert (report.fetched, report.failed) == (1, 1)
    assert report.errors[0].startswith("line 7: ")
    assert len(progress) == 2
    assert report.to_dict()["skipped_fresh"] == 0


async def test_streamed_requests_are_warmed_as_plain_calls(gateway: Gateway) -> None:
    """A request that asks for a stream is warmed without one, and then answers a stream from the cache."""
    items = requests(1, stream=True)
    assert (await warm(gateway, items)).fetched == 1
    context = RequestContext("acme", None, "okr-template")
    reply = await gateway.send(gateway.new_call("chat", dict(items[0].body), context))
    assert reply.headers["x-sluicegate-cache"] == "hit-memory"
    assert reply.stream is not None
    chunks = b"".join([c async for c in reply.stream])
    assert chunks.endswith(b"data: [DONE]\n\n")


async def test_unknown_features_are_refused(gateway: Gateway) -> None:
    """A line naming a feature that is not configured fails, and is never sent."""
    (item,) = requests(1, feature="okr-templates")
    report = await warm(gateway, [item])
    assert (report.fetched, report.failed) == (0, 1)
    assert "unknown feature 'okr-templates'" in report.errors[0]
    assert upstream_calls(gateway) == 0


async def test_browser_only_features_are_refused(tmp_path: Path) -> None:
    """A feature whose answers live in browsers only has no entry on the gateway to warm: the
    line fails, and pays for no upstream call."""
    features = {"prefs": {"cache": {"scope": "user", "ttl_s": 600, "tiers": ["browser"]}}}
    async with create_gateway(mock_settings(data_dir=tmp_path / "data", features=features)) as gateway:
        report = await warm(gateway, requests(1, feature="prefs"))
        assert (report.fetched, report.failed) == (0, 1)
        assert "keeps its answers in browsers only" in report.errors[0]
        assert upstream_calls(gateway) == 0


def test_report_keeps_at_most_twenty_errors() -> None:
    """The JSON report lists at most 20 errors."""
    report = WarmReport(failed=30, errors=[f"line {i}: x" for i in range(30)])
    assert len(report.to_dict()["errors"]) == 20


async def test_warm_waits_for_nothing_when_empty(gateway: Gateway) -> None:
    """An empty file is an empty report."""
    report = await asyncio.wait_for(warm(gateway, []), 1)
    assert report.to_dict() == {
        "fetched": 0,
        "skipped_fresh": 0,
        "failed": 0,
        "estimated_tokens": 0,
        "errors": [],
    }


async def test_warming_is_not_counted_against_request_rate_limits(tmp_path: Path) -> None:
    """Warming is an operator's action: with 2 requests a minute per user, 4 lines for the org's
    anonymous user are all fetched, and that user's own quota is left whole."""
    settings = mock_settings(
        data_dir=tmp_path / "data", limits={"requests": [{"per": "user", "limit": 2, "window_s": 60}]}
    )
    async with create_gateway(settings) as gw:
        report = await warm(gw, requests(4))
        assert (report.fetched, report.failed) == (4, 0), report.errors
        context = RequestContext("acme", None, "okr-template")
        for n in range(2):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"live {n}"}]}
            reply = await gw.send(gw.new_call("chat", body, context))
            assert reply.headers["ratelimit"].endswith(f"r={1 - n};t=60"), reply.headers

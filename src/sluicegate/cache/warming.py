"""Warming: fetch a file of requests ahead of the traffic, skipping what is already fresh.

Each line of the file is one JSON object: ``feature``, ``org`` and ``user`` (optional; they
decide the entry's scope), ``kind`` (``chat`` by default, or ``embeddings``) and the request
itself, either under ``request`` or as the remaining fields::

    {"feature": "okr-template", "org": "acme", "request": {"model": "gpt-4o-mini", "messages": [...]}}
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ..accounting.ledger import completion_limit, estimate_prompt_tokens
from ..calls import Call, CallKind, Reply, RequestContext
from ..errors import InvalidRequest, SluicegateError
from .layered import LayeredCache

__all__ = ["WarmItem", "WarmReport", "parse_lines", "warm"]

_META = ("feature", "org", "user", "kind", "request")


class Runner(Protocol):
    """What warming needs of a gateway."""

    cache: LayeredCache | None

    def new_call(
        self,
        kind: CallKind,
        body: Any,
        context: RequestContext | None = None,
        request_id: str | None = None,
        *,
        cache_control: str | None = None,
        if_none_match: str | None = None,
    ) -> Call: ...

    @property
    def send(self) -> Callable[[Call], Awaitable[Reply]]: ...


@dataclass(slots=True, frozen=True)
class WarmItem:
    """One request to warm, and who it is for."""

    line: int
    kind: CallKind
    body: dict[str, Any]
    context: RequestContext

    def estimated_tokens(self) -> int:
        """A rough token count, as the ledger estimates a call: the prompt's JSON (messages or
        input, tools, response format) over 4, plus its completion limit (``max_tokens`` or
        ``max_completion_tokens`` times ``n``) when it sets one."""
        return estimate_prompt_tokens(self.body) + completion_limit(self.body, 0)


@dataclass(slots=True)
class WarmReport:
    """What a warming run did."""

    fetched: int = 0
    fresh: int = 0
    failed: int = 0
    estimated_tokens: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "fetched": self.fetched,
            "skipped_fresh": self.fresh,
            "failed": self.failed,
            "estimated_tokens": self.estimated_tokens,
            "errors": self.errors[:20],
        }


def parse_lines(lines: Iterable[str | bytes], default_org: str) -> list[WarmItem]:
    """The requests in a JSON Lines file; `InvalidRequest` names the first bad line."""
    items = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"line {number} is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidRequest(f"line {number} must be a JSON object")
        body = value.get("request")
        if body is None:
            body = {k: v for k, v in value.items() if k not in _META}
        kind = value.get("kind", "chat")
        if kind not in ("chat", "embeddings") or not isinstance(body, dict):
            raise InvalidRequest(f"line {number}: kind must be chat or embeddings, and request an object")
        for name in ("org", "user", "feature"):
            given = value.get(name)
            if given is not None and (not isinstance(given, str) or not given):
                raise InvalidRequest(f"line {number}: {name} must be a non-empty string, or left out")
        context = RequestContext(
            value.get("org") or default_org, value.get("user"), value.get("feature") or "default"
        )
        items.append(WarmItem(number, kind, body, context))
    return items


async def _is_fresh(runner: Runner, call: Call) -> bool:
    cache = runner.cache
    if cache is None:
        return False
    policy = cache.policy(call.context.feature)
    key = cache.key(call, policy)
    entry = cache.memory.peek(key.key) if cache.memory is not None else None
    if entry is None:
        entry, _, _ = await cache.lookup(key, policy, None)
    return entry is not None and entry.fresh(cache.clock())


async def warm(
    runner: Runner,
    items: list[WarmItem],
    *,
    concurrency: int = 4,
    max_requests: int | None = None,
    dry_run: bool = False,
    progress: Callable[[], None] | None = None,
) -> WarmReport:
    """Fetch every item that is not fresh, ``concurrency`` at a time, at most ``max_requests`` of them."""
    report = WarmReport()
    gate = asyncio.Semaphore(max(1, concurrency))
    budget = [max_requests if max_requests is not None else len(items)]
    known = {*runner.cache.policies, "default"} if runner.cache is not None else None

    async def one(item: WarmItem) -> None:
        async with gate:
            try:
                feature = item.context.feature
                if known is not None and feature not in known:
                    raise InvalidRequest(
                        f"unknown feature {feature!r}; configured: {', '.join(sorted(known))}"
                    )
                if runner.cache is not None and not runner.cache.plan(feature).server:
                    raise InvalidRequest(  # it would pay for an answer that nothing keeps
                        f"feature {feature!r} keeps its answers in browsers only: the gateway has "
                        "no entry to warm"
                    )
                call = runner.new_call(item.kind, dict(item.body), item.context, cache_control="no-cache")
                call.warming = True
                if await _is_fresh(runner, call):
                    report.fresh += 1
                elif budget[0] <= 0:
                    pass
                else:
                    budget[0] -= 1
                    report.estimated_tokens += item.estimated_tokens()
                    if not dry_run:
                        call.stream = False
                        call.body.pop("stream", None)
                        await runner.send(call)
                    report.fetched += 1
            except SluicegateError as exc:
                report.failed += 1
                report.errors.append(f"line {item.line}: {exc.message}")
            finally:
                if progress is not None:
                    progress()

    await asyncio.gather(*(one(item) for item in items))
    return report

"""The ``/api/ai/cache`` routes (admin key only): statistics, invalidation, namespace bumps, warming."""

from __future__ import annotations

from typing import Any

import orjson

from ..cache import admin
from ..cache.layered import LayeredCache
from ..cache.warming import parse_lines, warm
from ..errors import InvalidRequest, NotFound
from ..gateway import Gateway
from .http import Request, json_object, read_json, send_json

__all__ = ["bump_namespace", "cache_stats", "invalidate", "warm_cache"]

_MAX_WARM = 10_000


def _cache(gateway: Gateway, request: Request) -> LayeredCache:
    gateway.authenticator.check_admin(request.authorization, request.origin)
    if gateway.cache is None:
        raise NotFound("the cache is disabled on this gateway (cache.enabled: false)", code="cache_disabled")
    return gateway.cache


async def _body(gateway: Gateway, request: Request, fields: tuple[str, ...]) -> dict[str, Any]:
    body = await read_json(
        request, gateway.settings.server.max_body_bytes, gateway.settings.server.body_timeout_s
    )
    return json_object(body, fields)


async def cache_stats(gateway: Gateway, request: Request) -> None:
    """``GET /api/ai/cache``: counters per feature and entries and bytes per tier."""
    cache = _cache(gateway, request)
    await send_json(request, 200, orjson.dumps(await admin.stats(cache)))


async def invalidate(gateway: Gateway, request: Request) -> None:
    """``POST /api/ai/cache/invalidate`` with any of key, tag, feature, org, user, model."""
    cache = _cache(gateway, request)
    body = await _body(gateway, request, admin.MATCH_FIELDS)
    match: dict[str, str] = {name: body[name] for name in admin.MATCH_FIELDS if body.get(name) is not None}
    if not match or not all(isinstance(v, str) and v for v in match.values()):
        raise InvalidRequest(
            f"send one or more of {', '.join(admin.MATCH_FIELDS)} as non-empty strings",
            code="invalid_match",
        )
    await send_json(request, 200, orjson.dumps(await admin.invalidate(cache, **match)))


async def bump_namespace(gateway: Gateway, request: Request) -> None:
    """``POST /api/ai/cache/bump`` with ``{"feature"}``: every older entry of it becomes unreachable."""
    cache = _cache(gateway, request)
    feature = (await _body(gateway, request, ("feature",))).get("feature")
    if not isinstance(feature, str) or feature not in gateway.settings.feature_names:
        known = ", ".join(sorted(gateway.settings.feature_names))
        raise InvalidRequest(f"feature must be a configured feature name ({known})", param="feature")
    await send_json(request, 200, orjson.dumps(await admin.bump(cache, feature)))


async def warm_cache(gateway: Gateway, request: Request) -> None:
    """``POST /api/ai/cache/warm``: ``{"requests": [...]}``, optionally dry_run, max_requests, concurrency."""
    _cache(gateway, request)
    body = await _body(gateway, request, ("requests", "dry_run", "max_requests", "concurrency"))
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidRequest("dry_run must be true or false", param="dry_run", code="invalid_type")
    requests = body.get("requests")
    if not isinstance(requests, list) or len(requests) > _MAX_WARM:
        raise InvalidRequest(f"requests must be a list of at most {_MAX_WARM} objects", param="requests")
    items = parse_lines([orjson.dumps(r) for r in requests], gateway.settings.auth.dev_org)
    # As the CLI's options: max_requests 0 or more, concurrency 1 to 256.
    options = {name: body.get(name) for name in ("max_requests", "concurrency")}
    for (name, value), (least, most) in zip(options.items(), ((0, None), (1, 256)), strict=True):
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and (not whole or value < least or (most is not None and value > most)):
            bounds = f"from {least} to {most}" if most is not None else f"{least} or more"
            raise InvalidRequest(f"{name} must be a whole number, {bounds}", param=name)
    report = await warm(
        gateway,
        items,
        concurrency=options["concurrency"] or 4,
        max_requests=options["max_requests"],
        dry_run=dry_run,
    )
    await send_json(request, 200, orjson.dumps(report.to_dict()))

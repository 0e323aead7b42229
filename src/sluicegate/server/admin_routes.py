"""The ``/api/ai/*`` routes: status (public), key management, budgets and the emergency stop (admin)."""

from __future__ import annotations

import os
import time
import urllib.parse
from decimal import Decimal
from typing import Any, TypeGuard

import orjson

from .._version import __version__
from ..admission import stop as stop_controls
from ..admission.budget_scopes import KINDS, budget_scope, new_budget
from ..errors import InvalidRequest, NotFound
from ..gateway import Gateway
from ..virtual_keys import DEFAULT_GRACE_S
from .http import Request, json_object, read_body, read_json, send_json

__all__ = [
    "create_key",
    "delete_budget",
    "list_budgets",
    "list_keys",
    "list_stops",
    "resume",
    "revoke_key",
    "rotate_key",
    "set_budget",
    "set_stop",
    "status",
]


async def status(gateway: Gateway, request: Request) -> None:
    """``GET /api/ai/status``: liveness, readiness and each dependency, from cached probes; the
    traffic totals (every org's requests and tokens) only for the admin."""
    snapshot = gateway.probes.snapshot()
    # Redis is not required: without it the cache serves from its other tiers (degraded).
    required: set[str] = set()
    if gateway.settings.auth.require_keys:
        required.add("database")
    dependencies: dict[str, Any] = {}
    ready = True
    degraded = False
    for name, result in snapshot.items():
        up = result is not None and result.up
        degraded |= not up
        ready &= up or name not in required
        entry = result.to_dict() if result is not None else {"status": "unknown"}
        dependencies[name] = {**entry, "required": name in required}
    if gateway.redis is None:
        dependencies["redis"] = {"status": "disabled", "required": False}
    unread = gateway.controls.unread_since_start
    degraded |= unread  # it serves cached answers only
    body = {
        "status": "ok" if not degraded else ("degraded" if ready else "unavailable"),
        "live": True,
        "ready": ready,
        "version": __version__,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - gateway.started_at, 3),
        "dependencies": dependencies,
        "providers": {name: {"kind": p.kind} for name, p in gateway.settings.providers.items()},
        "cache": gateway.cache.status() if gateway.cache is not None else {"enabled": False},
        # Rows this process recorded that the database does not have yet (spooled meanwhile).
        "ledger": {"backlog": gateway.outbox.backlog} if gateway.outbox is not None else {"enabled": False},
        # False while this worker could not read the emergency stops since it started.
        "controls_read": not unread,
    }
    if gateway.authenticator.is_admin(request.authorization):
        body["traffic"] = gateway.counters.snapshot()
    await send_json(request, 200 if ready else 503, orjson.dumps(body))


async def list_keys(gateway: Gateway, request: Request) -> None:
    """``GET /api/ai/keys``: the live virtual keys (admin)."""
    gateway.authenticator.check_admin(request.authorization, request.origin)
    records = await gateway.keys.list_keys()
    await send_json(request, 200, orjson.dumps({"data": [r.to_dict() for r in records]}))


async def create_key(gateway: Gateway, request: Request) -> None:
    """``POST /api/ai/keys`` with ``{"org", "user"?, "name"?}``: a new key, shown once (admin)."""
    gateway.authenticator.check_admin(request.authorization, request.origin)
    body = json_object(await _read(gateway, request), ("org", "user", "name"))
    if not isinstance(body.get("org"), str):
        raise InvalidRequest("send the key's org as a string in org", param="org")
    fields = {f: body.get(f) for f in ("user", "name")}
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a string", param=name)
    key, record = await gateway.keys.create(body["org"], user=fields["user"], name=fields["name"])
    await send_json(request, 201, orjson.dumps({"key": key, **record.to_dict()}))


async def revoke_key(gateway: Gateway, request: Request) -> None:
    """``DELETE /api/ai/keys/{id}``: revoke a key (admin)."""
    gateway.authenticator.check_admin(request.authorization, request.origin)
    path = request.scope["path"]
    key_id = path.removeprefix("/api/ai/keys/")
    if not key_id or "/" in key_id:  # /api/ai/keys/x/ID must not revoke ID
        raise NotFound(f"unknown request URL: DELETE {path}", code="unknown_url")
    record = await gateway.keys.revoke(key_id)
    gateway.authenticator.forget({record.id})  # this worker at once, the others at their next poll
    await send_json(request, 200, orjson.dumps(record.to_dict()))


async def rotate_key(gateway: Gateway, request: Request) -> None:
    """``POST /api/ai/keys/{id}/rotate`` with ``{"grace_s"?}`` (default 24 h): a new key for the
    same org, user and name, shown once; the old one works until the grace ends (admin)."""
    gateway.authenticator.check_admin(request.authorization, request.origin)
    path = request.scope["path"]
    key_id, _, action = path.removeprefix("/api/ai/keys/").partition("/")
    if action != "rotate" or not key_id:
        raise NotFound(f"unknown request URL: POST {path}", code="unknown_url")
    settings = gateway.settings.server
    raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        json_object(body, ("grace_s",))
    grace = body.get("grace_s", DEFAULT_GRACE_S) if isinstance(body, dict) else None
    if not isinstance(body, dict) or not _is_number(grace):
        raise InvalidRequest(
            'send no body, or a JSON object such as {"grace_s": 3600} (seconds, 0 ends the old key now)',
            param="grace_s",
        )
    key, new, old = await gateway.keys.rotate(key_id, grace)
    gateway.authenticator.forget({old.id})  # this worker at once; the others when it expires
    await send_json(request, 201, orjson.dumps({"key": key, **new.to_dict(), "replaces": old.to_dict()}))


async def _read(gateway: Gateway, request: Request) -> Any:
    return await read_json(
        request, gateway.settings.server.max_body_bytes, gateway.settings.server.body_timeout_s
    )


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def list_stops(gateway: Gateway, request: Request) -> None:
    """``GET /api/ai/stop``: the emergency stops in force (admin)."""
    gateway.authenticator.check_admin(request.authorization, request.origin)
    stops = await stop_controls.list_stops(gateway.engine)
    await send_json(request, 200, orjson.dumps({"stops": [s.to_dict() for s in stops]}))


async def _org_and_reason(
    gateway: Gateway, request: Request, fields: tuple[str, ...]
) -> tuple[str | None, Any]:
    body = json_object(await _read(gateway, request), fields)
    if not isinstance(body.get("org", ""), str | None):
        raise InvalidRequest("org must be a string (or absent: every org)", param="org")
    return body.get("org"), body.get("reason")


async def set_stop(gateway: Gateway, request: Request) -> None:
    """``POST /api/ai/stop`` with ``{"org"?, "reason"}``: stop upstream calls for the org, or
    for everyone; every replica obeys within ``controls.poll_interval_s`` (admin)."""
    gateway.authenticator.check_admin(request.authorization, request.origin)
    org, reason = await _org_and_reason(gateway, request, ("org", "reason"))
    if not isinstance(reason, str):
        raise InvalidRequest("say why in reason: it is shown to every refused caller", param="reason")
    stop = await stop_controls.set_stop(gateway.engine, org, reason)
    await gateway.controls.refresh()  # this worker at once, the others at their next poll
    await send_json(request, 201, orjson.dumps(stop.to_dict()))


async def resume(gateway: Gateway, request: Request) -> None:
    """``POST /api/ai/resume`` with ``{"org"?}``: lift the org's stop, or the global one (admin)."""
    gateway.authenticator.check_admin(request.authorization, request.origin)
    org, _ = await _org_and_reason(gateway, request, ("org",))
    lifted = await stop_controls.clear_stop(gateway.engine, org)
    await gateway.controls.refresh()
    await send_json(request, 200, orjson.dumps({"scope": stop_controls.scope_of(org), "lifted": lifted}))


async def list_budgets(gateway: Gateway, request: Request) -> None:
    """``GET /api/ai/budgets``: every budget in force and its current period (admin)."""
    gateway.authenticator.check_admin(request.authorization, request.origin)
    store = gateway.budgets
    await store.refresh()
    periods = [(await store.usage(budget)).to_dict() for budget in store.budgets.values()]
    await send_json(request, 200, orjson.dumps({"budgets": periods}))


async def set_budget(gateway: Gateway, request: Request) -> None:
    """``POST /api/ai/budgets`` with ``{"org", "limit_usd", "period"?}`` and at most one of
    ``user``, ``feature`` and ``key``: set a budget; every worker applies it within
    ``controls.poll_interval_s`` (admin)."""
    gateway.authenticator.check_admin(request.authorization, request.origin)
    body = json_object(
        await _read(gateway, request), ("org", "limit_usd", "period", "user", "feature", "key")
    )
    if not isinstance(body.get("org"), str) or not body["org"]:
        raise InvalidRequest("send the org's name in org", param="org")
    limit = body.get("limit_usd")
    if isinstance(limit, bool) or not isinstance(limit, int | float | str):
        raise InvalidRequest("limit_usd must be a number of US dollars", param="limit_usd")
    try:
        amount = Decimal(str(limit))
    except ArithmeticError:
        raise InvalidRequest("limit_usd must be a number of US dollars", param="limit_usd") from None
    narrowed = [kind for kind in ("user", "feature", "key") if body.get(kind) is not None]
    if len(narrowed) > 1 or any(not isinstance(body[kind], str) or not body[kind] for kind in narrowed):
        raise InvalidRequest("give at most one of user, feature and key, as a name", param=narrowed[-1])
    narrow = (narrowed[0], body[narrowed[0]]) if narrowed else None
    period = body.get("period", "month")
    if not isinstance(period, str):
        raise InvalidRequest("period must be day, week or month", param="period")
    made = new_budget(body["org"], amount, period, narrow, gateway.settings.feature_names)
    budget = await gateway.budgets.set_limit(made)
    usage = await gateway.budgets.usage(budget)
    await send_json(request, 201, orjson.dumps(usage.to_dict()))


async def delete_budget(gateway: Gateway, request: Request) -> None:
    """``DELETE /api/ai/budgets?org=ORG`` and at most one of ``user``, ``feature`` and ``key``:
    remove a budget set at run time (the config's budget of the same scope, if any, applies
    again); every worker stops applying it within ``controls.poll_interval_s`` (admin)."""
    gateway.authenticator.check_admin(request.authorization, request.origin)
    raw = request.scope.get("query_string", b"").decode("latin-1")
    params = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
    unknown = sorted(set(params) - {"org", *KINDS})
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter {unknown[0]!r}: give org, and at most one of user, feature and key",
            param=unknown[0],
        )
    if not params.get("org"):
        raise InvalidRequest("give the budget's org: ?org=ORG", param="org")
    narrowed = [kind for kind in KINDS if kind in params]
    if len(narrowed) > 1 or any(not params[kind] for kind in narrowed):
        raise InvalidRequest("give at most one of user, feature and key, as a name", param=narrowed[-1])
    narrow = (narrowed[0], params[narrowed[0]]) if narrowed else None
    scope = budget_scope(params["org"], narrow, None)  # a feature since removed from the config too
    in_force = await gateway.budgets.remove_limit(scope)
    body: dict[str, Any] = {"scope": scope, "deleted": True, "in_force": None}
    if in_force is not None:
        body["in_force"] = (await gateway.budgets.usage(in_force)).to_dict()
    await send_json(request, 200, orjson.dumps(body))

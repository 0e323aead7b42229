"""``GET /api/ai/usage``: the ledger summed by org, user, key, feature, model and period, and
the budgets in force with the forecast of their period's end.

The admin key sees every org (and may filter by one); an org's key sees only its own org,
whatever it asks for; browser tokens are refused. Without keys required, every caller is the
admin unless an admin key is set: then a caller without it sees only the dev org.
"""

from __future__ import annotations

import time
import urllib.parse

import orjson
from sqlalchemy.exc import SQLAlchemyError

from ..accounting.usage import UsageQuery, report
from ..browser_tokens import BrowserPrincipal
from ..errors import NotFound, PermissionDenied, ServiceUnavailable
from ..gateway import Gateway
from .http import Request, send_json

__all__ = ["usage"]


async def _caller_org(gateway: Gateway, request: Request) -> str | None:
    """None for the admin (every org), else the caller's own org."""
    authenticator = gateway.authenticator
    if authenticator.is_admin(request.authorization):
        return None
    principal = await authenticator.authenticate(request.authorization)
    if principal is None:
        # Keys are not required, yet an admin key is set: a caller without it is the dev org.
        return gateway.settings.auth.dev_org
    if isinstance(principal, BrowserPrincipal):
        raise PermissionDenied("browser tokens cannot read usage; call it from your backend with a key")
    return principal.org


async def usage(gateway: Gateway, request: Request) -> None:
    """``GET /api/ai/usage?days=30&group_by=org,feature&period=day``."""
    org = await _caller_org(gateway, request)
    if gateway.ledger is None:
        raise NotFound(
            "the usage ledger is off on this gateway (ledger.enabled: false)", code="ledger_disabled"
        )
    raw = request.scope.get("query_string", b"").decode("latin-1")
    params = dict(urllib.parse.parse_qsl(raw))
    if params.get("model"):
        params["model"] = gateway.catalog.canonical(params["model"])  # an alias reads as its model
    query = UsageQuery.parse(params, time.time(), org)
    try:
        if gateway.outbox is not None:
            await gateway.outbox.flush()  # this worker's latest rows count too
        body = await report(gateway.engine, query)
        # The caller's budgets, with each one's forecast of its period's end.
        store = gateway.budgets
        body["budgets"] = [
            (await store.usage(budget)).to_dict()
            for scope, budget in sorted(store.budgets.items())
            if org is None or budget.org == org
        ]
    except (SQLAlchemyError, OSError) as exc:  # asyncpg's refused connection is an OSError
        raise ServiceUnavailable(
            f"the usage ledger's database is unreachable ({type(exc).__name__}); rows are kept "
            "and will be there when it is back",
            code="ledger_unavailable",
        ) from None
    await send_json(request, 200, orjson.dumps(body))

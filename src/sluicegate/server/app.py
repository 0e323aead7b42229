"""The ASGI application, built by a factory around one `Gateway`."""

from __future__ import annotations

import asyncio
import gc
import logging
import time

from sqlalchemy.exc import SQLAlchemyError

from ..config import Settings, load_settings
from ..errors import AuthenticationFailed, MethodNotAllowed, NotFound, ServiceUnavailable, SluicegateError
from ..gateway import Gateway, create_gateway
from ..store.db import first_line
from . import admin_routes, browser_routes, cache_routes, openai_routes, sdk_routes, usage_routes
from .auth_delay import FailedAuthDelay
from .cors import Cors
from .http import Receive, Request, Scope, Send, send_error
from .openai_routes import Handler

__all__ = ["SluicegateApp", "app_from_environment", "create_app"]

# Refusals of credentials that were genuine once: not slowed down like guesses.
_GENUINE = frozenset({"expired_api_key", "browser_token_expired", "browser_token_revoked"})
logger = logging.getLogger("sluicegate.server")


class SluicegateApp:
    """Routes HTTP requests to handlers over one gateway and runs its lifespan."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        list_models, retrieve_model = openai_routes.model_routes(gateway)
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": openai_routes.chat_completions},
            "/v1/embeddings": {"POST": openai_routes.embeddings},
            "/v1/models": {"GET": list_models},
            "/api/ai/status": {"GET": admin_routes.status},
            "/api/ai/keys": {"GET": admin_routes.list_keys, "POST": admin_routes.create_key},
            "/api/ai/cache": {"GET": cache_routes.cache_stats},
            "/api/ai/usage": {"GET": usage_routes.usage},
            "/api/ai/stop": {"GET": admin_routes.list_stops, "POST": admin_routes.set_stop},
            "/api/ai/resume": {"POST": admin_routes.resume},
            "/api/ai/budgets": {
                "GET": admin_routes.list_budgets,
                "POST": admin_routes.set_budget,
                "DELETE": admin_routes.delete_budget,
            },
            "/api/ai/cache/invalidate": {"POST": cache_routes.invalidate},
            "/api/ai/cache/bump": {"POST": cache_routes.bump_namespace},
            "/api/ai/cache/warm": {"POST": cache_routes.warm_cache},
            "/api/ai/browser-tokens": {"POST": browser_routes.create_browser_token},
            "/sdk/sluicegate.js": {"GET": sdk_routes.client_script()},
            "/sdk/demo": {"GET": sdk_routes.demo_page()},
        }
        self._prefixes: tuple[tuple[str, dict[str, Handler]], ...] = (
            ("/api/ai/keys/", {"DELETE": admin_routes.revoke_key, "POST": admin_routes.rotate_key}),
            ("/v1/models/", {"GET": retrieve_model}),
            ("/models/", {"GET": retrieve_model}),
        )
        # OpenAI's SDK and others also call the routes without the /v1 prefix.
        for path in ("/chat/completions", "/embeddings", "/models"):
            self._routes[path] = self._routes["/v1" + path]
        self._cors = Cors.from_settings(gateway.settings.browser)
        self._auth_delay = FailedAuthDelay()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        request = Request.from_asgi(scope, receive, send, self.gateway.new_request_id())
        if self._cors is not None and await self._cors.apply(request):
            return  # a preflight, answered
        try:
            methods = self._find(scope["path"])
            handler = methods.get(scope["method"]) if methods is not None else None
            if handler is None and methods is not None and scope["method"] == "HEAD":
                handler = methods.get("GET")  # the server sends the head alone (RFC 9110, 9.3.2)
            if handler is None:
                what = f"{scope['method']} {scope['path']}"
                if methods is None:
                    raise NotFound(f"unknown request URL: {what}", code="unknown_url")
                raise MethodNotAllowed(f"{what} is not allowed; use {', '.join(methods)}")
            await handler(self.gateway, request)
        except AuthenticationFailed as exc:
            # Repeated failures from one address are answered more and more slowly: guessing
            # keys. A key or token that was real (expired, or its minting key revoked) is no
            # guess: answered at once (behind a proxy every client shares one address).
            client = scope.get("client")
            if exc.code not in _GENUINE:
                delay = self._auth_delay.failed(client[0] if client else "", time.monotonic())
                if delay:
                    await asyncio.sleep(delay)
            await send_error(request, exc)
        except SluicegateError as exc:
            await send_error(request, exc)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:  # OSError: refused, unresolved
            # The database (an admin route's, a key's) cannot answer: a 503 to try again, and
            # one line in the log rather than a traceback per request.
            path, why = scope["path"], first_line(exc)
            logger.warning("%s %s: the database is unreachable (%s)", scope["method"], path, why)
            unavailable = ServiceUnavailable(
                "the gateway's database is unreachable; try again shortly",
                code="database_unavailable",
                headers={"retry-after": "5"},
            )
            await send_error(request, unavailable)
        except Exception:
            logger.exception("unexpected error on %s %s", scope["method"], scope["path"])
            await send_error(request, SluicegateError("internal error in the gateway; see its log"))

    def _find(self, path: str) -> dict[str, Handler] | None:
        methods = self._routes.get(path)
        if methods is None:
            for prefix, handlers in self._prefixes:
                if path.startswith(prefix) and len(path) > len(prefix):
                    return handlers
        return methods

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Everything alive now lives as long as the worker. Freezing it keeps the cyclic
                # GC from walking the whole heap (SQLAlchemy, pydantic, …) again and again under
                # load: a full collection of it costs tens of milliseconds.
                gc.collect()
                gc.freeze()
                # The in-process cache keeps tens of thousands of answers alive. With Python's
                # default thresholds the young collections keep walking them: measured, 35 % more
                # CPU per cache miss and a p99 of 190 ms instead of 25 ms (bench/RESULTS.md).
                gc.set_threshold(*self.gateway.settings.server.gc_thresholds)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # Bounded: with a hung database, closing the stores (the last ledger flush, the
                # cache's SQL writes, the connections) could take minutes. Cut, the ledger's rows
                # stay spooled, and the next start writes them.
                wait_s = self.gateway.settings.server.drain_timeout_s
                try:
                    async with asyncio.timeout(wait_s):
                        await self.gateway.aclose()
                except TimeoutError:
                    logger.warning(
                        "shutdown: the gateway's stores did not close within %g s "
                        "(server.drain_timeout_s); spooled ledger rows are written at the next start",
                        wait_s,
                    )
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings | None = None, *, gateway: Gateway | None = None) -> SluicegateApp:
    """The ASGI app over ``gateway``, or over a new gateway built from ``settings``."""
    if gateway is None:
        gateway = create_gateway(settings or load_settings())
    return SluicegateApp(gateway)


def app_from_environment() -> SluicegateApp:
    """The factory server workers call: settings from ``$SLUICEGATE_CONFIG`` and the environment."""
    return create_app(load_settings())

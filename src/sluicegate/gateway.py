"""The `Gateway`: builds the request pipeline once and runs it, for the server and for libraries.

The pipeline, outermost first (stages not yet built are marked with where they will plug in)::

    RecordEvents            observe: one frozen event per call
      LimitRequests         rate limits on requests (when limits.requests are set)
      Degrade               every upstream option failed: the static answer, or a 503
      ServeFromCache        in-process → Redis → SQL, single-flight (when cache.enabled)
        LimitTokens         tokens a minute: take a miss's worst case, give back the rest
        ReserveBudget       budgets: reserve a miss's worst case, settle its cost after
        StopUpstream        the emergency stop: no upstream call while one covers the org
        RouteCall           the model's deployments, then its fallback models, in turn
          GuardDeployment   the deployment's circuit breaker
            RetryCall       full-jitter retries inside the provider's retry budget
              RecordUsage   the ledger: one row per upstream attempt (when ledger.enabled)
                SendToProvider  hand the call to its provider's transport

Build one with `create_gateway(settings)` and pass it explicitly; nothing here is global.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from redis.asyncio import Redis
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from .accounting.ledger import Ledger, RecordUsage
from .accounting.outbox import Outbox
from .accounting.pricing import PriceBook
from .accounting.rollups import Compactor
from .admission.budget_stage import ReserveBudget
from .admission.budgets import BudgetStore
from .admission.redis_limits import RedisLimiter
from .admission.redis_tokens import RedisTokens
from .admission.sql_limits import SqlLimiter
from .admission.sql_tokens import SqlTokens
from .admission.stage import LimitRequests
from .admission.stop import Controls, SpendBreaker, StopUpstream
from .admission.token_stage import LimitTokens
from .auth import Authenticator, KeyStore, load_pepper
from .cache.layered import LayeredCache
from .cache.policy import parse_body_cache, parse_cache_control
from .cache.stage import ServeFromCache
from .calls import NO_DIRECTIVES, CacheControl, Call, CallKind, Reply, RequestContext, validate_body
from .config import Settings
from .errors import ServiceUnavailable, UpstreamError
from .observe.alerts import Alerts
from .observe.events import Counters, EventSink, RecordEvents, closed
from .observe.health import HealthProbes
from .resilience.degrade import Degrade
from .resilience.stages import Breakers, GuardDeployment, RetryBudgets, RetryCall, RouteCall
from .store.db import create_engine, first_line, migrate, ping
from .store.redis import create_redis
from .upstream.providers import Provider, build_providers
from .upstream.router import ModelCatalog, SendToProvider

logger = logging.getLogger("sluicegate")

__all__ = ["Gateway", "create_gateway"]

Send = Callable[[Call], Awaitable[Reply]]


class Gateway:
    """One gateway: its providers, its pipeline and its stores."""

    def __init__(
        self,
        settings: Settings,
        *,
        providers: Mapping[str, Provider],
        engine: AsyncEngine,
        redis: Redis | None,
        sink: EventSink | None = None,
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.catalog = ModelCatalog(settings)
        # Every model priced now: a model with no known price fails here, naming it.
        self.prices = PriceBook.from_settings(settings)
        self.engine = engine
        self.redis = redis
        self.counters = Counters()
        self._keys: KeyStore | None = None
        if settings.auth.require_keys:
            self._keys = KeyStore(engine, load_pepper(settings))
        self.authenticator = Authenticator(settings, self._keys)
        self.cache: LayeredCache | None = None
        inner: Send = SendToProvider(providers)
        self.outbox: Outbox | None = None
        self.ledger: Ledger | None = None
        if settings.ledger.enabled:
            cfg = settings.ledger
            self.outbox = Outbox(
                engine,
                Path(settings.data_dir) / "ledger-spool",
                batch=cfg.batch,
                interval_s=cfg.flush_interval_s,
                max_pending=cfg.max_pending,
                replay_interval_s=cfg.replay_interval_s,
            )
            self.ledger = Ledger(self.prices, self.outbox)
            inner = RecordUsage(inner, self.ledger)
        # Daily roll-ups and retention of the ledger, in the background (accounting/rollups.py).
        self.compactor = Compactor(engine, settings.ledger)
        resilience = settings.resilience
        self.breakers = Breakers(resilience)
        budgets = RetryBudgets(resilience)
        inner = RetryCall(inner, resilience, self.breakers, budgets=budgets)
        if resilience.breaker.enabled:
            inner = GuardDeployment(inner, self.breakers, resilience)
        inner = RouteCall(inner, self.catalog, resilience, settings.features, budgets=budgets)
        self.alerts = Alerts(settings.alerts.webhook_url)
        self.budgets = BudgetStore(engine, settings.budgets, redis=redis, alerts=self.alerts)
        self.breaker = SpendBreaker(engine, settings.controls.spend_breaker)
        self.controls = Controls(
            engine,
            self.authenticator.forget,
            settings.controls.poll_interval_s,
            also=(self.budgets.poll, lambda: self.breaker.check(self.controls.stops)),
        )
        inner = StopUpstream(inner, self.controls)
        inner = ReserveBudget(inner, self.budgets, self.prices, self.catalog, settings.budgets)
        limits = settings.limits
        self._sql_tokens: SqlTokens | None = None
        if limits.tokens:
            if redis is None:
                self._sql_tokens = SqlTokens(engine)
            inner = LimitTokens(
                inner,
                limits.tokens,
                RedisTokens(redis, limits.redis_timeout_ms / 1000) if redis is not None else None,
                self._sql_tokens,
                limits.local_share,
                settings.budgets.default_max_tokens,
                self.alerts,
            )
        if settings.cache.enabled:
            self.cache = LayeredCache(settings, engine, redis)
            inner = ServeFromCache(inner, self.cache, self.prices, self.ledger)
        inner = Degrade(inner, resilience, settings.features)
        self._sql_limiter: SqlLimiter | None = None
        if limits.requests:
            if redis is None:
                longest = max(rule.window_s for rule in limits.requests)
                self._sql_limiter = SqlLimiter(engine, longest)
            inner = LimitRequests(
                inner,
                limits.requests,
                RedisLimiter(redis, limits.redis_timeout_ms / 1000) if redis is not None else None,
                self._sql_limiter,
                limits.local_share,
                self.alerts,
                # The limits' script leaves with the cache's lookup in Redis (one round trip).
                defer=self.cache is not None and self.cache.redis is not None,
            )
        # `send` is the pipeline itself, so that a call costs no extra coroutine level.
        self._events = RecordEvents(inner, sink or self.counters)
        self.send: Send = self._events
        probes: dict[str, Callable[[], Awaitable[Any]]] = {"database": lambda: ping(engine)}
        if redis is not None:
            probes["redis"] = redis.ping
        self.probes = HealthProbes(probes, interval=settings.server.status_probe_interval_s)
        self.started_at = time.time()
        # Request ids: a random prefix per gateway (each server worker builds its own) and a
        # counter, so that no request asks the OS for randomness.
        self._id_prefix = "req_" + secrets.token_hex(6)
        self._id_counter = itertools.count(1)

    def new_request_id(self) -> str:
        """A request id unique across gateways and workers: ``req_`` and 24 hex digits."""
        return f"{self._id_prefix}{next(self._id_counter):012x}"

    @property
    def keys(self) -> KeyStore:
        """The virtual key store (its pepper is loaded on first use)."""
        if self._keys is None:
            self._keys = KeyStore(self.engine, load_pepper(self.settings))
        return self._keys

    async def start(self) -> None:
        """Migrate the schema if configured to, and start the dependency probes; a database
        that cannot be reached or migrated is a `ServiceUnavailable` naming why."""
        if self.settings.database.migrate_on_start:
            try:
                await migrate(self.engine)
            except (SQLAlchemyError, OSError) as exc:
                raise ServiceUnavailable(
                    "the database is unreachable, or could not be migrated "
                    f"({self.engine.url.render_as_string(hide_password=True)}): {first_line(exc)}",
                    code="database_unavailable",
                ) from exc
        await self.probes.check_once()
        self.probes.start()
        try:
            await self.controls.refresh()
        except Exception as exc:  # the database is down: no upstream call until the poll reads them
            self.controls.unread(exc)
        self.controls.start()
        if self.outbox is not None:
            try:
                await self.outbox.start()
            except Exception as exc:  # the database is down: rows spool until it is back
                logger.warning("ledger: could not replay spooled rows at start (%r)", exc)
        self.compactor.start()
        if self.cache is not None:
            await self.cache.start()

    async def aclose(self) -> None:
        """Refuse new calls, wait for those under way (up to ``server.drain_timeout_s``; a stream
        until its reader closes it), then stop background work, flush the cache's and the
        ledger's pending writes, and release connections."""
        if self._events.closed:
            return
        self._events.closed = True
        left = await self._events.drain(self.settings.server.drain_timeout_s)
        if left:
            logger.warning(
                "gateway: closing with %d calls still under way after %g s (server.drain_timeout_s); "
                "their ledger rows are recorded as interrupted, at their estimate",
                left,
                self.settings.server.drain_timeout_s,
            )
        await self.probes.stop()
        await self.controls.stop()
        await self.compactor.stop()
        if self.cache is not None:
            await self.cache.aclose()
        if self.outbox is not None:
            await self.outbox.aclose()
        if self._sql_limiter is not None:
            self._sql_limiter.close()
        if self._sql_tokens is not None:
            self._sql_tokens.close()
        self.budgets.close()
        await self.alerts.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        if self.redis is not None:
            await self.redis.aclose(close_connection_pool=True)
        await self.engine.dispose()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # The pipeline

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
        """Validate ``body`` and resolve its model; raise `InvalidRequest` or `ModelNotFound`.

        Without ``context``, the call is the dev org's (``auth.dev_org``), for the feature and
        user the body names in ``metadata.feature``, ``metadata.user`` or ``user``, as over HTTP
        without a key. An unknown feature is an `InvalidRequest` (``unknown_feature``).
        ``cache_control`` and ``if_none_match`` are the request's headers of those names; the
        body's ``cache`` object is taken out of the body (it never goes upstream). Run the call
        with ``await gateway.send(call)``.
        """
        if self._events.closed:
            raise closed()
        model, stream = validate_body(kind, body)
        if context is None:
            context = self.authenticator.context(None, None, None, body)
        else:
            self.authenticator.check_context(context)
        directives = NO_DIRECTIVES
        if cache_control is not None or if_none_match is not None or "cache" in body:
            directives = parse_cache_control(cache_control)
            if if_none_match is not None:
                directives = CacheControl(
                    directives.no_cache, directives.no_store, directives.max_age, None, (), if_none_match
                )
            if "cache" in body:
                body = dict(body)
                directives = parse_body_cache(body.pop("cache"), directives)
        return Call(
            kind,
            body,
            self.catalog.resolve(model, kind),
            context,
            request_id or self.new_request_id(),
            stream,
            time.perf_counter(),
            directives,
        )

    # The library face

    async def chat(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        context: RequestContext | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """A chat completion, as OpenAI's JSON object."""
        body = {**params, "model": model, "messages": _json_arrays(messages), "stream": False}
        reply = await self.send(self.new_call("chat", body, context))
        return _object(reply.body)

    async def stream_chat(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        context: RequestContext | None = None,
        **params: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        """A streamed chat completion, chunk by chunk; raises `UpstreamError` if it breaks."""
        body = {**params, "model": model, "messages": _json_arrays(messages), "stream": True}
        reply = await self.send(self.new_call("chat", body, context))
        stream = reply.stream
        assert stream is not None
        try:
            async for data in stream:
                for event in data.split(b"\n\n"):
                    line = event.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        return
                    yield _object(payload)
        finally:
            await stream.aclose()

    async def embed(
        self,
        *,
        model: str,
        input: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]],
        context: RequestContext | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Embeddings, as OpenAI's JSON object."""
        body = {**params, "model": model, "input": _json_arrays(input)}
        reply = await self.send(self.new_call("embeddings", body, context))
        return _object(reply.body)


def _json_arrays(value: Any) -> Any:
    """``value`` with its tuples (and its items' tuples) as lists, as a JSON body has them;
    anything else as it is, for the request's checks to judge (not a `TypeError` here)."""
    if isinstance(value, tuple | list):
        return [list(item) if isinstance(item, tuple) else item for item in value]
    return value


def _object(data: bytes) -> dict[str, Any]:
    value = orjson.loads(data)
    if not isinstance(value, dict):
        raise UpstreamError("the upstream answered with something other than a JSON object")
    return value


def create_gateway(settings: Settings, *, sink: EventSink | None = None) -> Gateway:
    """Build a `Gateway` from ``settings``; no I/O happens until it is used or started."""
    return Gateway(
        settings,
        providers=build_providers(settings),
        engine=create_engine(settings.database.url),
        redis=create_redis(settings.redis.url) if settings.redis.url else None,
        sink=sink,
    )

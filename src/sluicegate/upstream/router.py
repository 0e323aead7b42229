"""Models and their deployments: what a public model name resolves to, and the innermost stage.

A model has one or more deployments (a provider and the provider's name for it) and an
optional chain of fallback models. The catalog keeps, per model, its deployments with their
weights and its fallbacks; `sluicegate.resilience.stages.RouteCall` orders them per call.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..calls import Call, CallKind, ModelRoute, Reply
from ..config import Settings
from ..errors import InvalidRequest, ModelNotFound
from .providers import Provider

__all__ = ["ModelCatalog", "SendToProvider"]


class ModelCatalog:
    """Resolves the model names clients use (names and aliases) to routes, and knows each
    model's deployments and fallbacks."""

    def __init__(self, settings: Settings) -> None:
        self._routes: dict[str, ModelRoute] = {}
        self._kinds: dict[str, tuple[str, ...]] = {}
        # Per configured model: its deployments with their weights, first the primary one.
        self.deployments: dict[str, tuple[tuple[ModelRoute, float], ...]] = {}
        self.fallbacks: dict[str, tuple[str, ...]] = {}
        for name, model in settings.models.items():
            route = ModelRoute(name, model.provider, model.upstream_model or name)
            more = tuple(
                (ModelRoute(name, d.provider, d.upstream_model or route.upstream_model), d.weight)
                for d in model.deployments
            )
            self.deployments[name] = ((route, model.weight), *more)
            self.fallbacks[name] = model.fallbacks
            self._kinds[name] = model.kinds(name)
            for public in (name, *model.aliases):
                self._routes[public] = route
        self.names = tuple(settings.models)
        # Per model and kind of call: the fallbacks that answer that kind (a chat model's
        # embedding fallback is no fallback for a chat call).
        self._fallbacks_for = {
            (name, kind): tuple(f for f in fallbacks if kind in self._kinds[f])
            for name, fallbacks in self.fallbacks.items()
            for kind in ("chat", "embeddings")
        }

    def canonical(self, model: str) -> str:
        """The configured name of ``model`` (a name or an alias), as the ledger records it;
        ``model`` itself when it is neither (a model no longer configured)."""
        route = self._routes.get(model)
        return route.name if route is not None else model

    def resolve(self, model: str, kind: CallKind | None = None) -> ModelRoute:
        """The route for ``model``; `ModelNotFound` when it is not configured, `InvalidRequest`
        when it does not serve ``kind`` of call."""
        route = self._routes.get(model)
        if route is None:
            raise ModelNotFound(
                f"the model {model!r} does not exist or is not configured on this gateway; "
                "GET /v1/models lists the available ones",
                param="model",
            )
        if kind is not None and kind not in self._kinds[route.name]:
            serves = " and ".join(self._kinds[route.name])
            path = "/v1/embeddings" if kind == "chat" else "/v1/chat/completions"
            raise InvalidRequest(
                f"the model {model!r} serves {serves} only, not {kind}; "
                f"send it to {path}, or pick a {kind} model from GET /v1/models",
                param="model",
                code="model_not_supported",
            )
        return route

    def serves(self, name: str, kind: CallKind) -> bool:
        """Whether the configured model ``name`` answers ``kind`` of call."""
        return kind in self._kinds[name]

    def fallbacks_for(self, name: str, kind: CallKind) -> tuple[str, ...]:
        """The fallbacks of the configured model ``name`` that answer ``kind`` of call, in order."""
        return self._fallbacks_for[(name, kind)]

    def has_alternatives(self, name: str) -> bool:
        """Whether ``name`` has more than one deployment or any fallback."""
        return len(self.deployments[name]) > 1 or bool(self.fallbacks[name])


class SendToProvider:
    """The innermost stage: hand the call to its provider."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = providers

    async def __call__(self, call: Call) -> Reply:
        return await self._providers[call.route.provider].send(call)

"""The routing stage: which provider serves a call.

Today a model has one provider. Fallback chains and hedging will live here, wrapping
`SendToProvider` with the breaker and retry stages in between.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..calls import Call, ModelRoute, Reply
from ..config import Settings
from ..errors import ModelNotFound
from .providers import Provider

__all__ = ["ModelCatalog", "SendToProvider"]


class ModelCatalog:
    """Resolves the model names clients use (names and aliases) to routes."""

    def __init__(self, settings: Settings) -> None:
        self._routes: dict[str, ModelRoute] = {}
        for name, model in settings.models.items():
            route = ModelRoute(name, model.provider, model.upstream_model or name)
            for public in (name, *model.aliases):
                self._routes[public] = route
        self.names = tuple(settings.models)

    def resolve(self, model: str) -> ModelRoute:
        """The route for ``model``; `ModelNotFound` when it is not configured."""
        route = self._routes.get(model)
        if route is None:
            raise ModelNotFound(
                f"the model {model!r} does not exist or is not configured on this gateway; "
                "GET /v1/models lists the available ones",
                param="model",
            )
        return route


class SendToProvider:
    """The innermost stage: hand the call to its provider."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = providers

    async def __call__(self, call: Call) -> Reply:
        return await self._providers[call.route.provider].send(call)

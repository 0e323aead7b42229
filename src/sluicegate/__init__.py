"""sluicegate: an AI gateway that makes the LLM features of an application fast, cheap and reliable.

Use it as an OpenAI-compatible proxy (``sluicegate serve``) or in-process::

    from sluicegate import create_gateway, load_settings

    async with create_gateway(load_settings()) as gateway:
        answer = await gateway.chat(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
"""

from ._version import __version__
from .calls import RequestContext, Usage
from .config import (
    FeatureConfig,
    MockBehaviour,
    ModelConfig,
    ProviderConfig,
    Settings,
    Timeouts,
    load_settings,
)
from .errors import (
    AllUpstreamsFailed,
    AuthenticationFailed,
    CircuitOpen,
    ConfigError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    RequestTooLarge,
    ServiceUnavailable,
    SluicegateError,
    UpstreamError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .gateway import Gateway, create_gateway

__all__ = [
    "AllUpstreamsFailed",
    "AuthenticationFailed",
    "CircuitOpen",
    "ConfigError",
    "FeatureConfig",
    "Gateway",
    "InvalidRequest",
    "MockBehaviour",
    "ModelConfig",
    "ModelNotFound",
    "NotFound",
    "PermissionDenied",
    "ProviderConfig",
    "RequestContext",
    "RequestTooLarge",
    "ServiceUnavailable",
    "Settings",
    "SluicegateError",
    "Timeouts",
    "UpstreamError",
    "UpstreamStreamBroken",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "Usage",
    "__version__",
    "create_gateway",
    "load_settings",
]

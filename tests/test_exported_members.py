"""The public API is exactly what `__all__` says, sorted."""

import sluicegate


def test_all_is_sorted_and_exported() -> None:
    """Every name in __all__ exists, and __all__ is sorted."""
    assert sluicegate.__all__ == sorted(sluicegate.__all__)
    for name in sluicegate.__all__:
        assert hasattr(sluicegate, name), name


def test_public_names_are_pinned() -> None:
    """Adding or removing a public name is a deliberate change."""
    assert set(sluicegate.__all__) == {
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
    }

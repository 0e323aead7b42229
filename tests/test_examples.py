"""The shipped example config stays loadable."""

from pathlib import Path

import pytest

from sluicegate import load_settings

EXAMPLE = Path(__file__).parent.parent / "examples" / "sluicegate.yaml"


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/sluicegate.yaml validates and declares the brief's three features."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = load_settings(EXAMPLE)
    assert {"okr-template", "chat", "insights"} <= set(settings.features)
    assert settings.models["gpt-4o-mini"].aliases == ("fast",)
    assert settings.auth.require_keys is True

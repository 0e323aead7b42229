"""An emergency stop and a key revocation made through one gateway process reach another
process sharing the database within a second."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sluicegate.testing import MockUpstream
from tests.integration.conftest import GatewayProcess, get, http, post

ADMIN = "admin-secret-for-controls"


def _within(seconds: float, check: Callable[[], bool]) -> float:
    """How long ``check`` took to become true; fails after ``seconds``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_stop_and_a_revocation_reach_every_process_within_a_second(
    gateway_processes: Callable[..., list[GatewayProcess]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SG_TEST_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("SG_TEST_PEPPER", "pepper-for-the-controls-test")
    with MockUpstream() as upstream:
        config = {
            "data_dir": str(tmp_path / "data"),
            "auth": {
                "require_keys": True,
                "admin_key_env": "SG_TEST_ADMIN_KEY",
                "pepper_env": "SG_TEST_PEPPER",
            },
            "providers": {"up": {"kind": "openai", "base_url": upstream.url}},
            "models": {"gpt-4o-mini": {"provider": "up"}},
            "cache": {"enabled": False},
        }
        a, b = gateway_processes(config, count=2)
        admin = {"authorization": f"Bearer {ADMIN}"}
        made = post(a.url + "/api/ai/keys", {"org": "acme"}, admin).json()
        key = {"authorization": f"Bearer {made['key']}"}
        counter = iter(range(10_000))

        def chat_status(server: GatewayProcess) -> int:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q {next(counter)}"}]}
            return post(server.url + "/v1/chat/completions", body, key).status_code

        assert chat_status(b) == 200  # b has the key in its cache now
        assert post(a.url + "/api/ai/stop", {"org": "acme", "reason": "drill"}, admin).status_code == 201
        _within(1.0, lambda: chat_status(b) == 503)
        assert get(b.url + "/api/ai/stop", admin).json()["stops"][0]["scope"] == "org:acme"
        assert post(a.url + "/api/ai/resume", {"org": "acme"}, admin).json()["lifted"] is True
        _within(1.0, lambda: chat_status(b) == 200)

        assert http("DELETE", a.url + f"/api/ai/keys/{made['id']}", None, admin).status_code == 200
        _within(1.0, lambda: chat_status(b) == 401)

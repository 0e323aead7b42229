"""Tests for sluicegate.server.auth_delay, and the delay as a client sees it."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sluicegate import create_gateway
from sluicegate.server.auth_delay import FailedAuthDelay
from sluicegate.testing import GatewayServer, mock_settings


def test_the_first_failures_are_free_then_the_delay_doubles_to_its_cap() -> None:
    delay = FailedAuthDelay(free=3, base_s=0.1, cap_s=1.0)
    assert [delay.failed("1.2.3.4", 0.0) for _ in range(8)] == [0, 0, 0, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert delay.failed("5.6.7.8", 0.0) == 0  # another address is not slowed


def test_the_count_starts_again_after_the_window() -> None:
    delay = FailedAuthDelay(free=1, window_s=60)
    delay.failed("a", 0.0)
    assert delay.failed("a", 1.0) > 0
    assert delay.failed("a", 61.0) == 0


def test_the_table_is_bounded() -> None:
    delay = FailedAuthDelay(free=0, max_addresses=100)
    for n in range(1000):
        delay.failed(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(delay._failures) == 100


def test_a_key_guesser_is_slowed_down(tmp_path: Path) -> None:
    settings = mock_settings(data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as server:
        took = []
        for n in range(8):
            request = urllib.request.Request(
                server.url + "/v1/chat/completions",
                data=b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',
                headers={"authorization": f"Bearer sk-sg-guess{n}"},
            )
            started = time.monotonic()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            took.append(time.monotonic() - started)
            assert refused.value.code == 401
            refused.value.close()
    assert max(took[:5]) < 0.1 <= took[5] and took[7] >= 0.4


def refusal_times(url: str, bearer: str, code: bytes, tries: int = 8) -> list[float]:
    """How long each of ``tries`` requests with ``bearer`` took to be refused with a 401 ``code``."""
    took = []
    for _ in range(tries):
        request = urllib.request.Request(url + "/v1/models", headers={"authorization": f"Bearer {bearer}"})
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        took.append(time.monotonic() - started)
        assert refused.value.code == 401 and code in refused.value.read()
        refused.value.close()
    return took


def test_a_rotated_and_expired_key_is_answered_at_once(tmp_path: Path) -> None:
    """Its holder had a real key (behind a proxy, every client shares one address): the 401 that
    names the successor is not slowed down with the guessers'."""
    settings = mock_settings(data_dir=tmp_path, auth={"require_keys": True})

    async def rotated() -> str:
        async with create_gateway(settings) as gateway:
            key, record = await gateway.keys.create("acme")
            await gateway.keys.rotate(record.id, 0)
            return key

    key = asyncio.run(rotated())
    with GatewayServer(settings) as server:
        took = refusal_times(server.url, key, b"expired_api_key")
    assert max(took) < 0.1


def test_an_expired_browser_token_is_answered_at_once(tmp_path: Path) -> None:
    """A correctly signed token that has expired is no guess: its 401, which tells the page to
    fetch a new token, is not slowed down."""
    from sluicegate.browser_tokens import BrowserPrincipal, sign_token

    settings = mock_settings(data_dir=tmp_path)
    with GatewayServer(settings) as server:
        secret = server.app.gateway.authenticator._token_secret()
        token = sign_token(secret, BrowserPrincipal("local", "ann", ("chat",), int(time.time()) - 10, None))
        took = refusal_times(server.url, token, b"browser_token_expired")
    assert max(took) < 0.1

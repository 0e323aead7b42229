"""No key, prompt or answer text is ever written to the logs.

`tests/conftest.py` sends every log record of the whole test run, at DEBUG, to one file and
fails the run if `PLANTED_SECRET` is in it at the end. The tests here plant the secret as a
key, a prompt, an answer, a user and an admin key, along the success and failure paths, and
check the log at once as well.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sluicegate.testing import GatewayServer, MockUpstream, mock_settings

from .conftest import PLANTED_SECRET, session_log_text

PROMPT = [{"role": "user", "content": f"please keep {PLANTED_SECRET} to yourself"}]


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return int(exc.code)


@pytest.mark.parametrize(
    "behaviour",
    [
        {},
        {"error_rate": 1.0, "error_status": 500},
        {"error_rate": 1.0, "error_status": 400},
        {"hang_rate": 1.0},
    ],
)
def test_a_planted_secret_never_reaches_the_log(tmp_path: Path, behaviour: dict[str, Any]) -> None:
    with MockUpstream() as upstream:
        upstream.behave(**behaviour)
        settings = mock_settings(
            upstream.url,
            data_dir=tmp_path,
            resilience={"retry": {"base_ms": 1, "cap_ms": 2}},
        )
        with GatewayServer(settings) as server:
            chat = server.url + "/v1/chat/completions"
            post(chat, {"model": "gpt-4o-mini", "messages": PROMPT}, {"x-sluicegate-user": PLANTED_SECRET})
            post(chat, {"model": "gpt-4o-mini", "messages": PROMPT, "stream": True})
            post(chat, {"model": "gpt-4o-mini", "messages": PROMPT, "max_tokens": PLANTED_SECRET})
            post(chat, {"model": PLANTED_SECRET, "messages": PROMPT})
            post(
                chat,
                {"model": "gpt-4o-mini", "messages": PROMPT},
                {"authorization": f"Bearer {PLANTED_SECRET}"},
            )
            post(
                server.url + "/api/ai/keys",
                {"org": PLANTED_SECRET},
                {"authorization": f"Bearer {PLANTED_SECRET}"},
            )
    assert PLANTED_SECRET not in session_log_text()


def test_keys_required_and_wrong_keys(tmp_path: Path) -> None:
    settings = mock_settings(data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as server:
        for key in (PLANTED_SECRET, f"sk-sg-{PLANTED_SECRET}"):
            status = post(
                server.url + "/v1/chat/completions",
                {"model": "gpt-4o-mini", "messages": PROMPT},
                {"authorization": f"Bearer {key}"},
            )
            assert status == 401
    assert PLANTED_SECRET not in session_log_text()


def test_the_run_log_catches_sluicegate_debug_records() -> None:
    """The check above would see a leak: sluicegate's records down to DEBUG reach the file."""
    logging.getLogger("sluicegate.test").debug("log-check marker 5e1f")
    assert "log-check marker 5e1f" in session_log_text()

"""Operator alerts: raised once when a condition begins, resolved once when it ends, logged,
and posted to the webhook in the background."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from redis.asyncio import Redis

from sluicegate.admission.redis_limits import RedisLimiter
from sluicegate.admission.stage import LimitRequests
from sluicegate.calls import Call, Reply, RequestContext
from sluicegate.config import RequestLimit
from sluicegate.observe.alerts import Alerts
from sluicegate.store.redis import create_redis


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A local webhook that keeps what it is sent."""
    received: list[dict[str, object]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    server.shutdown()
    server.server_close()


async def test_a_condition_is_raised_and_resolved_once_each(
    webhook: tuple[str, list[dict[str, object]]], caplog: pytest.LogCaptureFixture
) -> None:
    """Repeats change nothing; each change is one log line and one post."""
    url, received = webhook
    caplog.set_level(logging.WARNING, "sluicegate.alerts")
    alerts = Alerts(url)
    for _ in range(3):
        alerts.alert("redis-down:x", "x: Redis is unreachable")
    alerts.resolve("redis-down:y", "never raised: nothing to say")
    for _ in range(2):
        alerts.resolve("redis-down:x", "x: Redis is back")
    await alerts.aclose()
    assert [(r["condition"], r["state"]) for r in received] == [
        ("redis-down:x", "raised"),
        ("redis-down:x", "resolved"),
    ]
    assert [r.getMessage() for r in caplog.records] == ["x: Redis is unreachable", "x: Redis is back"]


async def test_a_webhook_that_is_down_costs_a_log_line_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    """The alert is in the log whatever the webhook does."""
    caplog.set_level(logging.WARNING, "sluicegate.alerts")
    alerts = Alerts("http://127.0.0.1:1/alerts")
    alerts.alert("c", "c began")
    await alerts.aclose()
    assert "could not post to the webhook" in caplog.records[-1].getMessage()


async def test_the_rate_limits_alert_when_redis_is_unreachable(
    webhook: tuple[str, list[dict[str, object]]],
) -> None:
    """Ten requests while Redis is down: one alert, with the condition named."""

    async def answer(call: Call) -> Reply:
        return Reply(body=b"{}")

    url, received = webhook
    alerts = Alerts(url)
    unreachable: Redis = create_redis("redis://127.0.0.1:1/0", timeout=0.2)
    rules = [RequestLimit(per="user", limit=100, window_s=60)]
    stage = LimitRequests(answer, rules, RedisLimiter(unreachable, 0.5), None, 0.5, alerts)
    context = RequestContext("acme", "ann", "chat")
    for n in range(10):
        await stage(Call("chat", {"n": n}, None, context, f"r{n}"))  # type: ignore[arg-type]
    await alerts.aclose()
    await unreachable.aclose()
    assert [(r["condition"], r["state"]) for r in received] == [("redis-down:rate-limits", "raised")]
    assert "rate limits: Redis is unreachable" in str(received[0]["message"])

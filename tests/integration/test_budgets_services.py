"""A budget under load across 4 gateway processes, counted in Redis (with PostgreSQL) or in the
embedded SQLite database: 1,000 concurrent requests, a mock that bills every call up to
max_tokens. The settled spend stays within the
budget, nothing is left reserved, the refusals are budget_exceeded, the spend matches the
ledger to the micro-dollar, and the 80 % alert reaches its webhook exactly once."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from sluicegate.admission.budget_math import period_bounds
from sluicegate.config import MockBehaviour
from sluicegate.store.db import create_engine
from sluicegate.store.redis import create_redis
from sluicegate.testing import MockUpstream
from tests.integration.conftest import GatewayProcess, Response, post

LIMIT_MICRO = 10_000  # $0.01: room for about 80 calls of 200 completion tokens


async def _totals(url: str, redis_url: str | None) -> tuple[int, int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            if redis_url is None:
                spent, reserved = (
                    await connection.execute(text("SELECT spent_micro, reserved_micro FROM budget_periods"))
                ).one()
            else:
                client: Redis = create_redis(redis_url)
                period, _ = period_bounds("month", time.time())
                values = await client.hmget(f"sg:budget:{{local}}:{period}", ["spent", "reserved"])
                await client.aclose()
                spent, reserved = (int(v or 0) for v in values)
            ledger = await connection.scalar(
                text(
                    "SELECT coalesce(sum(cost_micro), 0) FROM usage_ledger"
                    " WHERE org = 'local' AND attempt >= 1"
                )
            )
        return int(spent), int(reserved), int(ledger or 0)
    finally:
        await engine.dispose()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.postgres])])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """Where budgets are counted: the embedded SQLite database, or Redis beside PostgreSQL."""
    if request.param == "embedded":
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'sluicegate.db'}", None
    return request.getfixturevalue("database_url"), request.getfixturevalue("redis_url")


class _Hook(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:
        self.received.append(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_budget_holds_across_4_processes_under_1000_concurrent_requests(
    gateway_processes: Callable[..., list[GatewayProcess]], tmp_path: Path, stores: tuple[str, str | None]
) -> None:
    database, redis_url = stores
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hook.received = []
    with MockUpstream(MockBehaviour(answer_words=400)) as upstream:
        config = {
            "data_dir": str(tmp_path / "data"),
            "database": {"url": database},
            "redis": {"url": redis_url},
            "providers": {"up": {"kind": "openai", "base_url": upstream.url}},
            "models": {"gpt-4o-mini": {"provider": "up"}},
            "cache": {"enabled": False},
            "budgets": {  # for the dev org, which every request without a key belongs to
                "orgs": [{"org": "local", "limit_usd": "0.01"}],
                "throttle_at": 1.0,
                "webhook_url": f"http://127.0.0.1:{hook.server_address[1]}/alert",
            },
        }
        servers = gateway_processes(config, count=4)

        def one(n: int) -> Response:
            body = {
                "model": "gpt-4o-mini",
                "max_tokens": 200,
                "messages": [{"role": "user", "content": f"q {n}"}],
            }
            return post(servers[n % 4].url + "/v1/chat/completions", body)

        with ThreadPoolExecutor(max_workers=250) as pool:
            responses = list(pool.map(one, range(1000)))
        statuses = [r.status_code for r in responses]
        admitted = statuses.count(200)
        # About 80 whole calls fit; near the limit, calls are admitted with fewer tokens.
        assert 20 <= admitted < 1000 and statuses.count(429) == 1000 - admitted, set(statuses)
        codes = {r.json()["error"]["code"] for r in responses if r.status_code == 429}
        assert codes == {"budget_exceeded"}
        deadline = time.monotonic() + 10
        spent, reserved, ledger = asyncio.run(_totals(database, redis_url))
        while (reserved or ledger != spent) and time.monotonic() < deadline:
            time.sleep(0.3)
            spent, reserved, ledger = asyncio.run(_totals(database, redis_url))
        assert spent <= LIMIT_MICRO and reserved == 0
        assert ledger == spent  # the budget and the ledger priced the same calls alike
        deadline = time.monotonic() + 5  # the alert is posted after its settlement
        while not _Hook.received and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # and a second one would have had time to come
    hook.shutdown()
    hook.server_close()
    assert len(_Hook.received) == 1  # one alert, whichever of the 4 processes crossed 80 % first
    assert json.loads(_Hook.received[0])["scope"] == "org:local"

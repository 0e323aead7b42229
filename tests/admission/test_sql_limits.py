"""Rate limits in the database (no Redis): exact across concurrent worker processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

from sqlalchemy.ext.asyncio import AsyncEngine

from sluicegate.admission.limits import checks_for
from sluicegate.admission.sql_limits import SqlLimiter
from sluicegate.calls import RequestContext
from sluicegate.config import RequestLimit

ANN = RequestContext("acme", "ann", "chat")
LIMIT = RequestLimit(per="user", limit=25, window_s=3600)


async def test_limits_hold_and_refusals_log_nothing(engine: AsyncEngine) -> None:
    now = [1000.0]
    limiter = SqlLimiter(engine, 3600, clock=lambda: now[0])
    org = RequestLimit(per="org", limit=3, window_s=60)
    results = []
    for n in range(5):
        now[0] += 1
        results.append(await limiter.admit(checks_for([LIMIT, org], ANN), f"r{n}"))
    assert [v.admitted for v in results] == [True, True, True, False, False]
    assert results[2].remaining == (22, 0) and results[3].blocked == 1
    # A refusal says what each limit has left and when its oldest request leaves the window.
    assert (results[3].remaining, results[3].reset_s, results[3].retry_after_s) == ((22, 0), (3597, 57), 57)
    assert results[3].retry_after_s == 57  # the first request leaves the org's window at 1061
    now[0] = 1062.0
    # at 1062 the requests of 1001 and 1002 have left the org's window; the one of 1003 has not
    assert (await limiter.admit(checks_for([LIMIT, org], ANN), "later")).remaining == (21, 1)


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from sluicegate.admission.limits import checks_for
    from sluicegate.admission.sql_limits import SqlLimiter
    from sluicegate.calls import RequestContext
    from sluicegate.config import RequestLimit
    from sluicegate.store.db import create_engine

    async def main():
        engine = create_engine({url!r})
        limiter = SqlLimiter(engine, 3600)
        limit = RequestLimit(per="user", limit=25, window_s=3600)
        checks = checks_for([limit], RequestContext("acme", "ann"))
        verdicts = await asyncio.gather(*(limiter.admit(checks, str(n)) for n in range(40)))
        print(sum(v.admitted for v in verdicts))
        await engine.dispose()

    asyncio.run(main())
    """
)


async def test_exactly_the_limit_across_four_processes(engine: AsyncEngine, store_url: str) -> None:
    script = _WORKER.format(url=store_url)
    processes = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in processes))
    assert all(p.returncode == 0 for p in processes)
    assert sum(int(out.strip()) for out, _ in outputs) == LIMIT.limit  # 160 tried, 25 admitted

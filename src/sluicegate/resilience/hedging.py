"""Hedged requests: when the first deployment's reply is late, ask the next one too.

`hedge_delay_s` decides how late is late (pure); `race` runs the two attempts. The first
reply wins and the other attempt is cancelled: its ledger row says 499, its breaker permit is
given back, and a stream it may have opened is closed. A hedge is a second upstream call, so
it is spent from the provider's retry budget and billed like any attempt.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from ..calls import Call, ModelRoute, Reply

__all__ = ["HEDGE_HEADER", "hedge_delay_s", "p95", "race"]

HEDGE_HEADER = "x-sluicegate-hedge"
_MIN_SAMPLES = 20
_UNKNOWN_DELAY_S = 1.0

Send = Callable[[Call], Awaitable[Reply]]


def p95(samples: Sequence[float]) -> float | None:
    """The 95th percentile of ``samples``; None with fewer than 20 of them."""
    if len(samples) < _MIN_SAMPLES:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def hedge_delay_s(after_ms: int | None, target_ms: int | None, recent: Sequence[float]) -> float:
    """How long to wait for the first reply before hedging: the configured ``after_ms``, else
    the deployment's recent p95 time to reply, at most half the feature's latency target (a
    deployment slow often enough has a p95 that would never hedge), else 1 s."""
    if after_ms is not None:
        return after_ms / 1000
    delay = p95(recent)
    half_target = target_ms / 2000 if target_ms is not None else None
    if delay is None:
        return half_target if half_target is not None else _UNKNOWN_DELAY_S
    return min(delay, half_target) if half_target is not None else delay


async def race(
    send: Send,
    call: Call,
    first: ModelRoute,
    second: ModelRoute,
    delay_s: float,
    may_hedge: Callable[[], bool],
) -> tuple[Reply, Call, bool]:
    """Send ``call`` to ``first``; if no reply within ``delay_s`` (and ``may_hedge()``), also to
    ``second``. The winner's reply, the call it answered (its route and attempt), and whether a
    hedge was sent. Raises the first attempt's error if it fails before the delay, or the last
    error when both fail."""
    if call.tries is None:  # from here on, every copy's attempt takes a number of its own
        call.tries = itertools.count(call.attempt + 1)
    primary = replace(call, route=first)
    copies = [primary]
    first_task = asyncio.ensure_future(send(primary))
    pending = {first_task}
    try:
        # asyncio.wait does not cancel what it waits for: the finally below does, when the
        # caller is cancelled (the client left) or an attempt raised.
        done, pending = await asyncio.wait(pending, timeout=delay_s)
        if done or not may_hedge():
            pending = set()
            return await first_task, primary, False
        backup = replace(call, route=second, attempt=next(call.tries))
        copies.append(backup)
        tasks = {first_task: primary, asyncio.ensure_future(send(backup)): backup}
        pending = set(tasks)
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None:
                    # The budget settles what the losers cost too (`Call.losers`): one cancelled
                    # now its prompt's estimate, one that answered too its answer (one that
                    # failed nothing, as the ledger bills them).
                    losers = call.losers = [(tasks[other], None) for other in pending]
                    for other in done - {task}:  # both ended in the same turn: close the loser
                        if other.exception() is None:
                            losers.append((tasks[other], other.result()))
                        _close_loser(other)
                    return task.result(), tasks[task], True
                error = task.exception()
        assert error is not None
        raise error
    finally:
        for task in pending:
            task.cancel()
        # The copies' attempts that timed out after their request left are the call's to bill.
        known = len(call.timed_out)
        call.timed_out += tuple(route for copy in copies for route in copy.timed_out[known:])


def _close_loser(task: asyncio.Future[Reply]) -> None:
    if task.exception() is None and task.result().stream is not None:
        stream = task.result().stream
        assert stream is not None
        asyncio.ensure_future(stream.aclose()).add_done_callback(_quiet)


def _quiet(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a failure to close the loser is of no interest

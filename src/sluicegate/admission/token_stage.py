"""The token-limit stage, between the cache and the budget (a cached answer uses no tokens):
take a miss's worst case from its per-minute buckets before it goes upstream, and give back
what it did not use once its usage is known.

With Redis configured the buckets live there (`RedisTokens`), exact across every replica.
While Redis is down each process keeps ``limits.local_share`` of each bucket on its own, and
goes back to Redis when it answers. Without Redis the buckets are rows of the database
(`SqlTokens`), exact across the workers that share it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..accounting.ledger import completion_limit, estimate_prompt_tokens, reply_usage, stream_usage
from ..background import spawn
from ..calls import Call, Reply, ReplyStream, Usage
from ..config import TokenLimit
from ..errors import SluicegateError, TokensLimited
from ..observe.alerts import Alerts
from .outage import DATABASE_ERRORS, Outage, shared_or_alone
from .redis_tokens import RedisTokens
from .sql_tokens import SqlTokens
from .token_bucket import LocalBuckets, Taken, TokenCheck, token_checks

__all__ = ["LimitTokens"]

logger = logging.getLogger("sluicegate.limits")
_WHAT, _ALONE = "token limits", "this process holds its share (limits.local_share) of each bucket"
Send = Callable[[Call], Awaitable[Reply]]


class LimitTokens:
    """Refuses a miss over any of its token limits with a 429; gives back what calls did not
    use; adds OpenAI's ``x-ratelimit-*-tokens`` headers."""

    def __init__(
        self,
        send: Send,
        rules: Sequence[TokenLimit],
        redis: RedisTokens | None,
        sql: SqlTokens | None,
        local_share: float,
        default_max_tokens: int,
        alerts: Alerts | None = None,
    ) -> None:
        self._send = send
        self._rules = tuple(rules)
        self._redis = redis
        self._sql = sql
        self._local = LocalBuckets(local_share)
        self._default_max_tokens = default_max_tokens
        alerts = alerts or Alerts()
        self._redis_outage = Outage(alerts, "redis-down:token-limits", _WHAT, _ALONE)
        self._sql_outage = Outage(alerts, "database-down:token-limits", _WHAT, _ALONE, "the database", 0)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, call: Call) -> Reply:
        checks = token_checks(self._rules, call.context)
        if not checks:
            return await self._send(call)
        body = call.body
        # An embedding has no completion: its input is all it uses.
        asked = 0 if call.kind == "embeddings" else completion_limit(body, self._default_max_tokens)
        worst = estimate_prompt_tokens(body) + asked
        tightest = min(check.rule.tokens_per_minute for check in checks)
        # At most the tightest bucket is held: a call asking for more is let through when it is
        # full, and its settlement takes what it used beyond (a give-back that fails then costs
        # a bucket a minute's refill at most, never a debt of hours).
        cost = min(worst, tightest)
        taken = await self._take(checks, cost)
        if not taken.admitted:
            assert taken.blocked is not None
            rule = checks[taken.blocked].rule
            wait = max(1, math.ceil(taken.retry_after_s))  # not a moment before the bucket holds it
            uses, smaller = (
                ("its input", "a shorter input")
                if call.kind == "embeddings"
                else ("its prompt and max_tokens", "a smaller max_tokens")
            )
            raise TokensLimited(
                f"token limit reached: at most {rule.tokens_per_minute:,} tokens a minute for each "
                f"{rule.per}{' in feature ' + rule.feature if rule.feature else ''}, and this call "
                f"may use {worst:,} ({uses}); try again in {wait} s, or send {smaller}",
                headers={
                    "retry-after": str(wait),
                    "x-ratelimit-limit-tokens": str(tightest),
                    "x-ratelimit-remaining-tokens": str(taken.remaining),
                },
            )
        try:
            reply = await self._send(call)
        except asyncio.CancelledError:
            used = estimate_prompt_tokens(body) * (1 + len(call.timed_out))
            spawn(self._tasks, self._give_back(checks, cost - used, taken.local))
            raise
        except Exception as exc:  # refused further in (a budget, the stop) or failed: nothing used
            # ... but each attempt that timed out after its request left: its prompt (as the ledger).
            used = estimate_prompt_tokens(body) * len(call.timed_out)
            spawn(self._tasks, self._give_back(checks, cost - used, taken.local))
            if isinstance(exc, SluicegateError):
                left = {
                    "x-ratelimit-limit-tokens": str(tightest),
                    "x-ratelimit-remaining-tokens": str(taken.remaining),
                }
                raise exc.with_headers(left) from exc.__cause__
            raise
        # Attempts before this answer that timed out after their request left (rare: no estimate else).
        timed_out = estimate_prompt_tokens(body) * len(call.timed_out) if call.timed_out else 0
        if reply.stream is None:
            await self._settle(checks, cost - timed_out, reply_usage(body, reply), taken.local)
        else:

            def settle_stream(relay: ReplyStream) -> None:
                # Cut by the client: all but what it used (its prompt and the chunks sent) goes back.
                usage = stream_usage(body, relay)
                spawn(self._tasks, self._settle(checks, cost - timed_out, usage, taken.local))

            reply.stream.on_close(settle_stream)
        reply.headers["x-ratelimit-limit-tokens"] = str(tightest)
        reply.headers["x-ratelimit-remaining-tokens"] = str(taken.remaining)
        return reply

    async def _take(self, checks: list[TokenCheck], cost: int) -> Taken:
        def alone() -> Taken:
            return self._local.take(checks, cost, time.time())

        now = time.monotonic()
        if self._redis is not None:
            if not self._redis_outage.usable(now):
                return alone()  # Redis failed a moment ago
            return await shared_or_alone(self._redis.take(checks, cost), alone, self._redis_outage, now)
        if self._sql is not None:
            return await shared_or_alone(
                self._sql.take(checks, cost), alone, self._sql_outage, now, DATABASE_ERRORS
            )
        return alone()

    async def _settle(self, checks: list[TokenCheck], cost: int, usage: Usage | None, local: bool) -> None:
        if usage is None:  # nothing known of what it used: it keeps its worst case
            return
        # What it did not use goes back; what it used beyond its reservation (a prompt longer
        # than estimated) is taken too, so that the buckets count every token used.
        unused = cost - usage.prompt_tokens - usage.completion_tokens
        if unused:
            await self._give_back(checks, unused, local)

    async def _give_back(self, checks: list[TokenCheck], tokens: int, local: bool) -> None:
        """Give ``tokens`` back to the buckets they were taken from (``local``: this process's);
        negative, take them (a bucket may then owe tokens, and wait until it has refilled)."""
        if not tokens:
            return
        try:
            if local:
                self._local.give_back(checks, tokens, time.time())
            elif self._redis is not None:
                await self._redis.give_back(checks, tokens)
            elif self._sql is not None:
                await self._sql.give_back(checks, tokens)
        except Exception as exc:  # the bucket refills by itself within a minute
            logger.warning("token limits: could not give back %d tokens (%r)", tokens, exc)

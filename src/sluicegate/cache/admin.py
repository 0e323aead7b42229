"""Managing the cache: statistics, deletion, namespace bumps. Used by the admin API and the CLI.

Every change is announced on the invalidation bus before it returns, so every process has
emptied its in-process tier (and read the new namespace versions) by then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from redis.exceptions import RedisError

from ..errors import InvalidRequest, ServiceUnavailable
from .keys import KEY_PREFIX, escape, is_entry_key
from .layered import LayeredCache
from .stats import summarise

__all__ = ["MATCH_FIELDS", "bump", "invalidate", "redis_patterns", "stats"]

MATCH_FIELDS = ("key", "tag", "feature", "org", "user", "model")
T = TypeVar("T")
_REDIS_TIMEOUT_S = 10.0


async def _redis(operation: Awaitable[T], failures: list[str], what: str) -> T | None:
    """Run an admin operation on Redis; note a failure rather than raise it."""
    try:
        async with asyncio.timeout(_REDIS_TIMEOUT_S):
            return await operation
    except (RedisError, OSError, TimeoutError) as exc:
        failures.append(f"{what}: Redis is unreachable ({type(exc).__name__}: {exc})")
        return None


def _raise_if(failures: list[str], done: dict[str, Any]) -> None:
    if failures:
        raise ServiceUnavailable(
            "; ".join(failures) + f". Done anyway: {done}. Retry once Redis is back.",
            code="cache_tier_unavailable",
        )


def redis_patterns(feature: str | None, org: str | None, user: str | None, model: str | None) -> list[str]:
    """SCAN patterns for the Redis keys of a feature, org, user and/or model."""
    if user is not None:
        scopes = [f"u:{escape(org) if org is not None else '*'}:{escape(user)}"]
    elif org is not None:
        scopes = [f"o:{escape(org)}", f"u:{escape(org)}:*"]
    else:
        scopes = ["*"]
    feature_part = escape(feature) if feature is not None else "*"
    model_part = escape(model) if model is not None else "*"
    return [f"{KEY_PREFIX}{{{scope}}}:{feature_part}:*:{model_part}:*" for scope in scopes]


async def stats(cache: LayeredCache) -> dict[str, Any]:
    """Counters per feature (all processes), and entries and bytes per tier."""
    await cache.stats.flush()
    features = summarise(await cache.namespace_store.stats())
    tiers: dict[str, Any] = {}
    if cache.memory is not None:
        tiers["memory"] = {
            "scope": "this process",
            "entries": len(cache.memory),
            "bytes": cache.memory.bytes,
            "max_bytes": cache.memory.max_bytes,
        }
    if cache.redis is not None and cache.redis_guard is not None:
        redis = cache.redis
        unknown: tuple[int | None, int | None] = (None, None)
        entries, size = await cache.redis_guard.run(redis.size, unknown)
        tiers["redis"] = {"entries": entries, "bytes": size, **cache.redis_guard.status()}
    if cache.sql is not None and cache.sql_guard is not None:
        sql = cache.sql
        per_feature = await cache.sql_guard.run(sql.size, None) or {}
        tiers["sql"] = {
            "entries": sum(n for n, _ in per_feature.values()),
            "bytes": sum(b for _, b in per_feature.values()),
            "pending_writes": sql.pending,
            **cache.sql_guard.status(),
        }
        for name, (count, size) in per_feature.items():
            row = features.setdefault(name, {})
            row["sql_entries"], row["sql_bytes"] = count, size
    try:
        namespaces = await cache.namespace_store.namespaces()
    except Exception:  # the database is down: this process's copy is the best there is
        namespaces = dict(cache.namespaces)
    return {"features": features, "tiers": tiers, "namespaces": namespaces}


def _check_known(match: dict[str, str], field: str, known: Collection[str], what: str, others: str) -> None:
    """`InvalidRequest` (``invalid_match``) when ``match`` names a ``field`` not in ``known``."""
    if field in match and match[field] not in known:
        raise InvalidRequest(
            f"{field} must be a configured {what} ({', '.join(sorted(known))}); the entries of a "
            f"{field} no longer configured expire on their own, or go with their {others}",
            param=field,
            code="invalid_match",
        )


async def invalidate(cache: LayeredCache, **match: str) -> dict[str, Any]:
    """Delete the entries of a key, a tag, or a feature, org, user and/or model, in every tier."""
    match = {k: v for k, v in match.items() if v is not None}
    if "key" in match and not is_entry_key(match["key"]):
        raise InvalidRequest(
            "key must be an entry's whole key, sg:c:{SCOPE}:FEATURE:VERSION:MODEL:DIGEST "
            "(not its lock or its hit counter)",
            param="key",
            code="invalid_match",
        )
    # A typo would delete nothing, "successfully": a feature or model must be configured (an
    # alias means its model, as the keys name it).
    _check_known(match, "feature", {*cache.policies, "default"}, "feature name", "org or model")
    _check_known(match, "model", cache.models, "model or alias", "feature")
    if "model" in match:
        match["model"] = cache.models[match["model"]]
    deleted: dict[str, int] = {}
    if cache.memory is not None:
        deleted["memory"] = cache.memory.delete_where(lambda key, entry: _matches(key, entry, match))
    failures: list[str] = []
    if cache.redis is not None:
        count = await _redis(_delete_in_redis(cache, match), failures, "entries in Redis were not deleted")
        if count is not None:
            deleted["redis"] = count
    if cache.sql is not None:
        deleted["sql"] = await cache.sql.delete_where(**match)
    acknowledged = await _redis(cache.bus.announce(), failures, "other processes were not told")
    await cache.reload()
    # Each process that acknowledged stores no answer of a call that was under way (and has
    # dropped its unwritten SQL rows); one it stored before may have landed between the deletes
    # above and then: delete again.
    if cache.redis is not None and "redis" in deleted:
        again = await _redis(_delete_in_redis(cache, match), failures, "entries in Redis were not deleted")
        deleted["redis"] += again or 0
    if cache.sql is not None:
        deleted["sql"] += await cache.sql.delete_where(**match)
    _raise_if(failures, deleted)
    return {"deleted": deleted, "match": match, "processes_acknowledged": acknowledged}


async def _delete_in_redis(cache: LayeredCache, match: dict[str, str]) -> int:
    """Delete the Redis entries that match every field of ``match``: a key or a tag names its
    candidates, and the other fields (feature, org, user, model) are read from the keys."""
    redis = cache.redis
    assert redis is not None
    get = match.get
    patterns = redis_patterns(get("feature"), get("org"), get("user"), get("model"))
    if "key" not in match and "tag" not in match:
        keys: list[str] = []
        for pattern in patterns:
            keys.extend(await redis.scan(pattern))
        return await redis.delete_keys(keys) if keys else 0
    if "tag" not in match and not any(name in match for name in ("feature", "org", "user", "model")):
        return await redis.delete_keys([match["key"]])
    if "tag" in match and len(match) == 1:
        return await redis.delete_tag(match["tag"])
    candidates = await redis.tagged(match["tag"]) if "tag" in match else [match["key"]]
    if "key" in match:
        candidates = [key for key in candidates if key == match["key"]]
    keys = [key for key in candidates if any(fnmatchcase(key, pattern) for pattern in patterns)]
    return await redis.delete_keys(keys) if keys else 0


def _matches(key: str, entry: Any, match: dict[str, str]) -> bool:
    for name, value in match.items():
        if name == "key":
            if key != value:
                return False
        elif name == "tag":
            if value not in entry.tags:
                return False
        elif getattr(entry, name) != value:
            return False
    return True


async def bump(cache: LayeredCache, feature: str) -> dict[str, Any]:
    """Make every entry of ``feature`` unreachable at once, in every process: a new namespace version."""
    version = await cache.namespace_store.bump(feature)
    failures: list[str] = []
    acknowledged = await _redis(cache.bus.announce(), failures, "other processes were not told")
    await cache.reload()
    _raise_if(failures, {"feature": feature, "namespace": version})
    return {"feature": feature, "namespace": version, "processes_acknowledged": acknowledged}

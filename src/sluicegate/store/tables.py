"""The SQL schema, as SQLAlchemy Core tables; Alembic migrations create it."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "budget_alerts",
    "budget_limits",
    "budget_periods",
    "budget_reservations",
    "cache_entries",
    "cache_namespaces",
    "cache_stats",
    "emergency_stops",
    "metadata",
    "rate_events",
    "stop_lifts",
    "token_buckets",
    "usage_daily",
    "usage_ledger",
    "virtual_keys",
]

metadata = MetaData()

virtual_keys = Table(
    "virtual_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    # HMAC-SHA256 of the key with the server's pepper; the key itself is never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("org", String(128), nullable=False),
    Column("user", String(128), nullable=True),
    Column("name", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # Set by a rotation: the old key works until `expires_at`, and names its successor.
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("replaced_by", String(32), nullable=True),
    Index("ix_virtual_keys_org", "org"),
)

# The cache's SQL tier (L3): one row per entry, its payload in the cache's wire form. Times are
# Unix seconds; `keep_until` (the TTL plus any stale grace) is what the purge uses.
cache_entries = Table(
    "cache_entries",
    metadata,
    Column("key", String(512), primary_key=True),
    Column("feature", String(64), nullable=False),
    Column("org", String(128), nullable=False),
    Column("user", String(128), nullable=True),
    Column("model", String(128), nullable=False),
    Column("namespace", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    # "|tag-a|tag-b|", so that one tag matches with LIKE '%|tag|%'.
    Column("tags", Text, nullable=False, default=""),
    Column("hits", BigInteger, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("keep_until", Float, nullable=False),
    Index("ix_cache_entries_keep_until", "keep_until"),
    Index("ix_cache_entries_feature", "feature"),
    Index("ix_cache_entries_org", "org"),
)

# A feature's namespace version: bumping it makes every older entry unreachable at once.
cache_namespaces = Table(
    "cache_namespaces",
    metadata,
    Column("feature", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
)

# Cache counters per feature, summed over every worker and replica (flushed every second).
cache_stats = Table(
    "cache_stats",
    metadata,
    Column("feature", String(64), primary_key=True),
    Column("metric", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# The usage ledger (docs/cost-control.md): append-only, one row per upstream attempt (attempt ≥ 1)
# and one per answer served from the cache (attempt 0, with what it saved). Money is integer
# micro-USD; `at` is Unix seconds. Unique on (request_id, attempt): a replayed row is a no-op.
usage_ledger = Table(
    "usage_ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("org", String(128), nullable=False),
    Column("user", String(128), nullable=True),
    Column("key_id", String(32), nullable=True),
    Column("feature", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("provider", String(64), nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("reasoning_tokens", Integer, nullable=False),
    Column("cost_micro", BigInteger, nullable=False),
    Column("saved_micro", BigInteger, nullable=False),
    Column("cache", String(32), nullable=False),
    Column("status", Integer, nullable=False),
    Column("latency_ms", Integer, nullable=False),
    Column("priced_from", String(16), nullable=False),
    UniqueConstraint("request_id", "attempt", name="uq_usage_ledger_request_attempt"),
    Index("ix_usage_ledger_org_at", "org", "at"),
    Index("ix_usage_ledger_at", "at"),
)

# The ledger summed per UTC day (days since 1970-01-01), org, user ('' for none, so that the key
# is unique on both databases), feature and model (docs/cost-control.md#retention-and-daily-roll-ups).
# `requests` counts each request once, in the row of its first ledger row of the day, so it adds
# up exactly over models; `model_requests` counts it in every model's row it has. Once
# `ledger_purged`, the day's ledger rows are (being) deleted and these rows are all that is left.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Integer, primary_key=True),
    Column("org", String(128), primary_key=True),
    Column("user", String(128), primary_key=True),
    Column("feature", String(64), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("model_requests", BigInteger, nullable=False),
    Column("upstream_calls", BigInteger, nullable=False),
    Column("cache_hits", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cost_micro", BigInteger, nullable=False),
    Column("saved_micro", BigInteger, nullable=False),
    Column("ledger_purged", Boolean(create_constraint=False), nullable=False),
)

# The rate limits' sliding logs when no Redis is configured (docs/cost-control.md): one row per
# request counted against a limit; rows older than the longest window are purged.
# The per-minute token limits without Redis: one bucket per limit and subject, its level at `at`
# (Unix seconds). A row that is not there is a full bucket.
token_buckets = Table(
    "token_buckets",
    metadata,
    Column("key", String(512), primary_key=True),
    Column("level", Float, nullable=False),
    Column("at", Float, nullable=False),
)

rate_events = Table(
    "rate_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("key", String(512), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_rate_events_key_at", "key", "at"),
)

# Emergency stops in force (docs/cost-control.md): scope "global" or "org:<org>". Every worker
# reads this small table every `controls.poll_interval_s`.
emergency_stops = Table(
    "emergency_stops",
    metadata,
    Column("scope", String(160), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("since", Float, nullable=False),
)

# When each stop was last lifted: the spend-rate breaker counts an org's spend since then only.
stop_lifts = Table(
    "stop_lifts",
    metadata,
    Column("scope", String(160), primary_key=True),
    Column("at", Float, nullable=False),
)

# Budgets (docs/cost-control.md#budgets): limits set at run time (they override the config's),
# spend and reservations per scope and period, reservations as leases, alerts sent once.
budget_limits = Table(
    "budget_limits",
    metadata,
    Column("scope", String(160), primary_key=True),
    Column("limit_micro", BigInteger, nullable=False),
    Column("period", String(8), nullable=False),
    Column("updated_at", Float, nullable=False),
)
budget_periods = Table(
    "budget_periods",
    metadata,
    Column("scope", String(160), primary_key=True),
    Column("period", String(16), primary_key=True),
    Column("spent_micro", BigInteger, nullable=False),
    Column("reserved_micro", BigInteger, nullable=False),
)
budget_reservations = Table(
    "budget_reservations",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("scope", String(160), nullable=False),
    Column("period", String(16), nullable=False),
    Column("amount_micro", BigInteger, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("state", String(8), nullable=False),
    Index("ix_budget_reservations_open", "state", "expires_at"),
)
budget_alerts = Table(
    "budget_alerts",
    metadata,
    Column("scope", String(160), primary_key=True),
    Column("period", String(16), primary_key=True),
    Column("level", String(16), primary_key=True),
    Column("at", Float, nullable=False),
)

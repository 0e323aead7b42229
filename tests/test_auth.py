"""Virtual keys, the pepper, request contexts and the admin key."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from sluicegate import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RequestContext,
    ServiceUnavailable,
    Settings,
    create_gateway,
)
from sluicegate.auth import Authenticator, KeyRecord, KeyStore, hash_key, load_pepper, new_key
from sluicegate.store.db import create_engine, migrate
from sluicegate.testing import mock_settings
from sluicegate.virtual_keys import rotation_refusal


def keyed_settings(tmp_path: Path, **auth: object) -> Settings:
    """Settings that require keys, on a SQLite file."""
    return mock_settings(data_dir=tmp_path, auth={"require_keys": True, **auth})


@pytest.fixture
async def store(tmp_path: Path) -> KeyStore:
    """A migrated key store on SQLite."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await migrate(engine)
    yield KeyStore(engine, b"pepper")
    await engine.dispose()


def test_keys_are_random_and_prefixed() -> None:
    """Keys start with sk-sg- and never repeat."""
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("sk-sg-") and len(k) > 40 for k in keys)


def test_hash_depends_on_pepper() -> None:
    """The stored hash is an HMAC: the same key under another pepper hashes differently."""
    assert hash_key(b"a", "sk-sg-x") == hash_key(b"a", "sk-sg-x")
    assert hash_key(b"a", "sk-sg-x") != hash_key(b"b", "sk-sg-x")
    assert len(hash_key(b"a", "sk-sg-x")) == 64


def test_pepper_file_is_created_once_and_private(tmp_path: Path) -> None:
    """Without the variable, the pepper is made once in the data folder, mode 0600."""
    settings = mock_settings(data_dir=tmp_path)
    first = load_pepper(settings)
    assert load_pepper(settings) == first
    assert (tmp_path / "pepper").stat().st_mode & 0o777 == 0o600


def test_pepper_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$SLUICEGATE_KEY_PEPPER wins over the file."""
    monkeypatch.setenv("SLUICEGATE_KEY_PEPPER", "from-env")
    assert load_pepper(mock_settings(data_dir=tmp_path)) == b"from-env"
    assert not (tmp_path / "pepper").exists()


async def test_store_never_keeps_the_key(store: KeyStore, tmp_path: Path) -> None:
    """The database holds the hash, not the key."""
    key, record = await store.create("acme", user="ann", name="ci")
    assert record.prefix == key[:12]
    assert key.encode() not in (tmp_path / "keys.db").read_bytes()
    assert (await store.find(key)) == record
    assert await store.find(key + "x") is None


async def test_store_list_and_revoke(store: KeyStore) -> None:
    """Revoked keys stop being found and leave the default listing."""
    key_a, a = await store.create("acme")
    _, b = await store.create("globex")
    assert {r.id for r in await store.list_keys()} == {a.id, b.id}
    assert [r.id for r in await store.list_keys("acme")] == [a.id]
    revoked = await store.revoke(a.id)
    assert revoked.revoked_at is not None
    assert await store.find(key_a) is None
    assert [r.id for r in await store.list_keys()] == [b.id]
    assert len(await store.list_keys(include_revoked=True)) == 2
    with pytest.raises(NotFound):
        await store.revoke("nope")


async def test_store_rejects_bad_labels(store: KeyStore) -> None:
    """Org, user and name must be short strings."""
    with pytest.raises(InvalidRequest):
        await store.create("")
    with pytest.raises(InvalidRequest):
        await store.create("acme", name="n" * 200)


async def test_dev_mode_context(settings: Settings) -> None:
    """Without required keys, every request is the local org, whatever the header."""
    auth = Authenticator(settings, None)
    ctx = auth.context(await auth.authenticate(None), "chat", "ann")
    assert (ctx.org, ctx.user, ctx.feature, ctx.key_id) == ("local", "ann", "chat", None)
    ctx = auth.context(await auth.authenticate("Bearer whatever"), None, None)
    assert ctx.feature == "default" and ctx.user is None


async def test_context_from_body(settings: Settings) -> None:
    """Headers win; otherwise metadata.feature, metadata.user, then the body's user."""
    auth = Authenticator(settings, None)
    body = {"user": "u-body", "metadata": {"feature": "insights", "user": "u-meta"}}
    ctx = auth.context(await auth.authenticate(None), None, None, body)
    assert (ctx.feature, ctx.user) == ("insights", "u-meta")
    ctx = auth.context(await auth.authenticate(None), "chat", "u-header", body)
    assert (ctx.feature, ctx.user) == ("chat", "u-header")
    ctx = auth.context(await auth.authenticate(None), None, None, {"user": "u-body"})
    assert ctx.user == "u-body"


async def test_unknown_feature_is_rejected(settings: Settings) -> None:
    """A feature that is not configured is a 400 naming the known ones."""
    with pytest.raises(InvalidRequest, match="okr-template"):
        Authenticator(settings, None).context(None, "nope", None)


async def test_keys_required(tmp_path: Path, store: KeyStore) -> None:
    """With keys required: missing, malformed, unknown and revoked keys are 401s."""
    auth = Authenticator(keyed_settings(tmp_path), store)
    key, record = await store.create("acme", user="default-user")
    ctx = auth.context(await auth.authenticate(f"Bearer {key}"), "chat", None)
    assert (ctx.org, ctx.user, ctx.key_id) == ("acme", "default-user", record.id)
    for header in (None, "", "Basic abc", "Bearer ", "Bearer sk-sg-unknown"):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(header)


async def test_with_the_database_down_a_known_key_still_works_and_others_get_a_503(
    tmp_path: Path, store: KeyStore
) -> None:
    """Past its cache time a key is looked up again; when the database cannot answer, its last
    known record stands (not a 500 with a traceback for every request), and a key never seen is
    a 503 to retry, not a 401."""
    now = [1000.0]
    auth = Authenticator(keyed_settings(tmp_path, key_cache_seconds=30), store, clock=lambda: now[0])
    key, record = await store.create("acme")
    await auth.authenticate(f"Bearer {key}")
    down = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    auth._store = KeyStore(down, b"pepper")
    try:
        now[0] += 31
        principal = await auth.authenticate(f"Bearer {key}")
        assert principal is not None and principal.id == record.id
        with pytest.raises(ServiceUnavailable) as refused:
            await auth.authenticate("Bearer sk-sg-neverseen")
        assert refused.value.code == "database_unavailable" and refused.value.headers["retry-after"] == "5"
    finally:
        await down.dispose()


async def test_revocation_reaches_a_cached_key_after_the_ttl(tmp_path: Path, store: KeyStore) -> None:
    """Lookups are cached for key_cache_seconds, so revocation shows after that."""
    now = [1000.0]
    auth = Authenticator(keyed_settings(tmp_path, key_cache_seconds=30), store, clock=lambda: now[0])
    key, record = await store.create("acme")
    await auth.authenticate(f"Bearer {key}")
    await store.revoke(record.id)
    assert await auth.authenticate(f"Bearer {key}") is not None  # still cached
    now[0] += 31
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(f"Bearer {key}")


def test_admin_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Admin routes: open in dev mode, 403 with keys but no admin key, 401 with a wrong one."""
    Authenticator(mock_settings(data_dir=tmp_path), None).check_admin(None)
    with pytest.raises(PermissionDenied):
        Authenticator(keyed_settings(tmp_path), None).check_admin("Bearer x")
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", "admin-secret")
    auth = Authenticator(keyed_settings(tmp_path), None)
    auth.check_admin("Bearer admin-secret")
    with pytest.raises(AuthenticationFailed):
        auth.check_admin("Bearer wrong")
    assert os.environ["SLUICEGATE_ADMIN_KEY"] == "admin-secret"


def test_workers_starting_together_share_one_pepper(tmp_path: Path) -> None:
    """Concurrent first uses of the data folder all end with the same, complete pepper."""
    for attempt in range(20):
        settings = mock_settings(data_dir=tmp_path / str(attempt))
        barrier = threading.Barrier(4)
        results: list[bytes] = []

        def start(
            settings: Settings = settings,
            barrier: threading.Barrier = barrier,
            results: list[bytes] = results,
        ) -> None:
            barrier.wait()
            results.append(load_pepper(settings))

        threads = [threading.Thread(target=start) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(results)) == 1
        assert len(results[0]) == 64
        assert [p.name for p in (tmp_path / str(attempt)).iterdir()] == ["pepper"]


# Rotation


async def test_rotation_makes_a_twin_and_gives_the_old_key_an_expiry(engine: AsyncEngine) -> None:
    """The new key has the old one's org, user and name; the old one expires after the grace."""
    store = KeyStore(engine, b"pepper")
    old_key, old = await store.create("acme", user="ann", name="web")
    now = datetime.now(UTC)
    new_key_, new, rotated = await store.rotate(old.prefix, 3600, now=now)
    assert new_key_ != old_key and new.id != old.id
    assert (new.org, new.user, new.name) == ("acme", "ann", "web")
    assert new.expires_at is None and new.replaced_by is None
    assert rotated.expires_at == now + timedelta(hours=1)
    assert (rotated.replaced_by, rotated.replaced_by_prefix) == (new.id, new.prefix)
    assert await store.find(old_key) == rotated  # stored as returned, successor's prefix included
    assert await store.find(new_key_) == new
    listed = {r.id: r.to_dict() for r in await store.list_keys()}
    assert listed[old.id]["expires_at"] == rotated.expires_at.isoformat()
    assert listed[old.id]["replaced_by"] == new.id and listed[old.id]["replaced_by_prefix"] == new.prefix
    assert listed[new.id]["expires_at"] is None


async def test_expired_keys_leave_the_default_listing(engine: AsyncEngine) -> None:
    """Once its grace is over, a rotated key is listed only with include_revoked."""
    store = KeyStore(engine, b"pepper")
    _, old = await store.create("acme")
    _, new, _ = await store.rotate(old.id, 60)
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert [r.id for r in await store.list_keys(now=later)] == [new.id]
    assert {r.id for r in await store.list_keys(include_revoked=True, now=later)} == {old.id, new.id}


async def test_rotation_refuses_revoked_expired_and_rotated_keys(engine: AsyncEngine) -> None:
    """A revoked or expired key cannot be rotated, nor a key already rotated; nothing is created."""
    store = KeyStore(engine, b"pepper")
    _, revoked = await store.create("acme", name="revoked")
    await store.revoke(revoked.id)
    with pytest.raises(InvalidRequest, match="was revoked") as refused:
        await store.rotate(revoked.id)
    assert refused.value.code == "key_not_rotatable"
    _, gone = await store.create("acme", name="gone")
    await store.rotate(gone.id, 0)
    with pytest.raises(InvalidRequest, match="expired at"):
        await store.rotate(gone.id)
    _, rotated = await store.create("acme", name="rotated")
    _, successor, _ = await store.rotate(rotated.id, 3600)
    with pytest.raises(InvalidRequest, match=f"already rotated; its replacement is {successor.id}"):
        await store.rotate(rotated.id)
    with pytest.raises(NotFound):
        await store.rotate("nope")
    with pytest.raises(InvalidRequest, match="grace"):
        await store.rotate(successor.id, -1)
    assert len(await store.list_keys(include_revoked=True)) == 5  # three keys, two successors


def test_rotation_refusal_is_decided_at_the_given_time() -> None:
    """A key in its grace is refused as rotated; after the expiry, as expired."""
    now = datetime(2030, 1, 1, tzinfo=UTC)
    live = KeyRecord("k1", "sk-sg-abcdef", "acme", None, None, now, None)
    assert rotation_refusal(live, now) is None
    rotated = replace(
        live, expires_at=now + timedelta(hours=1), replaced_by="k2", replaced_by_prefix="sk-sg-xyz"
    )
    assert "already rotated" in (rotation_refusal(rotated, now) or "")
    assert "expired at 2030-01-01T01:00:00+00:00" in (
        rotation_refusal(rotated, now + timedelta(hours=1)) or ""
    )


async def test_old_key_works_during_the_grace_and_is_refused_after(tmp_path: Path, store: KeyStore) -> None:
    """The expiry is compared with the clock at each authentication, even for a cached record."""
    wall = [datetime.now(UTC).timestamp()]
    auth = Authenticator(keyed_settings(tmp_path, key_cache_seconds=3600), store, wall_clock=lambda: wall[0])
    old_key, old = await store.create("acme", user="ann")
    new_key_, new, rotated = await store.rotate(old.id, 600)
    principal = await auth.authenticate(f"Bearer {old_key}")
    assert isinstance(principal, KeyRecord) and principal.id == old.id  # cached from now on
    assert rotated.expires_at is not None
    wall[0] = rotated.expires_at.timestamp() - 1
    assert await auth.authenticate(f"Bearer {old_key}") is not None
    wall[0] = rotated.expires_at.timestamp()
    with pytest.raises(AuthenticationFailed) as refused:
        await auth.authenticate(f"Bearer {old_key}")
    error = refused.value
    assert (error.status_code, error.type, error.code) == (401, "authentication_error", "expired_api_key")
    assert "rotated and expired at " + rotated.expires_at.isoformat(timespec="seconds") in error.message
    assert new.prefix in error.message and new_key_ not in error.message
    assert await auth.authenticate(f"Bearer {new_key_}") is not None


async def test_an_expiry_reaches_a_key_cached_before_the_rotation(tmp_path: Path) -> None:
    """A worker that cached the key before it was rotated elsewhere refuses it after the next poll."""
    settings = mock_settings(
        data_dir=tmp_path,
        auth={"require_keys": True, "key_cache_seconds": 3600},
        controls={"poll_interval_s": 10},  # the test polls by hand
    )
    async with create_gateway(settings) as worker:
        key, record = await worker.keys.create("acme")
        await worker.authenticator.authenticate(f"Bearer {key}")  # cached with no expiry
        elsewhere = KeyStore(worker.engine, load_pepper(settings))  # e.g. the CLI
        await elsewhere.rotate(record.id, 0)
        assert await worker.authenticator.authenticate(f"Bearer {key}") is not None  # stale cache
        await worker.controls.refresh()
        with pytest.raises(AuthenticationFailed, match="rotated and expired"):
            await worker.authenticator.authenticate(f"Bearer {key}")


@pytest.mark.parametrize("user", ["u" * 129, "a\x00b", "line\nbreak"])
def test_a_user_id_the_stores_cannot_hold_is_refused(user: str) -> None:
    """Longer than 128 characters, or with a control character: a 400 naming the user, not a
    row the ledger's database refuses later."""
    authenticator = Authenticator(Settings(), None)
    with pytest.raises(InvalidRequest) as refused:
        authenticator.context(None, "chat", user)
    assert refused.value.param == "user"
    with pytest.raises(InvalidRequest):
        authenticator.context(None, None, None, {"metadata": {"user": user}})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"user": 5}, "user"),
        ({"metadata": {"user": ["a"]}}, "metadata.user"),
        ({"metadata": {"feature": 1}}, "metadata.feature"),
    ],
)
def test_a_user_or_feature_that_is_not_a_string_is_refused(body: dict[str, object], param: str) -> None:
    """Ignored before, so the call ran as no user (and a user-scoped cache shared it)."""
    with pytest.raises(InvalidRequest, match="must be a string") as refused:
        Authenticator(Settings(), None).context(None, None, None, body)
    assert refused.value.param == param
    with pytest.raises(InvalidRequest, match="must be a string"):  # a header's value wins, but
        Authenticator(Settings(), None).context(None, "chat", "from-header", body)  # not unchecked


@pytest.mark.parametrize("field", ["org", "feature", "user"])
def test_a_library_context_with_a_value_that_is_not_a_string_is_refused(field: str) -> None:
    context = replace(RequestContext("acme", "ann", "chat"), **{field: 123})
    with pytest.raises(InvalidRequest, match=f"the context's {field} must be a string"):
        Authenticator(Settings(), None).check_context(context)


def test_the_admin_key_counts_only_as_a_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", "admin-secret")
    authenticator = Authenticator(Settings(auth={"require_keys": True}), None)
    assert authenticator.is_admin("Bearer admin-secret")
    assert not authenticator.is_admin("Basic admin-secret") and not authenticator.is_admin(None)

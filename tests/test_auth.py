"""Virtual keys, the pepper, request contexts and the admin key."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sluicegate import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied, Settings
from sluicegate.auth import Authenticator, KeyStore, hash_key, load_pepper, new_key
from sluicegate.store.db import create_engine, migrate
from sluicegate.testing import mock_settings


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

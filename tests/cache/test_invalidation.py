"""Tests for sluicegate.cache.invalidation: the epoch file between processes, and Redis pub/sub with acks."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from sluicegate.cache.invalidation import Bus, FileBus, RedisBus, Replacements

# A separate process that opens the bus, says "ready", and on "go" checks it and announces once.
PEER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from sluicegate.cache.invalidation import FileBus

    bus = FileBus(Path(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()
    print(bus.check(), bus.check(), flush=True)
    asyncio.run(bus.announce())
    print("announced", flush=True)
    """
)
# A separate process that announces N times as fast as it can.
HAMMER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from sluicegate.cache.invalidation import FileBus

    async def main():
        bus = FileBus(Path(sys.argv[1]))
        for _ in range(int(sys.argv[2])):
            await bus.announce()
        await bus.stop()

    asyncio.run(main())
    """
)


# A separate process that tells of replaced keys: those given, or N of its own.
REPLACER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from sluicegate.cache.invalidation import FileBus

    async def main():
        bus = FileBus(Path(sys.argv[1]))
        keys = sys.argv[2:] if not sys.argv[2].isdigit() else [f"k{n}" for n in range(int(sys.argv[2]))]
        for key in keys:
            bus.replaced(key, 1234.5)
        await bus.stop()

    asyncio.run(main())
    """
)


def epoch(path: Path) -> int:
    """The epoch stored in the file."""
    value: int = struct.unpack("<Q", path.read_bytes()[:8])[0]
    return value


async def test_base_bus_is_a_single_process() -> None:
    """The bus of a lone process acknowledges itself and never has news."""
    bus = Bus()
    await bus.start(lambda: asyncio.sleep(0))
    assert await bus.announce() == 1
    assert not bus.check()
    await bus.stop()


async def test_file_bus_instances_see_each_others_announcements(tmp_path: Path) -> None:
    """Two buses on one file: an announcement by either is seen once by the other's check()."""
    path = tmp_path / "nested" / "cache-epoch"
    first, second = FileBus(path), FileBus(path)
    assert not first.check() and not second.check()
    assert await first.announce() == 1
    assert second.check()
    assert not second.check()
    # The announcer applies its own change as it announces it (`admin` reloads at once), not
    # again at its next request: that request's answer would not be stored (`may_store`).
    assert not first.check()
    await second.announce()
    await second.announce()
    assert first.check()
    assert not first.check()
    assert epoch(path) == 3
    await first.stop()
    await second.stop()


async def test_file_bus_across_processes(tmp_path: Path) -> None:
    """A bus in another process sees this process's announcement, and this one sees its reply."""
    path = tmp_path / "cache-epoch"
    bus = FileBus(path)
    peer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PEER, str(path), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert peer.stdout is not None and peer.stdin is not None
    try:
        async with asyncio.timeout(15):
            assert (await peer.stdout.readline()).strip() == b"ready"
            await bus.announce()
            assert not bus.check()  # the announcer applies its own change at once (`admin`)
            peer.stdin.write(b"go\n")
            await peer.stdin.drain()
            assert (await peer.stdout.readline()).split() == [b"True", b"False"]
            assert (await peer.stdout.readline()).strip() == b"announced"
            assert bus.check()
            assert not bus.check()
    finally:
        try:
            async with asyncio.timeout(10):
                await peer.communicate()
        except TimeoutError:
            peer.kill()  # a failed assertion above left it waiting for "go"
            await peer.wait()
    assert peer.returncode == 0
    await bus.stop()


def test_concurrent_announcements_from_processes_are_all_counted(tmp_path: Path) -> None:
    """Processes announcing at once never lose an increment: the file lock serialises them."""
    path = tmp_path / "cache-epoch"
    hammers = [
        subprocess.Popen([sys.executable, "-c", HAMMER, str(path), "200"], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for hammer in hammers:
        _, err = hammer.communicate(timeout=30)
        assert hammer.returncode == 0, err
    assert epoch(path) == 600


def replace_elsewhere(path: Path, *keys: str) -> None:
    """Another process tells of ``keys`` replaced (a number: that many of its own)."""
    done = subprocess.run([sys.executable, "-c", REPLACER, str(path), *keys], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


async def test_file_bus_tells_other_processes_which_keys_were_replaced(tmp_path: Path) -> None:
    """Keys another process replaced (with when the new entry was made) are dropped here at the
    next poll, once; this process's own are not; a key too long for a slot drops everything."""
    path = tmp_path / "cache-epoch"
    bus = FileBus(path)
    dropped: list[tuple[str | None, float]] = []
    await bus.start(lambda: asyncio.sleep(0), lambda key, since: dropped.append((key, since)))
    bus.drops()
    assert dropped == []
    replace_elsewhere(path, "c:v1:org:acme:abc", "c:v1:user:acme/ann:def", "x" * 1100)
    bus.replaced("mine", 1.0)  # told to the others, not to itself
    bus.drops()
    assert dropped == [("c:v1:org:acme:abc", 1234.5), ("c:v1:user:acme/ann:def", 1234.5), (None, 1234.5)]
    bus.drops()
    assert len(dropped) == 3
    assert not bus.check()  # a replacement is not an invalidation
    await bus.stop()


async def test_file_bus_drops_everything_when_more_were_replaced_than_it_can_tell(tmp_path: Path) -> None:
    path = tmp_path / "cache-epoch"
    bus = FileBus(path)
    dropped: list[str | None] = []
    await bus.start(lambda: asyncio.sleep(0), lambda key, since: dropped.append(key))
    replace_elsewhere(path, "70")
    bus.drops()
    assert dropped == [None]
    replace_elsewhere(path, "3")
    bus.drops()
    assert dropped == [None, "k0", "k1", "k2"]
    await bus.stop()


def test_an_epoch_file_of_an_older_version_grows_to_hold_the_ring(tmp_path: Path) -> None:
    path = tmp_path / "cache-epoch"
    path.write_bytes(struct.pack("<Q", 7))
    bus = FileBus(path)
    assert path.stat().st_size > 8 and epoch(path) == 7
    assert not bus.check()
    asyncio.run(bus.stop())


# RedisBus, on the real Redis


class Applied:
    """An apply callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[Callable[[str], Redis]]:
    """A factory of Redis clients, each with its own connections, closed after the test."""
    made: list[Redis] = []

    def client(url: str = redis_url) -> Redis:
        made.append(Redis.from_url(url, socket_timeout=5))
        return made[-1]

    yield client
    for made_client in made:
        await made_client.aclose()


@pytest.mark.redis
@pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")
async def test_redis_bus_announce_waits_for_every_process(clients: Callable[..., Redis]) -> None:
    """announce() returns once every subscriber applied the change; the count includes the sender."""
    sender, receiver = RedisBus(clients(), ack_timeout_s=2.0), RedisBus(clients(), ack_timeout_s=2.0)
    sent, received = Applied(), Applied()
    await sender.start(sent)
    await receiver.start(received)
    try:
        acknowledged = await sender.announce()
        assert acknowledged >= 2  # other gateways on this Redis server may be listening too
        assert received.calls == 1
        assert sent.calls == 1
        assert await receiver.announce() >= 2
        assert (sent.calls, received.calls) == (2, 2)
    finally:
        await sender.stop()
        await receiver.stop()


@pytest.mark.redis
@pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")
async def test_redis_bus_stop_ends_listening(clients: Callable[..., Redis]) -> None:
    """A stopped bus no longer applies announcements."""
    sender, stopped = RedisBus(clients(), ack_timeout_s=0.5), RedisBus(clients(), ack_timeout_s=0.5)
    applied = Applied()
    await sender.start(Applied())
    await stopped.start(applied)
    await stopped.stop()
    await sender.announce()
    await asyncio.sleep(0.05)
    assert applied.calls == 0
    await sender.stop()


@pytest.mark.redis
@pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")
async def test_redis_bus_is_private_to_its_database(redis_url: str, clients: Callable[..., Redis]) -> None:
    """A gateway on another database of the same Redis server neither applies nor delays our events."""
    # Pub/sub ignores the database number, so the channel must name it: otherwise the other
    # deployment empties its in-process tier, and acknowledges in its own database, where the
    # sender never sees it and waits out the whole ack timeout.
    parts = urlsplit(redis_url)
    db = int(parts.path.strip("/") or 0)
    other_url = parts._replace(path=f"/{14 if db != 14 else 13}").geturl()
    ours, theirs = RedisBus(clients(), ack_timeout_s=0.5), RedisBus(clients(other_url), ack_timeout_s=0.5)
    applied_ours, applied_theirs = Applied(), Applied()
    await ours.start(applied_ours)
    await theirs.start(applied_theirs)
    try:
        await ours.announce()
        await asyncio.sleep(0.05)
        assert applied_ours.calls == 1
        assert applied_theirs.calls == 0
    finally:
        await ours.stop()
        await theirs.stop()
        other = clients(other_url)
        stray = [k async for k in other.scan_iter(match="sg:ack:*")]
        if stray:
            await other.delete(*stray)


@pytest.mark.redis
@pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")
async def test_redis_bus_tells_the_other_processes_which_key_was_replaced(
    clients: Callable[..., Redis],
) -> None:
    """A replaced key, with when its new entry was made, reaches the other subscribers' drop,
    not the sender's, and applies no invalidation."""
    sender, receiver = RedisBus(clients()), RedisBus(clients())
    sent: list[tuple[str | None, float]] = []
    received: list[tuple[str | None, float]] = []
    arrived = asyncio.Event()

    def drop(key: str | None, since: float) -> None:
        received.append((key, since))
        arrived.set()

    applied = Applied()
    await sender.start(applied, lambda key, since: sent.append((key, since)))
    await receiver.start(applied, drop)
    try:
        sender.replaced("c:v1:org:acme:abc", 1234.5)
        async with asyncio.timeout(5):
            await arrived.wait()
        assert received == [("c:v1:org:acme:abc", 1234.5)]
        assert sent == [] and applied.calls == 0
    finally:
        await sender.stop()
        await receiver.stop()


def test_replacements_keep_the_latest_time_of_the_latest_keys() -> None:
    """An entry made before its key's latest replacement is outdated; an older notice does not
    move the time back; past the limit the oldest keys are forgotten first."""
    replaced = Replacements(kept=2)
    assert not replaced.outdated("a", 1.0)
    replaced.note("a", 10.0)
    replaced.note("a", 5.0)
    assert replaced.outdated("a", 9.9) and not replaced.outdated("a", 10.0)
    replaced.note("b", 1.0)
    replaced.note("a", 11.0)  # a is the latest again: b goes first
    replaced.note("c", 1.0)
    assert replaced.outdated("a", 10.5) and not replaced.outdated("b", 0.5) and replaced.outdated("c", 0.5)

"""The pipelined wire to Redis: replies matched in order under concurrency, errors in place,
NOSCRIPT recovery, the URL's database and password, deadlines, and a dead or silent server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import hiredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from sluicegate.store.redis import GatewayRedis, LuaScript, create_redis, send_all
from sluicegate.store.redis_wire import Wire

pytestmark = pytest.mark.redis

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[GatewayRedis]:
    made = create_redis(redis_url)
    assert isinstance(made, GatewayRedis)
    assert made.wire is not None
    yield made
    await made.aclose()


async def test_concurrent_commands_get_their_own_replies(client: GatewayRedis) -> None:
    """500 commands from 500 tasks in a few loop turns: each gets the reply to its own."""
    assert client.wire is not None
    wire = client.wire

    async def one(n: int) -> None:
        assert await wire.call(("SET", f"wire:{n}", n)) == b"OK"
        await asyncio.sleep(0)
        assert await wire.call(("GET", f"wire:{n}")) == str(n).encode()
        assert await wire.call(("INCRBY", f"wire:{n}", n)) == 2 * n

    await asyncio.gather(*(one(n) for n in range(500)))
    assert await client.get("wire:499") == b"998"


async def test_an_error_reply_comes_back_in_its_place(client: GatewayRedis) -> None:
    await client.set("wire:text", "x")
    replies = await send_all(client, [("INCR", "wire:text"), ("SET", "wire:after", 1), ("GET", "wire:after")])
    assert isinstance(replies[0], ResponseError)
    assert replies[1:] == [b"OK", b"1"]


async def test_a_script_redis_lost_is_loaded_again(client: GatewayRedis) -> None:
    script = LuaScript(client, ECHO, timeout_s=2.0)
    assert await script(["k"], ["v"]) == [b"k", b"v"]
    await client.script_flush()
    assert await script(["k2"], ["v2"]) == [b"k2", b"v2"]
    failing = LuaScript(client, "return redis.call('INCR', KEYS[1])", timeout_s=2.0)
    await client.set("wire:text", "x")
    with pytest.raises(ResponseError):
        await failing(["wire:text"], [])


class Outcomes:
    """Collects what `LuaScript.send` reports; ``wait`` until ``n`` reports came."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, BaseException | None]] = []
        self._changed = asyncio.Event()

    def __call__(self, result: object, error: BaseException | None) -> None:
        self.seen.append((result, error))
        self._changed.set()

    async def wait(self, n: int) -> list[tuple[object, BaseException | None]]:
        async with asyncio.timeout(5):
            while len(self.seen) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.seen


async def test_a_script_sent_without_waiting_reports_its_result(client: GatewayRedis) -> None:
    """`send` queues the command at once: commands of the same turn leave in one write, in order."""
    assert client.wire is not None
    script = LuaScript(client, "return redis.call('INCRBY', KEYS[1], ARGV[1])", timeout_s=2.0)
    await script(["wire:other"], [1])  # loaded (after a NOSCRIPT the retry comes later)
    outcomes = Outcomes()
    script.send(["wire:sent"], [2], outcomes)
    script.send(["wire:sent"], [3], outcomes)
    assert client.wire._out, "queued in this turn, not in a task"
    assert await client.wire.call(("GET", "wire:sent")) == b"5"  # after both, on the one connection
    assert await outcomes.wait(2) == [(2, None), (5, None)]


async def test_closing_the_client_waits_for_what_was_sent_without_waiting(redis_url: str) -> None:
    """A settlement sent just before shutdown is applied, not dropped with the connection."""
    client = create_redis(redis_url)
    script = LuaScript(client, "return redis.call('INCRBY', KEYS[1], ARGV[1])", timeout_s=2.0)
    await script(["wire:closing"], [1])
    outcomes = Outcomes()
    script.send(["wire:closing"], [41], outcomes)
    await client.aclose()
    assert outcomes.seen == [(42, None)]
    check: Redis = Redis.from_url(redis_url)
    try:
        assert await check.get("wire:closing") == b"42"
    finally:
        await check.aclose()


async def test_a_script_sent_without_waiting_is_loaded_again_and_reports_errors(
    client: GatewayRedis,
) -> None:
    script = LuaScript(client, ECHO, timeout_s=2.0)
    await script(["k"], ["v"])
    await client.script_flush()
    outcomes = Outcomes()
    script.send(["k"], ["after a flush"], outcomes)
    assert await outcomes.wait(1) == [([b"k", b"after a flush"], None)]
    await client.set("wire:text", "x")
    failing = LuaScript(client, "return redis.call('INCR', KEYS[1])", timeout_s=2.0)
    failing.send(["wire:text"], [], outcomes)
    result, error = (await outcomes.wait(2))[1]
    assert result is None and isinstance(error, ResponseError)


async def test_a_script_sent_without_a_wire_reports_too(redis_url: str) -> None:
    plain: Redis = Redis.from_url(redis_url)
    try:
        outcomes = Outcomes()
        LuaScript(plain, ECHO, timeout_s=2.0).send(["k"], ["v"], outcomes)
        assert await outcomes.wait(1) == [([b"k", b"v"], None)]
    finally:
        await plain.aclose()


async def test_the_database_of_the_url_is_selected(redis_url: str) -> None:
    """The scratch database of the URL, not database 0."""
    client = create_redis(redis_url)
    plain: Redis = Redis.from_url(redis_url)
    try:
        await send_all(client, [("SET", "wire:db", "here")])
        assert await plain.get("wire:db") == b"here"
    finally:
        await client.aclose()
        await plain.aclose()


async def test_without_a_wire_the_scripts_go_through_redis_py(redis_url: str) -> None:
    """A plain redis-py client (TLS, or one a library user made) works the same, more slowly."""
    plain: Redis = Redis.from_url(redis_url)
    try:
        script = LuaScript(plain, ECHO, timeout_s=2.0)
        assert await script(["k"], ["v"]) == [b"k", b"v"]
        replies = await send_all(plain, [("SET", "wire:plain", 1), ("INCR", "wire:plain")])
        assert replies == [True, 2]
    finally:
        await plain.aclose()


# A fake server, to see what the wire sends and how it behaves when Redis does not answer.


async def fake_server(
    answer: Callable[[list[bytes]], bytes | None],
) -> tuple[asyncio.Server, list[list[bytes]]]:
    """A server that parses commands and answers each with ``answer(command)`` (None: silence)."""
    seen: list[list[bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        OPEN.append(writer)
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    seen.append(command)
                    reply = answer(command)
                    if reply is not None:
                        writer.write(reply)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


OPEN: list[asyncio.StreamWriter] = []


async def stop(server: asyncio.Server) -> None:
    """Close the server and the connections it accepted."""
    server.close()
    for writer in OPEN:
        writer.close()
    OPEN.clear()
    await asyncio.sleep(0.01)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def test_the_password_and_user_are_sent_first() -> None:
    server, seen = await fake_server(lambda command: b"+OK\r\n")
    wire = Wire({"host": "127.0.0.1", "port": port_of(server), "username": "gw", "password": "pw", "db": 3})
    try:
        assert await wire.call(("PING",)) == b"OK"
        assert seen == [[b"AUTH", b"gw", b"pw"], [b"SELECT", b"3"], [b"PING"]]
    finally:
        await wire.aclose()
        await stop(server)


async def test_a_wrong_password_fails_the_call() -> None:
    server, _ = await fake_server(
        lambda command: b"-WRONGPASS invalid password\r\n" if command[0] == b"AUTH" else b"+OK\r\n"
    )
    wire = Wire({"host": "127.0.0.1", "port": port_of(server), "password": "bad"})
    try:
        with pytest.raises(RedisConnectionError, match="WRONGPASS"):
            await wire.call(("PING",))
    finally:
        await wire.aclose()
        await stop(server)


async def test_a_silent_redis_times_out_and_the_connection_is_replaced() -> None:
    """A deadline fails its own call; once the wire's timeout passes, the connection is dropped
    and the next call opens a new one."""
    answering = {"on": False}
    server, seen = await fake_server(lambda command: b"+PONG\r\n" if answering["on"] else None)
    wire = Wire({"host": "127.0.0.1", "port": port_of(server)}, timeout_s=0.3)
    try:
        with pytest.raises(TimeoutError):
            await wire.call(("PING",), timeout_s=0.05)
        pending = wire.call(("PING",))  # no deadline of its own: the wire's timeout ends it
        with pytest.raises(RedisConnectionError, match="did not answer"):
            await pending
        answering["on"] = True
        assert await wire.call(("PING",), timeout_s=1.0) == b"PONG"
        assert len(seen) == 3
    finally:
        await wire.aclose()
        await stop(server)


async def test_a_nearer_deadline_made_later_still_expires_on_time() -> None:
    """One timer serves every deadline: a command with a short timeout, made after one with a
    long timeout, fails at its own deadline, and the first at its own, later."""
    server, _ = await fake_server(lambda command: None)
    wire = Wire({"host": "127.0.0.1", "port": port_of(server)}, timeout_s=5.0)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        slow = wire.call(("PING",), timeout_s=0.6)
        fast = [wire.call(("PING",), timeout_s=0.05) for _ in range(3)]
        for future in fast:
            with pytest.raises(TimeoutError):
                await future
        assert loop.time() - started < 0.4
        assert not slow.done()
        with pytest.raises(TimeoutError):
            await slow
        assert loop.time() - started >= 0.6
    finally:
        await wire.aclose()
        await stop(server)


async def test_a_script_sent_to_a_silent_redis_reports_the_timeout() -> None:
    server, _ = await fake_server(lambda command: None)
    client = create_redis(f"redis://127.0.0.1:{port_of(server)}/0")
    try:
        outcomes = Outcomes()
        LuaScript(client, ECHO, timeout_s=0.05).send(["k"], ["v"], outcomes)
        result, error = (await outcomes.wait(1))[0]
        assert result is None and isinstance(error, TimeoutError)
    finally:
        await client.aclose()
        await stop(server)


class HangsUpOnTheSecond:
    """A server that answers PONG, except to the second command, where it hangs up."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        OPEN.append(writer)
        parser = hiredis.Reader()
        data = await reader.read(65536)
        while data:
            parser.feed(data)
            while parser.gets() is not False:
                self.count += 1
                if self.count == 2:
                    writer.close()
                    return
                writer.write(b"+PONG\r\n")
            data = await reader.read(65536)


async def test_a_connection_that_drops_fails_its_calls_and_the_next_call_reconnects() -> None:
    """The second call fails with the connection; the third goes out on a new one."""
    handler = HangsUpOnTheSecond()
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    wire = Wire({"host": "127.0.0.1", "port": port_of(server)}, timeout_s=1.0)
    try:
        assert await wire.call(("PING",)) == b"PONG"
        with pytest.raises(RedisConnectionError, match="lost"):
            await wire.call(("PING",))
        assert await wire.call(("PING",)) == b"PONG"
        assert handler.count == 3
    finally:
        await wire.aclose()
        await stop(server)


async def test_an_unreachable_redis_fails_fast() -> None:
    wire = Wire({"host": "127.0.0.1", "port": 1, "socket_connect_timeout": 0.2})
    with pytest.raises(RedisConnectionError, match="could not connect"):
        await wire.call(("PING",))
    await wire.aclose()


def test_the_wire_works_under_uvloop(redis_url: str) -> None:
    """The server's workers run uvloop, whose transports are not asyncio's classes."""
    import uvloop

    async def main() -> list[object]:
        client = create_redis(redis_url)
        try:
            script = LuaScript(client, ECHO, timeout_s=2.0)
            return [
                await script(["k"], ["v"]),
                *await send_all(client, [("SET", "wire:uv", 1), ("GET", "wire:uv")]),
            ]
        finally:
            await client.aclose()

    assert uvloop.run(main()) == [[b"k", b"v"], b"OK", b"1"]


def test_deadlines_less_than_a_millisecond_away_under_uvloop() -> None:
    """uvloop arms a timer less than 1 ms away as a plain handle, without when(): a command
    made while such a deadline is armed compares with the time kept beside it (it once failed
    the request with an AttributeError, under load, when a deadline was that close)."""
    import uvloop

    async def main() -> list[bool]:
        server, _ = await fake_server(lambda command: None)
        wire = Wire({"host": "127.0.0.1", "port": port_of(server)}, timeout_s=5.0)
        try:
            first = wire.call(("PING",), timeout_s=0.0001)
            later = [wire.call(("PING",), timeout_s=t) for t in (0.0002, 0.00005, 0.05)]
            outcomes = []
            for future in (first, *later):
                try:
                    await future
                except TimeoutError:
                    outcomes.append(True)
            return outcomes
        finally:
            await wire.aclose()
            await stop(server)

    assert uvloop.run(main()) == [True] * 4

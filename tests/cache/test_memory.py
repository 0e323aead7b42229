"""Tests for sluicegate.cache.memory: the in-process LRU, bounded by bytes, with an injected clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.cache.entry import Entry
from sluicegate.cache.memory import MemoryTier

OVERHEAD = Entry("chat", b"", 0, 1, "", "f", "o", None, "m").size  # the size of an empty entry


class Clock:
    """A clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sized(total: int, **fields: object) -> Entry:
    """An entry whose `size` is exactly ``total`` bytes."""
    return Entry("chat", b"x" * (total - OVERHEAD), 0.0, 1e12, '"e"', "chat", "acme", None, "m", **fields)  # type: ignore[arg-type]


def tier(max_bytes: int, clock: Clock | None = None) -> MemoryTier:
    """A memory tier with a fixed clock."""
    return MemoryTier(max_bytes, clock or Clock())


def test_budget_evicts_the_least_recently_used() -> None:
    """When a new entry does not fit, the oldest go first until it does."""
    memory = tier(1500)
    for key in "abc":
        memory.put(key, sized(500), 60)
    assert memory.bytes == 1500
    memory.put("d", sized(700), 60)
    assert [k for k in "abcd" if memory.peek(k)] == ["c", "d"]
    assert memory.bytes == 1200
    assert len(memory) == 2


def test_peek_refreshes_recency() -> None:
    """Reading an entry makes it the most recently used, so another one is evicted instead."""
    memory = tier(1500)
    for key in "abc":
        memory.put(key, sized(500), 60)
    assert memory.peek("a") is not None
    memory.put("d", sized(500), 60)
    assert memory.peek("b") is None
    assert all(memory.peek(k) is not None for k in "acd")


def test_entries_lists_least_recently_used_first() -> None:
    """entries() follows recency: puts and peeks both move an entry to the end."""
    memory = tier(10_000)
    entries = {k: sized(500) for k in "abc"}
    for key, entry in entries.items():
        memory.put(key, entry, 60)
    memory.peek("a")
    assert memory.entries() == [entries["b"], entries["c"], entries["a"]]


def test_entries_expire_after_keep_s() -> None:
    """An entry is kept for keep_s seconds of the clock, then forgotten and its bytes released."""
    clock = Clock()
    memory = tier(10_000, clock)
    memory.put("short", sized(500), 10)
    memory.put("long", sized(600), 100)
    clock.now += 9.999
    assert memory.peek("short") is not None
    clock.now += 0.001
    assert memory.peek("short") is None
    assert memory.bytes == 600
    clock.now += 90
    assert memory.peek("long") is None
    assert (memory.bytes, len(memory)) == (0, 0)


def test_oversized_entry_is_not_stored() -> None:
    """An entry bigger than the whole budget is refused, and evicts nothing."""
    memory = tier(1000)
    memory.put("a", sized(600), 60)
    memory.put("huge", sized(1001), 60)
    assert memory.peek("huge") is None
    assert memory.peek("a") is not None
    assert memory.bytes == 600
    memory.put("exact", sized(1000), 60)
    assert memory.peek("exact") is not None
    assert memory.bytes == 1000


def test_oversized_replacement_does_not_leave_the_old_answer() -> None:
    """A replacement too big for the budget drops the old answer: memory never serves what was replaced."""
    memory = tier(1000)
    memory.put("a", sized(600), 60)
    memory.put("a", sized(1001), 60)
    assert memory.peek("a") is None
    assert memory.bytes == 0


def test_replacing_a_key_keeps_the_byte_count_exact() -> None:
    """A new entry under a known key replaces the old one and its bytes."""
    memory = tier(10_000)
    memory.put("a", sized(500), 60)
    newer = sized(800)
    memory.put("a", newer, 60)
    assert memory.peek("a") is newer
    assert (memory.bytes, len(memory)) == (800, 1)


def test_delete_where_and_clear() -> None:
    """delete_where forgets what it selects and says how many; clear forgets everything."""
    memory = tier(10_000)
    memory.put("acme:1", sized(500, tags=("q3",)), 60)
    memory.put("acme:2", sized(700), 60)
    memory.put("globex:1", sized(900, tags=("q3",)), 60)
    assert memory.delete_where(lambda key, entry: "q3" in entry.tags) == 2
    assert memory.bytes == 700
    assert memory.delete_where(lambda key, entry: key.startswith("globex")) == 0
    assert memory.peek("acme:2") is not None
    memory.clear()
    assert (memory.bytes, len(memory), memory.entries()) == (0, 0, [])


async def test_tier_interface() -> None:
    """get, set, delete and touch work like peek and put, and touch counts hits."""
    memory = tier(10_000)
    entry = sized(500, hits=2)
    await memory.set("k", entry, 60)
    assert await memory.get("k") is entry
    await memory.touch("k", 3)
    await memory.touch("missing", 3)
    assert entry.hits == 5
    await memory.delete("k")
    await memory.delete("k")
    assert await memory.get("k") is None
    assert memory.bytes == 0


operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "peek", "delete", "tick"]),
        st.sampled_from("abcdef"),
        st.integers(OVERHEAD, 1500),
        st.integers(1, 20),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(operations)
async def test_bytes_are_exact_and_within_budget(ops: list[tuple[str, str, int, int]]) -> None:
    """After any sequence of operations, bytes is the sum of the entries' sizes and never over budget."""
    clock = Clock()
    memory = tier(2000, clock)
    for op, key, size, seconds in ops:
        if op == "put":
            memory.put(key, sized(size), seconds)
        elif op == "peek":
            memory.peek(key)
        elif op == "delete":
            await memory.delete(key)
        else:
            clock.now += seconds
        assert memory.bytes == sum(e.size for e in memory.entries())
        assert memory.bytes <= memory.max_bytes
        assert len(memory) == len(memory.entries())

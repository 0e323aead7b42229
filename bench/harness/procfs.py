"""CPU and memory of processes, read from /proc and getrusage (Linux only)."""

from __future__ import annotations

import os
import resource

CLK_TCK = os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime ticks) of one process, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(rest[1]), int(rest[11]) + int(rest[12])


def _all_stats() -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = _stat(int(d))
            if s is not None:
                out[int(d)] = s
    return out


def proc_tree(root: int, stats: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """The PIDs of ``root`` and all its live descendants, sorted."""
    stats = stats if stats is not None else _all_stats()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _t) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out.append(pid)
        todo.extend(kids.get(pid, []))
    return sorted(out)


def tree_cpu(root: int) -> dict[int, int]:
    """CPU ticks (user+system) of every live process in the tree of root."""
    stats = _all_stats()
    return {pid: stats[pid][1] for pid in proc_tree(root, stats)}


def harness_cpu_s(roots: list[int]) -> float:
    """CPU seconds of the process trees of several roots, from one scan of /proc."""
    stats = _all_stats()
    pids: set[int] = set()
    for r in roots:
        pids.update(proc_tree(r, stats))
    return sum(stats[p][1] for p in pids) / CLK_TCK


def system_busy_s() -> float:
    """Busy CPU seconds of the whole machine (all cores) from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


def children_cpu_s() -> float:
    """CPU seconds of this process's reaped children (wrk and the other short commands)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def self_cpu_s() -> float:
    """CPU seconds of this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_delta(before: dict[int, int], after: dict[int, int]) -> dict[int, float]:
    """Seconds of CPU per PID between two snapshots (new PIDs count from zero)."""
    return {pid: (t - before.get(pid, 0)) / CLK_TCK for pid, t in after.items()}


def vm_hwm_kb(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of ``pid`` in kB, or None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cmdline(pid: int) -> str:
    """The command line of ``pid``, or "?" if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return "?"

"""What the results were measured on: versions of everything, and the machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .processes import run_capture


def versions(a: argparse.Namespace, litellm_ver: str | None) -> dict[str, str]:
    """Versions of the interpreters, sluicegate, its server stack, LiteLLM and wrk."""
    gpy = a.gateway_python
    v: dict[str, str] = {"python (harness)": sys.version.split()[0]}
    rc, out = run_capture([gpy, "-c", "import sys; print(sys.version.split()[0])"])
    v["python (gateway .venv)"] = out if rc == 0 else "?"
    rc, out = run_capture([gpy, "-c", "import sluicegate; print(sluicegate.__version__)"])
    v["sluicegate"] = out.splitlines()[-1] if rc == 0 and out else f"? ({out[-120:]})"
    code = (
        "import importlib.metadata as m\n"
        "for p in ('uvicorn','uvloop','httptools','orjson','aiohttp','granian'):\n"
        "    try: print(p, m.version(p))\n"
        "    except Exception: print(p, 'not installed')\n"
    )
    rc, out = run_capture([gpy, "-c", code])
    for ln in out.splitlines():
        parts = ln.split(" ", 1)
        if len(parts) == 2:
            v[parts[0]] = parts[1]
    v["litellm"] = litellm_ver or "not run"
    _rc, out = run_capture(["wrk", "-v"])
    v["wrk"] = out.splitlines()[0] if out else "?"
    return v


def machine() -> dict[str, str]:
    """Cores, CPU model, memory and kernel."""
    cpu = "?"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(ln.split()[1])
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    _rc, nproc = run_capture(["nproc"])
    _rc, kern = run_capture(["uname", "-sr"])
    return {"nproc": nproc, "cpu": cpu, "memory": f"{mem_kb / 1048576:.1f} GiB", "kernel": kern}

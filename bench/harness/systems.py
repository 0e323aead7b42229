"""The systems under test: the mock upstream, sluicegate servers and LiteLLM proxies."""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import subprocess
import time
from pathlib import Path

from .common import LITELLM_VENV, SLUICEGATE_TOKEN, WORK, log
from .processes import REG, free_port, server_env, wait_healthy
from .procfs import cmdline, proc_tree, vm_hwm_kb
from .record import Record


class System:
    """One server under test (or the mock itself, for the mock-direct rows)."""

    def __init__(self, key: str, label: str, kind: str, token: str) -> None:
        self.key, self.label, self.kind, self.token = key, label, kind, token
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.cmd: list[str] = []
        self.log_path: Path | None = None
        self.start_s: float | None = None
        self.lua: dict[str, Path] = {}
        self.hwm_kb: dict[int, tuple[int, str]] = {}  # pid -> (VmHWM kB, cmdline)
        self.cpu_seen: dict[int, float] = {}  # pid -> CPU seconds used in measured cells

    @property
    def pid(self) -> int:
        """The PID of the process the harness started (the master)."""
        assert self.proc is not None
        return self.proc.pid

    def sample_rss(self) -> None:
        """Remember the peak RSS of every process in the tree."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for pid in proc_tree(self.pid):
            kb = vm_hwm_kb(pid)
            if kb is not None and kb > self.hwm_kb.get(pid, (0, ""))[0]:
                self.hwm_kb[pid] = (kb, cmdline(pid)[:120])


# The pass-through cells measure the gateway without its response cache: they repeat one
# request, which the cache (on by default) would otherwise answer from the second time on.
CACHE_OFF_YAML = "cache:\n  enabled: false\n"
# ... and without the usage ledger (on by default), so that they measure the core pipeline as
# 0.1.0 did; what the ledger adds is measured beside it (`+ ledger` in the cache cells, and
# `bench/admission_overhead.py`).
CORE_YAML = CACHE_OFF_YAML + "ledger:\n  enabled: false\n"


def sluicegate_yaml(mock: System, extra: str = CORE_YAML) -> str:
    """The config of a sluicegate under test: one provider, the mock, and ``extra`` YAML."""
    return (
        "providers:\n  bench-mock:\n    kind: openai\n"
        f"    base_url: {mock.url}/v1\n    api_key_env: null\n"
        "models:\n  gpt-4o-mini:\n    provider: bench-mock\n" + extra
    )


def litellm_yaml(mock: System, extra: str = "") -> str:
    """The config of a LiteLLM proxy under test: one model on the mock, and ``extra`` YAML."""
    return (
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: {mock.url}/v1\n      api_key: sk-mock\n" + extra
    )


class Launcher:
    """Starts and stops the systems, and records their commands, start-up and memory."""

    def __init__(self, args: argparse.Namespace, rec: Record) -> None:
        self.a = args
        self.rec = rec
        self.sg_cmd = shlex.split(args.sluicegate_cmd)
        self.mock_cmd = shlex.split(args.mock_cmd) if args.mock_cmd else self.sg_cmd
        self.litellm_key = "sk-bench-" + secrets.token_hex(24)

    def start_mock(self, name: str, latency_ms: int, chunks: int) -> System:
        """Start ``sluicegate mock-upstream`` with a fixed latency."""
        port = free_port()
        s = System(name, f"mock direct ({latency_ms} ms)", "mock", SLUICEGATE_TOKEN)
        s.cmd = [
            *self.mock_cmd,
            "mock-upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
            "--chunks",
            str(chunks),
        ]
        s.url = f"http://127.0.0.1:{port}"
        s.log_path = WORK / "logs" / f"{name}.log"
        self.rec.commands.append(shlex.join(s.cmd))
        t = time.monotonic()
        s.proc = REG.start(name, s.cmd, server_env(), s.log_path)
        wait_healthy(name, s.proc, s.url + "/_mock/health", 30, s.log_path)
        s.start_s = time.monotonic() - t
        log(f"{name} up on :{port} (pid {s.pid}, {s.start_s:.1f}s)")
        return s

    def start_sluicegate(
        self,
        key: str,
        server: str | None,
        mock: System,
        *,
        label: str | None = None,
        extra_yaml: str = CORE_YAML,
    ) -> System:
        """Start ``sluicegate serve`` in front of ``mock``, with ``extra_yaml`` added to its config
        (by default the cache and the usage ledger switched off)."""
        port = free_port()
        label = label or "sluicegate" + (f" [{server}]" if server else "")
        s = System(key, label, "sluicegate", SLUICEGATE_TOKEN)
        cfg = WORK / f"{key}.yaml"
        cfg.write_text(sluicegate_yaml(mock, extra_yaml))
        s.cmd = [
            *self.sg_cmd,
            "serve",
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(self.a.workers),
        ]
        if server:
            s.cmd += ["--server", server]
        s.url = f"http://127.0.0.1:{port}"
        s.log_path = WORK / "logs" / f"{key}.log"
        self.rec.commands.append(shlex.join(s.cmd))
        t = time.monotonic()
        s.proc = REG.start(key, s.cmd, server_env(), s.log_path)
        return self._await(s, s.url + "/api/ai/status", 60, t)

    def start_litellm(
        self, key: str, mock: System, *, label: str | None = None, extra_yaml: str = ""
    ) -> System:
        """Start the LiteLLM proxy in front of ``mock``, production settings, master key as token."""
        port = free_port()
        s = System(key, label or f"litellm {self.rec.litellm_version}", "litellm", self.litellm_key)
        cfg = WORK / f"{key}.yaml"
        cfg.write_text(litellm_yaml(mock, extra_yaml))
        s.cmd = [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(cfg),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(self.a.workers),
        ]
        env = server_env(
            {
                "LITELLM_MASTER_KEY": self.litellm_key,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "LITELLM_MODE": "PRODUCTION",
                "LITELLM_TELEMETRY": "False",
                "NO_DOCS": "True",
                "VIRTUAL_ENV": str(LITELLM_VENV),
                "PATH": f"{LITELLM_VENV / 'bin'}:{os.environ.get('PATH', '')}",
            }
        )
        s.url = f"http://127.0.0.1:{port}"
        s.log_path = WORK / "logs" / f"{key}.log"
        self.rec.commands.append(
            "LITELLM_MASTER_KEY=sk-bench-<random> LITELLM_LOCAL_MODEL_COST_MAP=True "
            "LITELLM_LOG=ERROR LITELLM_MODE=PRODUCTION LITELLM_TELEMETRY=False NO_DOCS=True "
            + shlex.join(s.cmd)
        )
        t = time.monotonic()
        s.proc = REG.start(key, s.cmd, env, s.log_path)
        return self._await(s, s.url + "/health/liveliness", self.a.litellm_start_timeout, t)

    def _await(self, s: System, health: str, timeout: float, t: float) -> System:
        assert s.proc is not None
        assert s.log_path is not None
        wait_healthy(s.label, s.proc, health, timeout, s.log_path)
        s.start_s = time.monotonic() - t
        # with several workers the first healthy answer may come from one worker only:
        # give the others a moment, then report how many processes the tree has.
        time.sleep(1.0 if s.kind == "sluicegate" else 2.0)
        s.sample_rss()
        log(f"{s.label} up on {s.url} (pid {s.pid}, tree {proc_tree(s.pid)}, healthy after {s.start_s:.1f}s)")
        return s

    def stop(self, s: System) -> None:
        """Stop ``s`` and record its processes' peak RSS and measured CPU."""
        if s.proc is not None:
            s.sample_rss()
            meta = self.rec.systems_meta.setdefault(s.label, {"kind": s.kind, "instances": []})
            meta["instances"].append(
                {
                    "key": s.key,
                    "cmd": shlex.join(s.cmd),
                    "start_to_healthy_s": s.start_s,
                    "processes": [
                        {
                            "pid": pid,
                            "vmhwm_mb": round(kb / 1024, 1),
                            "cmd": c,
                            "cpu_s_measured": round(s.cpu_seen.get(pid, 0.0), 2),
                            "role": "master" if pid == s.pid else "child",
                        }
                        for pid, (kb, c) in sorted(s.hwm_kb.items())
                    ],
                }
            )
            REG.stop(s.proc)
            s.proc = None

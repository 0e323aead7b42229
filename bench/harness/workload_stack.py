"""The workload's systems: one mock provider per feature with its own latency, and sluicegate.

Everything is started by this process on 127.0.0.1, registered in `REG`, and stopped by PID
(process group) when the workload ends.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import WORK, BenchError, log
from .processes import REG, free_port, http, run_capture, server_env, wait_healthy

KEY_RE = re.compile(r"sk-sg-[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Feature:
    """One AI feature of the product: its model, cache scope, and how its provider behaves."""

    name: str
    model: str
    scope: str  # cache scope: org or user
    stream: bool
    weight: float  # share of the users' requests
    mock: dict[str, Any] = field(default_factory=dict)  # the provider mock's MockBehaviour


def _lognormal(ms: float) -> dict[str, Any]:
    return {"distribution": "lognormal", "ms": ms, "sigma": 0.35}


FEATURES = (
    # template generation: ≈1.5 s, non-streamed
    Feature("okr-template", "gpt-4o", "org", False, 0.3, {"latency": _lognormal(1500), "answer_words": 180}),
    # chat: first token after 0.8 s, then a chunk every 20 ms, streamed
    Feature(
        "chat",
        "gpt-4o-mini",
        "user",
        True,
        0.5,
        {"ttft_ms": 800, "chunk_interval_ms": 20, "chunks": 40, "answer_words": 80},
    ),
    # insights: ≈3 s, non-streamed
    Feature("insights", "gpt-4.1", "org", False, 0.2, {"latency": _lognormal(3000), "answer_words": 300}),
)


class Stack:
    """Three mock providers and a sluicegate with ``workers`` workers in front of them."""

    def __init__(self, sluicegate_cmd: list[str], workers: int, redis_url: str | None, seed: int) -> None:
        self.cmd = sluicegate_cmd
        self.workers = workers
        self.redis_url = redis_url
        self.seed = seed
        self.folder = WORK / "workload"
        self.mocks: dict[str, str] = {}  # feature -> mock base URL
        self.url = ""
        self.commands: list[str] = []
        self.pepper = secrets.token_hex(32)

    def start(self, orgs: list[str]) -> dict[str, str]:
        """Start everything; the virtual key of each org."""
        if self.folder.exists():
            shutil.rmtree(self.folder)  # a cold cache and an empty database every run
        (self.folder / "logs").mkdir(parents=True)
        for i, feature in enumerate(FEATURES):
            self.mocks[feature.name] = self._start_mock(feature, self.seed + i)
        config = self._write_config()
        keys = {org: self._create_key(config, org) for org in orgs}
        self._start_gateway(config)
        return keys

    def _start_mock(self, feature: Feature, seed: int) -> str:
        port = free_port()
        cmd = [*self.cmd, "mock-upstream", "--host", "127.0.0.1", "--port", str(port)]
        self.commands.append(shlex.join(cmd))
        log_path = self.folder / "logs" / f"mock-{feature.name}.log"
        p = REG.start(f"mock-{feature.name}", cmd, server_env(), log_path)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(f"mock {feature.name}", p, url + "/_mock/health", 30, log_path)
        behaviour = dict(feature.mock, seed=seed)
        st, _h, body = http("PUT", url + "/_mock/behaviour", json.dumps(behaviour).encode())
        if st != 200:
            raise BenchError(f"mock {feature.name} refused its behaviour {behaviour}: {body[:300]!r}")
        self.commands.append(f"PUT {url}/_mock/behaviour {json.dumps(behaviour)}")
        log(f"mock {feature.name} up on :{port} (pid {p.pid}): {json.dumps(behaviour)}")
        return url

    def _write_config(self) -> Path:
        db = self.folder / "sluicegate.db"
        lines = [
            f"data_dir: {json.dumps(str(self.folder))}",
            f"database:\n  url: {json.dumps(f'sqlite+aiosqlite:///{db}')}",
            "auth:\n  require_keys: true",
            "providers:",
        ]
        for f in FEATURES:
            lines.append(f"  {f.name}-mock:\n    kind: openai\n    base_url: {self.mocks[f.name]}/v1")
            lines.append("    api_key_env: null")
        lines.append("models:")
        lines += [f"  {f.model}:\n    provider: {f.name}-mock" for f in FEATURES]
        lines.append("features:")
        lines += [f"  {f.name}:\n    cache:\n      scope: {f.scope}" for f in FEATURES]
        if self.redis_url:
            lines.append(f"redis:\n  url: {json.dumps(self.redis_url)}")
        path = self.folder / "sluicegate.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _env(self) -> dict[str, str]:
        return server_env({"SLUICEGATE_KEY_PEPPER": self.pepper})

    def _create_key(self, config: Path, org: str) -> str:
        cmd = [*self.cmd, "keys", "create", "--org", org, "--name", "workload", "--config", str(config)]
        rc, out = run_capture(cmd, timeout=60, env=self._env())
        match = KEY_RE.search(out)
        if rc != 0 or match is None:
            raise BenchError(f"cannot create a key for {org}: {shlex.join(cmd)}: {out[-600:]}")
        return match.group(0)

    def _start_gateway(self, config: Path) -> None:
        port = free_port()
        cmd = [*self.cmd, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--workers", str(self.workers)]
        self.commands.append("SLUICEGATE_KEY_PEPPER=<random> " + shlex.join(cmd))
        log_path = self.folder / "logs" / "sluicegate.log"
        t = time.monotonic()
        p = REG.start("sluicegate", cmd, self._env(), log_path)
        self.url = f"http://127.0.0.1:{port}"
        wait_healthy("sluicegate", p, self.url + "/api/ai/status", 60, log_path)
        time.sleep(1.0)  # let every worker come up
        log(f"sluicegate up on {self.url} (pid {p.pid}, {self.workers} workers, {time.monotonic() - t:.1f}s)")

    def upstream_calls(self) -> dict[str, int]:
        """Chat-completion calls each feature's mock received (its log keeps the last 10,000)."""
        out: dict[str, int] = {}
        for name, url in self.mocks.items():
            st, _h, body = http("GET", url + "/_mock/calls", timeout=30)
            if st == 200:
                out[name] = sum(1 for c in json.loads(body) if c["path"].endswith("/chat/completions"))
        return out

    def reset_calls(self) -> None:
        """Forget the calls made before the measured window (key creation makes none)."""
        for url in self.mocks.values():
            http("DELETE", url + "/_mock/calls")

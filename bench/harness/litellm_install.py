"""The LiteLLM proxy's own venv, bench/.litellm-venv: installed once, byte-compiled once."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from .common import LITELLM_FALLBACK, LITELLM_OVERRIDES, LITELLM_PIN, LITELLM_VENV, WORK, BenchError, log
from .processes import run_capture, server_env


def litellm_python() -> Path:
    """The interpreter of LiteLLM's venv."""
    return LITELLM_VENV / "bin" / "python"


def litellm_version() -> str | None:
    """The installed LiteLLM version, or None when it is not installed."""
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        return None
    rc, out = run_capture(
        [str(litellm_python()), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        timeout=60,
    )
    return out.strip().splitlines()[-1] if rc == 0 and out.strip() else None


def ensure_litellm() -> tuple[str, list[str]]:
    """Install LiteLLM into bench/.litellm-venv if needed; returns (version, notes)."""
    notes: list[str] = []
    ver = litellm_version()
    if ver is None:
        ver = _install(notes)
    marker = LITELLM_VENV / ".bench-compiled"
    if not marker.exists():
        log("byte-compiling LiteLLM's site-packages (compileall)")
        rc, sp = run_capture(
            [str(litellm_python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        )
        env = server_env()
        rc, _out = run_capture(
            [str(litellm_python()), "-m", "compileall", "-q", "-j", "0", sp.strip()], timeout=900, env=env
        )
        # compileall exits 1 when some vendored test file does not compile; that is harmless
        notes.append(f"compileall exit {rc}")
        marker.write_text(f"compileall exit {rc}\n")
    return ver, notes


def _install(notes: list[str]) -> str:
    log(f"installing litellm[proxy]=={LITELLM_PIN} into {LITELLM_VENV} (one-time)")
    base_py = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    py = str(base_py if base_py.exists() else Path(sys.executable))
    uv = shutil.which("uv")
    if LITELLM_VENV.exists():
        shutil.rmtree(LITELLM_VENV)
    if uv:
        rc, out = run_capture([uv, "venv", "--python", py, str(LITELLM_VENV)], timeout=300)
    else:
        rc, out = run_capture([py, "-m", "venv", str(LITELLM_VENV)], timeout=300)
        if rc == 0:
            rc, out = run_capture([str(litellm_python()), "-m", "pip", "install", "-q", "uv"], timeout=600)
            uv = str(LITELLM_VENV / "bin" / "uv")
    if rc != 0 or not uv:
        raise BenchError(f"cannot create {LITELLM_VENV}: {out[-2000:]}")
    ovr = WORK / "litellm-overrides.txt"
    ovr.write_text("\n".join(LITELLM_OVERRIDES) + "\n")
    env = dict(os.environ, VIRTUAL_ENV=str(LITELLM_VENV))
    base = [uv, "pip", "install", "--python", str(litellm_python())]
    cmd = [*base, "--override", str(ovr), f"litellm[proxy]=={LITELLM_PIN}"]
    rc, out = run_capture(cmd, timeout=900, env=env)
    notes.append("install: " + shlex.join(cmd))
    if rc != 0:
        log(f"litellm {LITELLM_PIN} with overrides failed; falling back to {LITELLM_FALLBACK}")
        notes.append(f"{LITELLM_PIN} failed: {out[-400:]}")
        cmd = [*base, f"litellm[proxy]=={LITELLM_FALLBACK}"]
        rc, out = run_capture(cmd, timeout=900, env=env)
        notes.append("install: " + shlex.join(cmd))
        if rc != 0:
            raise BenchError(f"cannot install LiteLLM: {out[-2000:]}")
    (LITELLM_VENV / ".bench-compiled").unlink(missing_ok=True)
    ver = litellm_version()
    if ver is None:
        raise BenchError("LiteLLM installed but `import litellm` metadata lookup fails")
    return ver

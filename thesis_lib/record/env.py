"""What machine and software produced a run: the contents of env.json.

Collecting this must never stop a run from starting, so every probe is guarded on its own:
a probe that fails leaves its fields as None and records why under `errors`.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import subprocess
import sys
from typing import Any, Callable

__all__ = ["collect_env"]

_GIT_TIMEOUT_S = 5.0


def collect_env() -> dict:
    """Describe the host, Python, torch, CUDA/GPUs, git commit and process of the current run.

    Returns:
        A JSON-ready dict with keys: host, platform, python, python_executable, torch,
        cuda_available, cuda_version, cudnn, cuda_visible_devices, gpus (a list of
        {index, name, total_memory_mb, capability, uuid, power_limit_w}), gpu_driver,
        cpu_count, git_commit, git_dirty, cwd, pid, thesis_lib_version, time (UTC ISO),
        and errors ({probe: message} for every probe that failed; empty when all worked).

    Raises:
        Nothing: every failure is recorded under `errors` instead.
    """
    env: dict[str, Any] = {
        "host": None,
        "platform": None,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": None,
        "cuda_available": False,
        "cuda_version": None,
        "cudnn": None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": [],
        "gpu_driver": None,
        "cpu_count": os.cpu_count(),
        "git_commit": None,
        "git_dirty": None,
        "cwd": None,
        "pid": os.getpid(),
        "thesis_lib_version": None,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "errors": {},
    }
    _probe(env, "host", lambda: env.update(host=socket.gethostname()))
    _probe(env, "platform", lambda: env.update(platform=platform.platform()))
    _probe(env, "cwd", lambda: env.update(cwd=os.getcwd()))
    _probe(env, "thesis_lib", lambda: env.update(thesis_lib_version=_thesis_lib_version()))
    _probe(env, "torch", lambda: _probe_torch(env))
    _probe(env, "nvml", lambda: _probe_nvml(env))
    _probe(env, "git", lambda: _probe_git(env))
    return env


def _probe(env: dict, name: str, action: Callable[[], None]) -> None:
    """Run one probe; record its failure instead of raising."""
    try:
        action()
    except Exception as exc:  # any failure of a probe is data, not a reason to stop the run
        env["errors"][name] = f"{type(exc).__name__}: {exc}"


def _thesis_lib_version() -> str | None:
    """The installed package's version."""
    from ..version import __version__

    return __version__


def _probe_torch(env: dict) -> None:
    """torch, CUDA and cuDNN versions and the visible GPUs, as torch sees them."""
    import torch

    env["torch"] = torch.__version__
    env["cuda_version"] = torch.version.cuda
    env["cuda_available"] = bool(torch.cuda.is_available())
    if torch.backends.cudnn.is_available():
        env["cudnn"] = torch.backends.cudnn.version()
    if not env["cuda_available"]:
        return
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)
        env["gpus"].append(
            {
                "index": index,
                "name": props.name,
                "total_memory_mb": round(props.total_memory / 2**20),
                "capability": f"{props.major}.{props.minor}",
                "uuid": f"GPU-{uuid}" if uuid is not None else None,
                "power_limit_w": None,
            }
        )


def _probe_nvml(env: dict) -> None:
    """Driver version and power limits from NVML, when pynvml is installed and a GPU is visible."""
    if not env["gpus"]:
        return
    try:
        import pynvml
    except ImportError:
        return
    pynvml.nvmlInit()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        env["gpu_driver"] = driver.decode() if isinstance(driver, bytes) else driver
        limits_by_uuid = {}
        for nvml_index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            limits_by_uuid[uuid] = pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0
        # torch and NVML may number GPUs differently (CUDA_VISIBLE_DEVICES), so match by UUID.
        for gpu in env["gpus"]:
            gpu["power_limit_w"] = limits_by_uuid.get(gpu["uuid"])
    finally:
        pynvml.nvmlShutdown()


def _probe_git(env: dict) -> None:
    """The commit checked out in the working directory, and whether tracked files differ from it."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return
    env["git_commit"] = commit
    status = _git("status", "--porcelain", "--untracked-files=no")
    env["git_dirty"] = None if status is None else bool(status)


def _git(*args: str) -> str | None:
    """Output of a git command in the working directory, or None when git or the repo is absent."""
    try:
        completed = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout.strip()

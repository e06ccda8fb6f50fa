"""What machine and software produced a run: the contents of env.json.

Collecting this must never stop a run from starting, so every probe is guarded on its own:
a probe that fails leaves its fields as None and records why under `errors`.

Collecting it runs no program the user's repository configures: git is asked only with every
configured program switched off (see `_probe_git`), never the way a plain `git status` would
run core.fsmonitor, filter drivers or hooks from the repository's .git/config.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["collect_env", "describe_data_file", "DATA_FILE_SAMPLE_BYTES"]

_GIT_TIMEOUT_S = 5.0
# Config every git call is made with (`git -c`, which outranks the repository's own config): no
# file-system monitor hook, no hooks, no pager, no fsmonitor daemon.
_GIT_SAFE_CONFIG = (
    ("core.fsmonitor", "false"),
    ("core.useBuiltinFSMonitor", "false"),
    ("core.hooksPath", os.devnull),
    ("core.pager", "cat"),
)
DATA_FILE_SAMPLE_BYTES = 1 << 20  # describe_data_file hashes this much of the file's start and of its end


def collect_env() -> dict:
    """Describe the host, Python, torch, CUDA/GPUs, git commit and process of the current run.

    Returns:
        A JSON-ready dict with keys: host, platform, python, python_executable, torch,
        cuda_available, cuda_version, cudnn, cuda_visible_devices, gpus (a list of
        {index, name, total_memory_mb, capability, uuid, power_limit_w}), gpu_driver,
        cpu_count, git_commit, git_dirty, cwd, pid, thesis_lib_version, time (UTC ISO),
        and errors ({probe: message} for every probe that failed; empty when all worked;
        "git_dirty" says why git_dirty is None in a repository, see `_probe_git`).

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


def describe_data_file(path: str | os.PathLike | None) -> dict | None:
    """The identity of a run's data file, cheap enough to take at every start: where, size, mtime, a sample hash.

    Recorded in the run's on_start event (`data_file`) and compared at inference, so a data file
    replaced since training (regenerated, another file at the same relative path) is noticed.

    Args:
        path: the data file (config data.path); None or "" for none.

    Returns:
        {"path" (as given), "resolved" (absolute, links followed), "size" (bytes), "mtime_ns",
        "sample_sha256" (sha256 of the size, the first and the last DATA_FILE_SAMPLE_BYTES)}, or
        None when there is no file (no path, a missing path, a folder). Never raises: an
        unreadable file gives its size and mtime with "sample_sha256": None.
    """
    if path is None or str(path) == "":
        return None
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    if not Path(path).is_file():
        return None
    return {"path": os.fspath(path), "resolved": os.path.realpath(path), "size": int(stat.st_size),
            "mtime_ns": int(stat.st_mtime_ns), "sample_sha256": _sample_sha256(path, stat.st_size)}


def _sample_sha256(path: str | os.PathLike, size: int) -> str | None:
    """sha256 over the size and the first and last DATA_FILE_SAMPLE_BYTES (the whole file when it is small)."""
    digest = hashlib.sha256(str(size).encode())
    try:
        with open(path, "rb") as handle:
            digest.update(handle.read(DATA_FILE_SAMPLE_BYTES))
            if size > DATA_FILE_SAMPLE_BYTES:
                handle.seek(max(DATA_FILE_SAMPLE_BYTES, size - DATA_FILE_SAMPLE_BYTES))
                digest.update(handle.read(DATA_FILE_SAMPLE_BYTES))
    except OSError:
        return None
    return digest.hexdigest()


def _probe_git(env: dict) -> None:
    """The commit checked out in the working directory, and whether tracked files differ from it.

    A plain `git status` runs programs the repository configures: the core.fsmonitor hook, the
    clean (or process) command of every filter driver a changed file's attributes name, the
    post-index-change hook when it refreshes the index, and git itself in every submodule (with
    the submodule's config). Here none of them runs: every call has `-c core.fsmonitor=false`
    and `-c core.hooksPath=/dev/null` (command-line config outranks the repository's),
    `--no-optional-locks` (the index is never written), `--ignore-submodules=all`, and the
    clean/process command of every configured filter driver set to empty with `required`
    off, so git compares the raw file. Only staged changes and deletions are then certain; a
    file whose content differs while its attributes name a filter driver might be equal once
    filtered, so then git_dirty is None and errors["git_dirty"] says why. The commit comes
    from `git rev-parse --verify HEAD`, which runs no configured program.
    """
    commit = _git("rev-parse", "--verify", "--quiet", "HEAD")
    if not commit:
        return
    env["git_commit"] = commit
    drivers = _filter_drivers()
    if drivers is None:
        env["errors"]["git_dirty"] = "could not list the repository's filter drivers; dirtiness not checked"
        return
    unsafe = sorted(name for name in drivers if "=" in name or "\n" in name)
    if unsafe:
        env["errors"]["git_dirty"] = (f"filter driver names {unsafe} cannot be switched off with git -c; "
                                      "dirtiness not checked, so that no configured program runs")
        return
    off = [item for name in sorted(drivers)
           for item in ((f"filter.{name}.clean", ""), (f"filter.{name}.process", ""), (f"filter.{name}.required", "false"))]
    status = _git("--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=no",
                  "--ignore-submodules=all", config=off, strip=False)
    if status is None:
        env["errors"]["git_dirty"] = "git status failed; dirtiness not checked"
        return
    certain, content_only = _parse_status(status)
    if certain or not content_only:
        env["git_dirty"] = certain
        return
    if not drivers:
        env["git_dirty"] = True
        return
    attrs = _git("check-attr", "-z", "--stdin", "filter", strip=False, stdin="".join(p + "\0" for p in content_only))
    if attrs is None:
        env["errors"]["git_dirty"] = "git check-attr failed; dirtiness not checked"
        return
    fields = attrs.split("\0")
    filtered = sorted({fields[i] for i in range(0, len(fields) - 2, 3) if fields[i + 2] in drivers})
    if len(filtered) < len(content_only):
        env["git_dirty"] = True  # a changed file no filter applies to
        return
    env["errors"]["git_dirty"] = (
        f"{len(filtered)} tracked file(s) differ from the index only before their filter "
        f"({', '.join(filtered[:5])}{' ...' if len(filtered) > 5 else ''}); the filter drivers "
        f"({', '.join(sorted(drivers))}) were not run, so whether they changed is not known")


def _parse_status(output: str) -> tuple[bool, list[str]]:
    """(a staged change or a deletion/type change exists, the paths whose worktree content differs only) from status -z."""
    entries = output.split("\0")
    certain, content_only, i = False, [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        staged, worktree, path = entry[0], entry[1], entry[3:]
        if staged in "RC":
            i += 1  # the original path of a rename or copy follows
        if staged not in " ?!" or worktree not in " M":
            certain = True  # index vs HEAD, or a deleted / retyped / unmerged file: no filter involved
        elif worktree == "M":
            content_only.append(path)
    return certain, content_only


def _filter_drivers() -> set[str] | None:
    """Names of the filter drivers with a clean or process command configured (any config level), or None."""
    listed = _git("config", "-z", "--get-regexp", r"^filter\..*\.(clean|process)$", strip=False, ok_codes=(0, 1))
    if listed is None:
        return None
    names = set()
    for item in listed.split("\0"):
        key = item.split("\n", 1)[0]
        if key.startswith("filter.") and key.count(".") >= 2:
            names.add(key[len("filter."):key.rindex(".")])
    return names


def _git(*args: str, config: Sequence[tuple[str, str]] = (), strip: bool = True,
         ok_codes: Sequence[int] = (0,), stdin: str | None = None) -> str | None:
    """Output of a git command in the working directory, or None when git or the repo is absent.

    Every call runs with `_GIT_SAFE_CONFIG` (and `config`) as `-c` options, which outrank the
    repository's config, no terminal prompt, and `stdin` (or nothing) as its input.
    """
    options = [item for key, value in (*_GIT_SAFE_CONFIG, *config) for item in ("-c", f"{key}={value}")]
    environment = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "GIT_PAGER": "cat"}
    try:
        completed = subprocess.run(
            ["git", "--no-pager", *options, *args], capture_output=True, encoding="utf-8", errors="surrogateescape",
            timeout=_GIT_TIMEOUT_S,
            check=False, env=environment, **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode not in ok_codes:
        return None
    return completed.stdout.strip() if strip else completed.stdout

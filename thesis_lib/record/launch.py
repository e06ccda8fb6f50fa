"""How a run was started: the `launch` section of env.json and of the on_start event.

Beside the machine (`collect_env`) and the data identity (`describe_data_file`), a run records
the command line it came from, the config source and overrides as given (`config.config_origin`:
never in config.yaml, which stays exactly the resolved config), what launched it (directly, or a
sweep's executor with the sweep directory and point) and the batch system's job ids read from
the environment: SLURM, HTCondor (the job ad `_CONDOR_JOB_AD` names), torchrun. Only what is
present is recorded; nothing is guessed. Describing it never raises: a probe that fails is
named under `errors`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Optional

__all__ = ["describe_launch", "SLURM_VARIABLES", "TORCHRUN_VARIABLES", "CONDOR_AD_KEYS", "CONDOR_VARIABLES"]

SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT",
                   "SLURM_JOB_NAME", "SLURM_NODELIST", "SLURM_JOB_NODELIST", "SLURM_PROCID")
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")
# Job ad attributes read from the file _CONDOR_JOB_AD names (HTCondor sets it for every job).
CONDOR_AD_KEYS = ("ClusterId", "ProcId", "NumJobStarts", "GlobalJobId")
# Set by HTCondor (_CONDOR_SLOT) or, by convention, by the submit file (CONDOR_ID = $(Cluster).$(Process)).
CONDOR_VARIABLES = ("CONDOR_ID", "_CONDOR_SLOT")
_AD_MAX_BYTES = 1 << 20


def describe_launch(origin: Optional[Mapping[str, Any]] = None, *, environ: Optional[Mapping[str, str]] = None,
                    argv: Optional[list] = None) -> dict:
    """Describe how this process started the run.

    Args:
        origin: `thesis_lib.config.config_origin(cfg)`: config_source, overrides, and for a sweep
            point executor, sweep_dir, sweep_point. None: nothing known of the config's origin.
        environ: the environment to read job ids from (default os.environ).
        argv: the command line (default sys.argv).

    Returns:
        A JSON-ready dict: "argv" (as given), "notebook" (only in a Jupyter kernel: {"kernel":
        "ipykernel", "path"} with the notebook's path where papermill, VS Code or the Jupyter
        server says it), "config_source", "overrides", "executor" ("direct" unless a sweep said
        otherwise), "sweep_dir" and "sweep_point" (sweep points only), then only where present:
        "slurm", "htcondor", "torchrun" ({variable or job ad key: value as found}) and "errors".
    """
    environ = os.environ if environ is None else environ
    origin = dict(origin or {})
    errors: dict[str, str] = {}
    launch: dict[str, Any] = {"argv": [str(a) for a in (sys.argv if argv is None else argv)]}
    notebook = _notebook(environ, errors)
    if notebook is not None:
        launch["notebook"] = notebook
    launch["config_source"] = origin.pop("config_source", None)
    launch["overrides"] = origin.pop("overrides", [])
    launch["executor"] = origin.pop("executor", None) or "direct"
    launch.update(origin)  # sweep_dir, sweep_point, or whatever a launcher noted
    slurm = _present(environ, SLURM_VARIABLES)
    if slurm:
        launch["slurm"] = slurm
    condor = _htcondor(environ, errors)
    if condor:
        launch["htcondor"] = condor
    torchrun = _present(environ, TORCHRUN_VARIABLES)
    if torchrun:
        launch["torchrun"] = torchrun
    if errors:
        launch["errors"] = errors
    return _json_safe(launch)


def _present(environ: Mapping[str, str], names: tuple) -> dict:
    return {name: environ[name] for name in names if environ.get(name) not in (None, "")}


def _htcondor(environ: Mapping[str, str], errors: dict) -> dict:
    """The job ad's ids (ClusterId, ProcId, NumJobStarts, GlobalJobId) and HTCondor's variables, where present."""
    found = _present(environ, CONDOR_VARIABLES)
    path = environ.get("_CONDOR_JOB_AD")
    if not path:
        return found
    found["job_ad"] = path
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(_AD_MAX_BYTES)
    except OSError as exc:
        errors["htcondor"] = f"job ad {path} not read: {type(exc).__name__}: {exc}"
        return found
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        key, raw = key.strip(), raw.strip()
        if sep and key in CONDOR_AD_KEYS:
            found[key] = _ad_value(raw)
    return found


def _ad_value(raw: str) -> Any:
    """A ClassAd literal: an integer, a quoted string (unquoted), else the text as it stands."""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1]
    try:
        return int(raw)
    except ValueError:
        return raw


def _notebook(environ: Mapping[str, str], errors: dict) -> Optional[dict]:
    """{"kernel": "ipykernel", "path": ...} when this process is a Jupyter kernel; the path only where one is told."""
    if "ipykernel" not in sys.modules:
        return None
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except Exception as exc:  # noqa: BLE001 - IPython broken: not a reason to stop the run
        errors["notebook"] = f"{type(exc).__name__}: {exc}"
        return None
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    notebook: dict[str, Any] = {"kernel": "ipykernel"}
    names = getattr(shell, "user_ns", {}) or {}
    # papermill (inject_paths=True) and VS Code put the path into the namespace; Jupyter Server 2 into the environment.
    for key, where in (("PAPERMILL_INPUT_PATH", "papermill_input_path"), ("PAPERMILL_OUTPUT_PATH", "papermill_output_path"),
                       ("__vsc_ipynb_file__", "path")):
        value = names.get(key)
        if isinstance(value, str) and value:
            notebook[where] = value
    if "path" not in notebook and environ.get("JPY_SESSION_NAME"):
        notebook["path"] = environ["JPY_SESSION_NAME"]
    if "path" not in notebook and "papermill_input_path" in notebook:
        notebook["path"] = notebook["papermill_input_path"]
    return notebook


def _json_safe(value: Any) -> Any:
    """Plain JSON data: what an override held that JSON cannot (a date, a path) becomes its text."""
    return json.loads(json.dumps(value, default=str))

"""Sweep points as jobs on a batch system: SLURM or HTCondor, through dask-jobqueue.

`sweep(..., executor="slurm" | "htcondor", executor_options={...})` starts a Dask scheduler in the
sweep's own process (a login node, or a small job) and submits worker jobs with dask-jobqueue's
`SLURMCluster` / `HTCondorCluster`. Each job runs one Dask worker process with one thread, so a
job runs one point at a time with all of the job's cores and GPUs; the points go to the workers as
plain data (`PointTask`) and run `execute_point` there, as with executor="dask" (`DaskExecutor`
does the rest: the signal plugin, the outcomes of lost workers). At most `max_jobs` jobs are
submitted (default: one per point to run); a job that is done with its point takes the next one,
and the jobs are cancelled when the sweep ends.

The options (`BATCH_OPTIONS` says what each one means and where it applies) are checked before the
sweep writes anything: an unknown name, a value of the wrong kind, or an option the batch system
has no use for (a SLURM partition for HTCondor) is a `ConfigError` naming it and the allowed ones.
What an option leaves unset comes from dask-jobqueue's own configuration
(`~/.config/dask/jobqueue.yaml`, section `jobqueue.slurm` or `jobqueue.htcondor`): a site's
`walltime`, `queue`, `account`, `job-script-prologue` (module loads) or `job-extra-directives` are
used as they stand; cores, memory (and disk for HTCondor) have the defaults below when that
configuration has none either, since dask-jobqueue refuses to start without them.

`job_script(executor, options)` is the script of one worker job, built by dask-jobqueue from the
same arguments as the real jobs, without submitting anything (`thesis-lib sweep --dry-run`).

A job the batch system refuses (an unknown partition, a memory request above the node's) is
named with the batch system's own message instead of leaving the sweep waiting for workers
that never come: `sbatch`/`condor_submit` run when the jobs are submitted, and the sweep raises
`ConfigError` when none of them was accepted. What this module does not do: replace a job that
ended while points were left (its walltime ran out): its point goes to another job of the sweep,
and the sweep waits when none is left; choose a walltime above a point's duration, and re-run
the sweep to continue it (completed points are skipped).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, did_you_mean
from ..layout import SWEEP_JOB_LOGS_DIR
from .point import PointTask
from .worker_pools import DaskExecutor

__all__ = [
    "BATCH_EXECUTORS",
    "BATCH_OPTIONS",
    "JOB_LOGS_DIR",
    "BatchJobExecutor",
    "check_options",
    "job_script",
    "misfit_reason",
    "options_for",
]

BATCH_EXECUTORS = ("slurm", "htcondor")
_BOTH = BATCH_EXECUTORS
_LABEL = {"slurm": "SLURM", "htcondor": "HTCondor"}
_SUBMIT = {"slurm": "sbatch", "htcondor": "condor_submit"}
_CLUSTER_NAME = {"slurm": "SLURMCluster", "htcondor": "HTCondorCluster"}  # dask-jobqueue's worker names: <this>-<i>

# name -> (the executors it applies to, what it means). The order is the order of the error messages' lists.
BATCH_OPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "cores": (_BOTH, ("CPU cores per job, an integer (default 1): SLURM --cpus-per-task, HTCondor RequestCpus; "
                      "the point's torch threads use them all")),
    "memory": (_BOTH, ("memory per job, e.g. '16GB' (default 4GB): SLURM --mem, HTCondor RequestMemory; "
                       "also the Dask worker's memory limit")),
    "gpus": (_BOTH, "GPUs per job, an integer (default none): SLURM --gres=gpu:N, HTCondor request_gpus"),
    "walltime": (_BOTH, ("the job's time limit in SLURM's format, e.g. '04:00:00' or '1-00:00:00': SLURM -t "
                         "(default: dask-jobqueue's configuration, 00:30:00 as shipped), HTCondor "
                         "allowed_execute_duration (default none)")),
    "partition": (("slurm",), "the SLURM partition (-p)"),
    "queue": (("slurm",), "the same as partition: dask-jobqueue's name for it"),
    "account": (_BOTH, "the account charged: SLURM -A, HTCondor accounting_group"),
    "job_extra_directives": (_BOTH, ("more of the batch system's own directives: for SLURM a list of sbatch "
                                     "options (['--constraint=a100']), for HTCondor a mapping of submit commands "
                                     "({'requirements': '(CUDACapability >= 8.0)'})")),
    "disk": (("htcondor",), "scratch disk per job, e.g. '10GB' (default 1GB): HTCondor RequestDisk"),
    "python": (_BOTH, ("the Python that runs the worker on the compute node (default: this one, sys.executable, "
                       "which must be reachable there: a shared filesystem)")),
    "local_directory": (_BOTH, "the worker's scratch directory on the compute node, e.g. '$TMPDIR'"),
    "log_directory": (_BOTH, "where the jobs' output and error files go (default: <sweep directory>/job_logs)"),
    "scheduler_host": (_BOTH, ("the host name or address the workers reach the sweep's scheduler at "
                               "(default: dask-jobqueue's choice, its `interface` setting)")),
    "max_jobs": (_BOTH, "jobs submitted at most (default: one per point to run)"),
}
# Why an option has no meaning for a batch system, and what to use instead.
_NOT_FOR = {
    ("htcondor", "partition"): "HTCondor has no partitions: choose machines with a requirements directive, "
                               "e.g. job_extra_directives={'requirements': '(CUDACapability >= 8.0)'}",
    ("htcondor", "queue"): "HTCondor has no queues: choose machines with a requirements directive, "
                           "e.g. job_extra_directives={'requirements': '(CUDACapability >= 8.0)'}",
    ("slurm", "disk"): "SLURM jobs request no disk: ask for node-local scratch with the directive your site "
                       "documents, e.g. job_extra_directives=['--tmp=10G']",
}
DEFAULT_CORES = 1
DEFAULT_MEMORY = "4GB"
DEFAULT_DISK = "1GB"
JOB_LOGS_DIR = SWEEP_JOB_LOGS_DIR  # under the sweep directory: the jobs' output and error files
JOB_NAME = "thesis-lib-sweep"  # what squeue / condor_q show
SUBMIT_WAIT_S = 120.0  # how long the sweep waits for sbatch / condor_submit to answer before it goes on
_WALLTIME = re.compile(r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                       r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$")


def options_for(executor: str) -> tuple[str, ...]:
    """The option names that mean something for this batch executor."""
    return tuple(name for name, (kinds, _) in BATCH_OPTIONS.items() if executor in kinds)


def misfit_reason(executor: str, name: str) -> str:
    """' (why ...)': why option `name` has no meaning for `executor` and what to use instead, or '' when
    there is nothing to add."""
    why = _NOT_FOR.get((executor, name))
    return f" ({why})" if why else ""


def check_options(executor: str, options: Mapping[str, Any] | None) -> dict:
    """The options checked and in one spelling (`queue` becomes `partition`); plain data, for sweep.yaml.

    Raises:
        ConfigError: an executor that is not a batch one, options that are not a mapping, an unknown
            name (with the closest allowed one), an option this batch system has no use for, or a
            value of the wrong kind; each message names the option, the value and what is allowed.
    """
    if executor not in BATCH_EXECUTORS:
        raise ConfigError(f"executor={executor!r} is not a batch system; executor options apply to "
                          f"{' and '.join(map(repr, BATCH_EXECUTORS))}")
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"executor_options={options!r}: expected a mapping of option names to values "
                          f"({', '.join(options_for(executor))})")
    allowed = options_for(executor)
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name not in BATCH_OPTIONS:
            hint = did_you_mean(name, allowed)
            raise ConfigError(f"executor option {name!r} is not known" + (f" (did you mean {hint!r}?)" if hint else "")
                              + f"; allowed for executor={executor!r}: {', '.join(allowed)}")
        if name not in allowed:
            raise ConfigError(f"executor option {name!r} has no meaning for executor={executor!r}"
                              f"{misfit_reason(executor, name)}; allowed: {', '.join(allowed)}")
        if value is None:
            continue  # unset: dask-jobqueue's configuration, or the default
        checked[name] = _check_value(executor, name, value)
    if "queue" in checked:
        if "partition" in checked and checked["partition"] != checked["queue"]:
            raise ConfigError(f"executor options partition={checked['partition']!r} and queue={checked['queue']!r} "
                              "name the same thing (the SLURM partition): give one of them")
        checked["partition"] = checked.pop("queue")
    return {name: checked[name] for name in BATCH_OPTIONS if name in checked}


def _check_value(executor: str, name: str, value: Any) -> Any:
    where = f"executor option {name}={value!r}"
    if name in ("cores", "max_jobs", "gpus"):
        least = 0 if name == "gpus" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{where}: expected an integer >= {least}")
        return value
    if name in ("memory", "disk"):
        _bytes(where, value)
        return value
    if name == "walltime":
        if not isinstance(value, str) or _walltime_seconds(value) is None:
            raise ConfigError(f"{where}: expected a time limit in SLURM's format: 'minutes', 'HH:MM:SS' or "
                              "'D-HH:MM:SS', e.g. '04:00:00' or '1-00:00:00'")
        return value
    if name == "job_extra_directives":
        return _check_directives(executor, where, value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string")
    return value


def _bytes(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"{where}: expected a size such as '16GB' or '500MB' (or a number of bytes)")
    if isinstance(value, int):
        number = value
    else:
        from dask.utils import (
            parse_bytes,  # dask comes with dask-jobqueue, checked before any value
        )

        try:
            number = parse_bytes(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a size such as '16GB' or '500MB'") from None
    if number <= 0:
        raise ConfigError(f"{where}: expected a size above 0, such as '16GB'")
    return number


def _check_directives(executor: str, where: str, value: Any) -> Any:
    if executor == "slurm":
        if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of sbatch options, e.g. ['--constraint=a100', '--qos=long']")
        for directive in value:
            if directive.lstrip().startswith("#SBATCH"):
                raise ConfigError(f"{where}: give {directive!r} without '#SBATCH' (dask-jobqueue writes it), "
                                  "e.g. '--constraint=a100'")
        return list(value)
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and k for k in value):
        raise ConfigError(f"{where}: expected a mapping of HTCondor submit commands to values, "
                          "e.g. {'requirements': '(CUDACapability >= 8.0)', '+WantGPULab': 'true'}")
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ConfigError(f"{where}: the value of {key!r} is {item!r}; expected a string or a number")
    return dict(value)


def _walltime_seconds(text: str) -> int | None:
    """Seconds of a SLURM time limit ('M', 'M:S', 'H:M:S', 'D-H', 'D-H:M', 'D-H:M:S'), None if it is not one."""
    match = _WALLTIME.match(text.strip())
    if match is None:
        return None
    part = {k: int(v) if v is not None else None for k, v in match.groupdict().items()}
    if part["days"] is not None:
        return part["days"] * 86400 + part["dh"] * 3600 + (part["dm"] or 0) * 60 + (part["ds"] or 0)
    if part["c"] is not None:
        return part["a"] * 3600 + part["b"] * 60 + part["c"]
    if part["b"] is not None:
        return part["a"] * 60 + part["b"]
    return part["a"] * 60


def require_jobqueue(executor: str) -> None:
    """ConfigError, with the install command, when dask-jobqueue is missing (it is not imported here)."""
    if importlib.util.find_spec("dask_jobqueue") is None:
        raise ConfigError(f"executor={executor!r} submits the points as {_LABEL[executor]} jobs through dask-jobqueue, "
                          "which is not installed: pip install 'thesis-lib[hpc]' (or: pip install dask-jobqueue)")


def require_submit_command(executor: str) -> None:
    """ConfigError when this machine cannot submit jobs (no `sbatch` / `condor_submit` on PATH)."""
    command = _SUBMIT[executor]
    if shutil.which(command) is None:
        raise ConfigError(f"executor={executor!r} submits jobs with {command}, which is not on PATH: run the sweep "
                          f"where {_LABEL[executor]} jobs are submitted (a login node, or inside a job)")


def job_arguments(executor: str, options: Mapping[str, Any], *, log_directory: str | None = None
                  ) -> tuple[dict, dict]:
    """(keyword arguments of the dask-jobqueue job, the scheduler's options) for checked `options`.

    `log_directory` is the default for the option of that name (the sweep's job_logs directory).
    """
    import dask

    def configured(key: str) -> Any:
        return dask.config.get(f"jobqueue.{executor}.{key}", None)

    cores = options.get("cores") or configured("cores") or DEFAULT_CORES
    # Dask's nanny starts its worker with OMP/MKL/OpenBLAS threads set to 1 (distributed.nanny.pre-spawn-environ):
    # torch would train on one core of the job's `cores`. Set them to the job's cores instead.
    threads = {name: cores for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    kwargs: dict[str, Any] = {
        # One worker with one thread per job: a job runs one point at a time, and the point gets the whole job.
        "cores": 1,
        "processes": 1,
        "memory": options.get("memory") or configured("memory") or DEFAULT_MEMORY,
        "python": options.get("python") or sys.executable,
        "job_name": JOB_NAME,
        "job_script_prologue": [*(configured("job-script-prologue") or []),
                                f'export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="{threads!r}"'],
    }
    if options.get("local_directory"):
        kwargs["local_directory"] = options["local_directory"]
    logs = options.get("log_directory") or log_directory
    if logs:
        kwargs["log_directory"] = str(logs)
    gpus = options.get("gpus") or 0
    if executor == "slurm":
        kwargs["job_cpu"] = cores  # the job's CPUs; the worker still runs one thread (cores=1 above)
        if options.get("partition"):
            kwargs["queue"] = options["partition"]
        if options.get("account"):
            kwargs["account"] = options["account"]
        if options.get("walltime"):
            kwargs["walltime"] = options["walltime"]
        directives = [*(configured("job-extra-directives") or []), *options.get("job_extra_directives", [])]
        if gpus:
            directives.append(f"--gres=gpu:{gpus}")
        kwargs["job_extra_directives"] = directives
    else:
        kwargs["disk"] = options.get("disk") or configured("disk") or DEFAULT_DISK
        # Same key as dask-jobqueue's header, so it replaces its RequestCpus (the worker's one thread).
        directives = {**(configured("job-extra-directives") or {}), "RequestCpus": cores}
        if gpus:
            directives["request_gpus"] = gpus
        if options.get("account"):
            directives["accounting_group"] = options["account"]
        if options.get("walltime"):
            directives["allowed_execute_duration"] = _walltime_seconds(options["walltime"])
        directives.update(options.get("job_extra_directives", {}))
        kwargs["job_extra_directives"] = directives
    scheduler = {"host": options["scheduler_host"]} if options.get("scheduler_host") else {}
    return kwargs, scheduler


def _job_class(executor: str) -> type:
    if executor == "slurm":
        from dask_jobqueue.slurm import SLURMJob

        return SLURMJob
    from dask_jobqueue.htcondor import HTCondorJob

    return HTCondorJob


def job_script(executor: str, options: Mapping[str, Any] | None = None) -> str:
    """The script of one worker job for these options, as dask-jobqueue writes it; submits nothing.

    The scheduler's address is a placeholder (`tcp://<scheduler host>:<port>`: the sweep's scheduler
    takes a free port when it starts), and without a `log_directory` option the script has none of the
    output lines the sweep adds (the default, <sweep directory>/job_logs, exists only once the sweep
    does). dask-jobqueue creates a given `log_directory` that is missing, as it would for the sweep.

    Raises:
        ConfigError: as `check_options`, or dask-jobqueue missing.
    """
    checked = check_options(executor, options)
    require_jobqueue(executor)
    kwargs, scheduler = job_arguments(executor, checked)
    host = scheduler.get("host", "<scheduler host>")
    job = _job_class(executor)(scheduler=f"tcp://{host}:<port>", name=f"{_CLUSTER_NAME[executor]}-0", **kwargs)
    return job.job_script()


def _reporting_job_class(executor: str) -> type:
    """dask-jobqueue's job class, recording what the batch system answered to each submission.

    dask-jobqueue submits from a callback on its event loop: a refused `sbatch` is only logged, the
    job stays "created" forever (the sweep would wait for a worker that never comes) and closing the
    cluster then fails on it. This subclass keeps each answer (`answers`: a job id, or the exception)
    and marks a refused job failed, which the cluster's close accepts.
    """
    base = _job_class(executor)

    class ReportingJob(base):  # type: ignore[misc, valid-type]
        answers: ClassVar[list] = []

        async def start(self):
            try:
                await super().start()
            except Exception as exc:
                from distributed.core import Status

                self.status = Status.failed
                type(self).answers.append(exc)
                raise
            type(self).answers.append(self.job_id)

    ReportingJob.answers = []  # one list per executor
    ReportingJob.__name__ = ReportingJob.__qualname__ = f"Reporting{base.__name__}"
    return ReportingJob


class BatchJobExecutor(DaskExecutor):
    """Points as Dask tasks on workers that SLURM or HTCondor jobs start (dask-jobqueue), one point per job at a time.

    Args:
        executor: "slurm" or "htcondor".
        options: the executor options (`check_options` checks them again).
        points: how many points the sweep will run: the default number of jobs, and the progress line's
            count of points running at once.
        sweep_dir: the sweep's directory: the jobs' output and error files go to its job_logs/ unless
            the `log_directory` option says otherwise.
    """

    def __init__(self, executor: str, options: Mapping[str, Any] | None = None, *, points: int | None = None,
                 sweep_dir: Path | None = None):
        self.name = executor
        self.options = check_options(executor, options)
        require_jobqueue(executor)
        require_submit_command(executor)
        import dask
        from dask_jobqueue import HTCondorCluster, SLURMCluster
        from distributed import Client

        logs = Path(sweep_dir) / JOB_LOGS_DIR if sweep_dir is not None else None
        kwargs, scheduler = job_arguments(executor, self.options, log_directory=str(logs) if logs else None)
        self._job_cls = _reporting_job_class(executor)
        cluster_cls = SLURMCluster if executor == "slurm" else HTCondorCluster
        # The scheduler (started here, in this process) hands a one-thread worker ceil(1.1 x 1) = 2 points by
        # default: the job that starts first would queue a second point while another job sits idle.
        with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
            cluster = cluster_cls(job_cls=self._job_cls, scheduler_options=scheduler, **kwargs)
        try:
            super().__init__(client=Client(cluster))
        except BaseException:
            cluster.close()
            raise
        self._cluster, self._owns_client = cluster, True  # DaskExecutor.close closes both
        self.max_jobs = self.options.get("max_jobs")
        self.jobs = 0  # submitted so far
        self.workers = max(min(points or 1, self.max_jobs or points or 1), 1)

    def run(self, tasks: Sequence[PointTask]):
        """Submit the jobs the tasks need (never fewer than before), then run the tasks on their workers."""
        wanted = min(len(tasks), self.max_jobs or len(tasks))
        if wanted > self.jobs:
            self._cluster.scale(jobs=wanted)
            self._wait_for_answers(wanted - self.jobs)
            self.jobs = wanted
        yield from super().run(tasks)

    def _wait_for_answers(self, count: int) -> None:
        """Wait until the batch system answered `count` more submissions; ConfigError if it refused them all."""
        answers = self._job_cls.answers
        start, deadline = len(answers), time.monotonic() + SUBMIT_WAIT_S
        while len(answers) - start < count and time.monotonic() < deadline:
            time.sleep(0.05)
        new = answers[start:]
        accepted = [a for a in new if not isinstance(a, BaseException)]
        refused = [a for a in new if isinstance(a, BaseException)]
        label, command = _LABEL[self.name], _SUBMIT[self.name]
        if refused and not accepted:
            raise ConfigError(f"{label} refused the sweep's worker jobs ({command}): {_submit_error(refused[0])}; "
                              f"check the executor options {self.options} (thesis-lib sweep --dry-run prints the "
                              "job script)")
        if refused:
            print(f"[sweep] {label} took {len(accepted)} of {len(new)} worker jobs; refused: "
                  f"{_submit_error(refused[0])}", flush=True)
        elif len(new) < count:
            print(f"[sweep] {command} answered {len(new)} of {count} submissions in {SUBMIT_WAIT_S:.0f} s; "
                  "going on (more jobs may still arrive)", flush=True)
        if accepted:
            print(f"[sweep] submitted {len(accepted)} {label} worker job(s): {', '.join(map(str, accepted))}; "
                  "the points start as the jobs do", flush=True)


def _submit_error(exc: BaseException) -> str:
    """The batch system's own words from dask-jobqueue's RuntimeError (its stderr part), else the error."""
    text = str(exc)
    _, found, stderr = text.partition("stderr:\n")
    return " ".join((stderr if found else text).split()) or f"{type(exc).__name__}"


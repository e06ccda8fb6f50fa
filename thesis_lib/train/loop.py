"""`fit(config) -> RunResult`: the one training loop, from config to a complete run directory.

This module decides what surrounds a run: the resolved config, the process's place under
torchrun, resuming, the run directory and where printed output goes. The run itself is
`TrainingRun` (run.py). The loop knows nothing of reports: a caller that wants one when the run
ends passes `finish` (`thesis_lib.workflow.train` passes the run report's renderer).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

from ..config import AUTO_RESUME, Config, flatten_dict, load_config
from ..errors import CheckpointError, ConfigError, RunLockedError
from ..devices import resolve_device
from ..layout import STDOUT_LOG, WRITER_LOCK, create_run_dir
from ..run_lock import hold_run_lock
from .checkpoint import load_checkpoint, resolve_last_checkpoint
from .distributed import DistributedContext
from .output_capture import capture_output, silence_output
from .run import RunResult, TrainingRun

__all__ = ["fit"]

# Config sections a resumed run must share with the run it continues; epochs, patience and
# logging may change (that is what resuming is for).
_RESUME_MUST_MATCH = ("data", "model", "optim", "trainer.seed", "trainer.precision", "trainer.grad_accum_steps")


def fit(
    config: Union[Config, Mapping, str, Path, None] = None,
    overrides: Union[Sequence[str], Mapping, None] = None,
    *,
    dashboard: Union[str, object, None] = "auto",
    finish: Optional[Callable[[Path], None]] = None,
    resolve_resume: Optional[Callable[[Config], object]] = None,
) -> RunResult:
    """Train a model and leave a complete run directory at `<output_root>/runs/<run_id>/`.

    Args:
        config: a Config, a nested dict, a YAML path, or None for the defaults.
        overrides: dotted `key=value` strings or a dict applied on top of `config`.
        dashboard: "auto" (a widget in Jupyter, full screen on a terminal, else one line per
            epoch), "widget", "terminal", "text", None, or a Dashboard object. Its Stop ends the
            run STOPPED (reason "stopped_by_user") with checkpoints and facts intact.
        finish: called with the run directory once it is complete, however the run ended
            (FAILED too, before its error is re-raised): on rank 0 only, after the dashboard is
            closed and before the final summary line, inside the run's output capture (what it
            prints lands in logs/stdout.log). `report.enabled` is not looked at: the caller
            decides. An exception from it is recorded (on_incident, part "report" for a
            ReportError, else "finish") and printed, never raised: the run has ended.
        resolve_resume: what `trainer.resume_from="auto"` needs: called with the resolved config
            on rank 0, it returns an object with `run_dir` (the run to resume, or None: a new run)
            and `lines` (printed into the run's log). `thesis_lib.train` (workflow) passes
            `thesis_lib.facts.find_run_to_resume`, which reads the runs under output_root (a layer
            above this loop); without it "auto" is a ConfigError.

    Returns:
        RunResult with the run directory, final status (COMPLETED, STOPPED or FAILED), best
        epoch and validation loss, and the test metrics of the best weights.

    SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 stop the run after its current step: last.pt, model.pt
    and on_train_end STOPPED with stop_reason "signal: SIGTERM" (and RunResult.stop_signal);
    a second signal stops it at once, and none can interrupt the writing of its ending. Off the
    main thread see `thesis_lib.train.signals.install_stop_handlers`.

    Started by `torchrun --nproc_per_node=N` (WORLD_SIZE > 1 in the environment), every process
    trains its shard of each batch under DistributedDataParallel (`data.batch_size` is per
    process) and rank 0 alone writes the run directory and calls `finish`; see train/distributed.py.

    Raises:
        ConfigError, DataError, ModelError, CheckpointError: bad input, before anything is written;
            a ConfigError for trainer.resume_from="auto" without `resolve_resume`.
        RunLockedError: another live process writes the run to resume (thesis_lib.run_lock); the
            message names it (pid, host, start, job, what it does). Nothing was read or written.
        Any unexpected exception during training is recorded (on_exception, status FAILED,
        checkpoints kept) and then re-raised. A NaN/inf loss does not raise: the run ends FAILED.
    """
    cfg = load_config(config, overrides)
    if cfg.trainer.resume_from == AUTO_RESUME and resolve_resume is None:
        raise ConfigError(
            'trainer.resume_from="auto" is resolved by thesis_lib.train (or `thesis-lib train`), which finds the '
            "run to resume under output_root; fit() itself takes a run directory or its last.pt "
            "(or pass resolve_resume=thesis_lib.facts.find_run_to_resume)"
        )
    ddp = DistributedContext.from_env(resolve_device(cfg.trainer.device))
    try:
        auto_lines: list = []
        if cfg.trainer.resume_from == AUTO_RESUME:
            cfg, auto_lines = _resolve_auto_resume(cfg, ddp, resolve_resume)
        # The run directory's writer lock (run_lock.py), on rank 0, from the directory's creation
        # or the resume until fit returns, `finish` included: a second process resuming the same
        # run is refused before it has read the checkpoint or written anything.
        with contextlib.ExitStack() as held:
            resume_state, notes = None, []
            if cfg.trainer.resume_from:
                last_path = resolve_last_checkpoint(cfg.trainer.resume_from)
                notes = _hold_writer_lock(held, ddp, last_path.parent, "resuming training (fit)")
                resume_state = load_checkpoint(last_path)
                _check_resume_compatible(cfg, resume_state, last_path)
            run = TrainingRun(cfg, resume_state, ddp)
            run.setup()
            if resume_state is not None:
                run_dir, run_id = last_path.parent, resume_state["run_id"]
            else:
                run_dir, run_id = ddp.broadcast(create_run_dir(cfg.output_root, cfg.run_name) if ddp.is_main else None)
                notes = _hold_writer_lock(held, ddp, run_dir, "training (fit)")
            if not ddp.is_main:
                with silence_output() as capture:
                    result = run.execute(run_dir, run_id, capture, None)
            else:
                with capture_output(run_dir / STDOUT_LOG) as capture:
                    for line in auto_lines:  # which run "auto" chose, and why: on the console and in the run's log
                        print(f"[{run_id}] {line}")
                    for note in notes:  # a stale lock taken over: said in the run's log, recorded in its facts
                        print(f"[{run_id}] run lock: {note}")
                        capture.incidents.append({"part": "lock", "message": note,
                                                  "path": str(run_dir / WRITER_LOCK)})
                    result = run.execute(run_dir, run_id, capture, dashboard, finish)
            # Under torchrun the ranks leave the process group together: a rank that tore gloo down
            # while rank 0 still wrote its ending (model_info, figures, the report) could abort
            # ("terminate called without an active exception") at exit.
            ddp.barrier()
            return result
    finally:
        ddp.close()


def _resolve_auto_resume(cfg: Config, ddp: DistributedContext, resolve: Callable[[Config], object]) -> tuple:
    """trainer.resume_from="auto" -> the run directory `resolve` finds (or None: a new run), decided on rank 0
    and broadcast, so that every rank continues the same run. Returns (config, lines to print)."""
    answer = None
    if ddp.is_main:
        try:
            found = resolve(cfg)
            run_dir = getattr(found, "run_dir", None)
            answer = (str(run_dir) if run_dir is not None else None, [str(x) for x in getattr(found, "lines", ())], None)
        except Exception as exc:  # noqa: BLE001 - raised on every rank below, none waits in a collective
            if not ddp.enabled:
                raise
            answer = (None, [], exc)
    run_dir, lines, error = ddp.broadcast(answer) if ddp.enabled else answer
    if error is not None:
        raise error
    return load_config(cfg, {"trainer.resume_from": run_dir}), lines


def _hold_writer_lock(held: contextlib.ExitStack, ddp: DistributedContext, run_dir: Path, purpose: str) -> list:
    """Rank 0 takes the run's writer lock into `held`; a refusal is raised on every rank. Returns the takeover notes."""
    refusal, notes = None, []
    if ddp.is_main:
        try:
            notes = held.enter_context(hold_run_lock(run_dir, purpose)).notes
        except RunLockedError as exc:
            if not ddp.enabled:
                raise
            refusal = str(exc)
    refusal = ddp.broadcast(refusal) if ddp.enabled else refusal
    if refusal is not None:  # under torchrun: every rank stops, none waits in a collective
        raise RunLockedError(refusal)
    return notes


def _check_resume_compatible(cfg: Config, state: Mapping, path: Path) -> None:
    now = flatten_dict(cfg.to_dict())
    try:
        # Resolved again, so keys a newer thesis-lib added take their defaults instead of reading
        # as changes (a run from before model.diffusion existed still resumes).
        then = flatten_dict(load_config(state["config"]).to_dict())
    except ConfigError:
        then = flatten_dict(state["config"])
    differing = sorted(
        key
        for key in set(now) | set(then)
        if any(key == p or key.startswith(p + ".") for p in _RESUME_MUST_MATCH) and now.get(key) != then.get(key)
    )
    if differing:
        details = ", ".join(f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in differing)
        raise CheckpointError(f"cannot resume from {path}: the config differs from the run's in {details}")



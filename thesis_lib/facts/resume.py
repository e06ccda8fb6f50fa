"""`trainer.resume_from="auto"`: which run under `output_root` an invocation continues, or none.

A batch job that is requeued (SLURM `--requeue`, a preempted HTCondor slot) or a user who runs
the same command again after a crash re-executes the same command line. With
`trainer.resume_from=auto` that invocation finds the run the earlier one left and continues it:

- the candidates are the run directories under `<output_root>/runs/` whose config.yaml has the
  same `run_name` and the same **resume hash** (`resume_config_hash`);
- they are read newest first (by their latest `on_start`); the first one that is *unfinished*,
  CRASHED (no end event, its process gone) or STOPPED by a signal (`stop_reason` "signal: ..."),
  is resumed, if it has its `last.pt`;
- FAILED runs are skipped and listed (the same command would fail the same way: fix the cause and
  pass the directory explicitly); a run without `last.pt` (it ended before its first epoch was
  saved) is skipped and listed;
- a *finished* run, COMPLETED or STOPPED otherwise (early stopping, the dashboard's Stop), ends
  the search: that config's latest run is done, older unfinished runs are superseded, and a new
  run starts;
- an unfinished run whose writer lock (`run_lock.py`) a live process holds is not resumed and not
  passed by: `RunLockedError` with the lock's own message (the run is being written; starting a
  second run of the same config beside it would be the duplicate `auto` exists to avoid). A
  RUNNING status (a live pid on this host, or on another host facts written in the last 5
  minutes) whose lock is free or taken as gone by the lock's rules (its holder's process gone, its
  batch job requeued, no heartbeat for 10 minutes) counts as unfinished: the lock is the authority
  on whether a process still writes the run.

The resume hash is `record.schema.config_hash` of the resolved config without the keys a
re-invocation may legitimately change (`RESUME_HASH_EXCLUDES`): `trainer.resume_from` ("auto"
now; None, "auto" or a directory when the run was started or resumed), `output_root` (the
candidates are under it by construction, however it is spelled: relative, absolute, a moved
folder) and `run_name` (matched on its own). These are the sweep's owned keys too, so a point's
`point_config_hash` and this hash agree. Both configs are resolved through `load_config` first,
so a key a newer thesis-lib added takes its default on both sides and does not read as a
change. Everything else counts, `trainer.epochs`, `logging`, `telemetry` and `report` included: a
requeue repeats the command, and a changed config is a new run (continue a run under a changed
config by passing its directory, which `fit` checks against the data, model and optim sections).

This module reads runs (facts, layer 9) and is called by `thesis_lib.train` (workflow) through
`fit(..., resolve_resume=find_run_to_resume)`, so the loop (layer 8) does not import it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..config import AUTO_RESUME, Config, load_config
from ..errors import ConfigError, FactsError, RunLockedError
from ..layout import CONFIG_FILE, LAST_CHECKPOINT, RUNS_DIR, sanitize_run_name
from ..record.schema import config_hash
from ..run_lock import run_lock_refusal
from .reader import read_config, read_events
from .status import run_status

__all__ = ["AutoResume", "find_run_to_resume", "resume_config_hash", "RESUME_HASH_EXCLUDES", "AUTO_RESUME"]

RESUME_HASH_EXCLUDES = ("output_root", "run_name", "trainer.resume_from")
_REASON_CHARS = 160


@dataclasses.dataclass(frozen=True)
class AutoResume:
    """What `find_run_to_resume` decided.

    Attributes:
        run_dir: the run to resume, or None: start a new run.
        lines: what to tell the user, one line each: the decision and why, then each run passed by.
        config_hash: the resume hash that was matched.
    """

    run_dir: Optional[Path]
    lines: tuple
    config_hash: str


def resume_config_hash(config: Union[Config, Mapping[str, Any]]) -> str:
    """The hash `auto` matches: the resolved config without `RESUME_HASH_EXCLUDES` (see the module docstring).

    A mapping is resolved through `load_config` first (defaults for keys it lacks); one that no
    longer resolves (a key this thesis-lib removed) is hashed as it is, and so matches nothing.
    """
    if isinstance(config, Config):
        resolved = config.to_dict()
    else:
        try:
            resolved = load_config(dict(config)).to_dict()
        except ConfigError:
            resolved = copy.deepcopy(dict(config))
    for dotted in RESUME_HASH_EXCLUDES:
        node: Any = resolved
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config_hash(resolved)


def find_run_to_resume(config: Config) -> AutoResume:
    """The unfinished run `config` continues under `trainer.resume_from="auto"`, or None (a new run).

    Args:
        config: the resolved config of this invocation (its `trainer.resume_from` is "auto").

    Returns:
        AutoResume: the run directory (or None) and the lines that say why.

    Raises:
        RunLockedError: the newest unfinished run of this name and hash is being written by a live
            process (the lock's message, prefixed with which run and why it was chosen).
    """
    name, root = config.run_name, Path(config.output_root)
    wanted = resume_config_hash(config)
    what = f"run named {name!r} with config hash {wanted} under {root}"
    candidates, other_hashes, passed = [], 0, []
    runs_root = root / RUNS_DIR
    pattern = f"run_*_{sanitize_run_name(name)}_*"
    for run_dir in sorted(runs_root.glob(pattern)) if runs_root.is_dir() else []:
        if not (run_dir / CONFIG_FILE).is_file():
            continue
        try:
            run_config = read_config(run_dir)
        except (FactsError, OSError) as exc:
            passed.append(f"  {run_dir.name}: config.yaml unreadable ({exc}): not considered")
            continue
        if run_config.get("run_name") != name:
            continue
        if resume_config_hash(run_config) != wanted:
            other_hashes += 1
            continue
        events = read_events(run_dir, bad_lines=[])
        starts = [e for e in events if e.get("moment") == "on_start"]
        if not starts:
            passed.append(f"  {run_dir.name}: never started (no on_start event): not resumed")
            continue
        candidates.append((str(starts[-1].get("time") or ""), run_dir.name, run_dir, events, starts[-1]))

    chosen, chosen_why = None, ""
    for _, run_id, run_dir, events, start in sorted(candidates, key=lambda c: (c[0], c[1]), reverse=True):
        status, reason = run_status(events, start, run_dir)
        reason_text = _short(reason)
        if status == "FAILED":
            error = next((e for e in reversed(events) if e.get("moment") == "on_exception"), None)
            if error is not None and error.get("message") and str(error["message"]) not in reason_text:
                reason_text = _short(f"{reason}: {error['message']}")
            passed.append(f"  {run_id} FAILED ({reason_text}): not resumed — fix the cause and pass its "
                          "directory as trainer.resume_from explicitly")
            continue
        if status == "COMPLETED" or (status == "STOPPED" and not str(reason or "").startswith("signal:")):
            passed.append(f"  {run_id} {status}{f' ({reason_text})' if reason else ''}: finished, the newest "
                          "run of this config; older runs are not looked at")
            break
        # Unfinished: CRASHED, STOPPED by a signal, or RUNNING as far as its facts tell.
        refusal = run_lock_refusal(run_dir)
        if refusal is not None:
            raise RunLockedError(f"trainer.resume_from=auto: the newest unfinished {what} is {run_dir} "
                                 f"({status}), and it is not resumed: {refusal}")
        if not (run_dir / LAST_CHECKPOINT).is_file():
            passed.append(f"  {run_id} {status}: no {LAST_CHECKPOINT} (it ended before its first epoch was "
                          "saved): not resumed")
            continue
        if status == "RUNNING":
            reason_text = "no end event, and no live process holds its writer lock"
        chosen, chosen_why = run_dir, f"{status}, {reason_text}"
        break

    if chosen is not None:
        head = f"trainer.resume_from=auto: resuming {chosen} ({chosen_why}), the newest unfinished {what}"
    else:
        others = (f" ({other_hashes} run{'s' if other_hashes != 1 else ''} named {name!r} with another config "
                  "hash not considered)") if other_hashes else ""
        head = f"trainer.resume_from=auto: no unfinished {what}{others}: starting a new run"
    return AutoResume(chosen, (head, *passed), wanted)


def _short(reason: Optional[str]) -> str:
    text = " ".join(str(reason or "").split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"

"""Weights & Biases: a run's records as one W&B run, online or offline (`tracking.wandb_mode`).

The W&B run is named by the thesis-lib run id and has an id derived from it (`wandb_run_id`), so a
crashed first attempt, a resumed run and a later `thesis-lib sync` all continue the same W&B run.
Its config: a few curated keys a dashboard groups by (`encoder`, `bottleneck`, `lr`, `seed`, ...,
see `_CURATED`) beside every key of the flattened config, nested by its dotted name again (W&B shows
`model.encoder`, `optim.betas`, ... and filters and groups by them, which it does not for a flat key
holding a dot: wandb/wandb#3087), so no key is ever lost. Its history, each record on its own x axis
(`define_metric`): `train/*`, `val/*` against `epoch`; `steps/loss`, `steps/lr` against
`optimizer_step`; `telemetry/<column>` against `telemetry_t_s` (seconds since the run's start); each
row's `_timestamp` is the wall time of the fact it came from. Its summary: `test/<metric>`,
`best_epoch`, `status`, `stop_reason`; the status also becomes a tag and the notes. `close` logs
model.pt (and model_info.json) as a `model` artifact and the rendered report as a `report` artifact,
then finishes the run with exit code 0 (COMPLETED, STOPPED) or 1 (FAILED, or no end recorded).

Never a duplicate. `ids()` (kept in tracking.json, after each epoch by the live guard) holds what
was sent: the last epoch of each split, the last optimizer step, the last telemetry `t`, the next
W&B history step, digests of the config, summary and artifacts. Built with them (`previous`), the
mirror continues that W&B run, skips every row at or before the earlier segments' marks (within a
segment every row the facts hold goes, in their order), and opens the W&B run only when something is
new (a sync of a run a live mirror sent whole writes nothing). The history step is passed
explicitly, continuing from the previous segment's: an offline W&B run cannot learn its last step,
and a resumed offline run whose steps restart at 0 would overwrite the first segment's history when
both are uploaded. Offline, each segment is a directory `<wandb_dir>/wandb/offline-run-*-<id>`
(`ids()["dirs"]`): upload them in order with `wandb sync <dir>`; the artifacts' files are copied into
the segment's directory (W&B uploads them from there), so a later model.pt does not change them.

Needs the `wandb` package: `pip install 'thesis-lib[tracking]'`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..layout import MODEL_FILE, MODEL_INFO_FILE, RUN_REPORT_DIR
from .base import (
    Mirror,
    RunInfo,
    epoch_scalars,
    step_scalars,
    telemetry_scalars,
    test_scalars,
    wall_time,
)

__all__ = ["EPOCH_AXIS", "STEP_AXIS", "TELEMETRY_AXIS", "WandbMirror", "curated_config", "nested_config", "wandb_run_id"]

# The x axes: a history row carries its own (W&B's `_step` only counts rows).
EPOCH_AXIS = "epoch"
STEP_AXIS = "optimizer_step"
TELEMETRY_AXIS = "telemetry_t_s"  # outside `telemetry/*`: a glob's step metric must not match the glob
_AXES = {"train/*": EPOCH_AXIS, "val/*": EPOCH_AXIS, "steps/*": STEP_AXIS, "telemetry/*": TELEMETRY_AXIS}

# Curated config: the dashboard's grouping keys (short names, no dot, so none collides with a raw dotted key).
_CURATED = {
    "task": "model.task", "encoder": "model.encoder", "bottleneck": "model.bottleneck", "decoder": "model.decoder",
    "latent_dim": "model.latent_dim", "hidden_dim": "model.hidden_dim", "num_layers": "model.num_layers",
    "optimizer": "optim.name", "lr": "optim.lr", "weight_decay": "optim.weight_decay",
    "scheduler": "optim.scheduler", "batch_size": "data.batch_size", "epochs": "trainer.epochs",
    "seed": "trainer.seed", "precision": "trainer.precision",
}
_EXIT_CODES = {"COMPLETED": 0, "STOPPED": 0, "FAILED": 1}
# The W&B settings of every run: quiet, no console capture, no code, git, pip freeze or machine metadata
# (a sync would describe the syncing machine; env.json has the training one's), and no system-metrics
# sampler (thesis-lib's telemetry is the run's: telemetry/*).
_SETTINGS = {"silent": True, "console": "off", "save_code": False, "disable_code": True, "disable_git": True,
             "disable_job_creation": True, "x_disable_stats": True, "x_disable_meta": True,
             "x_disable_machine_info": True, "x_save_requirements": False,
             "symlink": False}  # no latest-run / debug.log links in <dir>/wandb (a run directory copies plainly)
_ARTIFACT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def wandb_run_id(run_id: str) -> str:
    """The W&B run id of a thesis-lib run: its run id made id-safe, with a digest of it (same run, same id)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", run_id).strip("-")[:48]
    digest = hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


def curated_config(flat: Mapping[str, Any], run: RunInfo | None = None) -> dict:
    """The dashboard keys of a flattened config (those it has), plus `dataset` (the data file's stem) and
    `config_hash`."""
    curated = {name: flat[key] for name, key in _CURATED.items() if key in flat}
    if isinstance(flat.get("data.path"), str) and flat["data.path"]:
        curated["dataset"] = Path(flat["data.path"]).stem
    if run is not None and run.config_hash:
        curated["config_hash"] = run.config_hash
    return curated


def nested_config(flat: Mapping[str, Any]) -> dict:
    """`{dotted.key: value}` as nested sections again (`{"model": {"encoder": ...}}`), values as given."""
    nested: dict = {}
    for key, value in flat.items():
        *sections, leaf = key.split(".")
        node = nested
        for section in sections:
            child = node.get(section)
            if not isinstance(child, dict):
                child = node[section] = {}
            node = child
        node[leaf] = value
    return nested


def _check_online_credentials() -> None:
    """Online, wandb.init looks for credentials and, finding none at a terminal, asks for an API key and waits
    (the run would hang at its start; answering "don't visualize" turns the run offline silently). Look first,
    without asking: no credentials is this tracker's failure, named. Skipped where wandb's internals differ."""
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        settings = wandb_setup.singleton().settings
        host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
        found = wbauth.authenticate_session(host=host, source="thesis-lib", prompt=False, update_session=False)
    except (ImportError, AttributeError, TypeError):
        return  # another wandb version: its own init decides
    if found is None:
        raise RuntimeError(f"W&B online mode has no credentials for {settings.base_url}: run `wandb login` (or set "
                           "WANDB_API_KEY), or set tracking.wandb_mode=offline (then `wandb sync` uploads the run)")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _file_digest(paths: Mapping[str, Path]) -> str:
    digest = hashlib.sha256()
    for name in sorted(paths):
        digest.update(f"\0{name}\0".encode())
        with open(paths[name], "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _as_recorded(path: Path, run_dir: Path) -> str:
    """A path as tracking.json keeps it: relative to the run directory when inside it."""
    try:
        return Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def _fresh_marks() -> dict:
    return {"epochs": {}, "last_step": None, "last_telemetry_t": None, "history_step": 0, "test": False,
            "config_sha256": None, "summary_sha256": None, "artifacts": {}}


class WandbMirror(Mirror):
    """One thesis-lib run as one W&B run (see the module doc).

    Args:
        run_dir: the run directory (W&B's files go to `<wandb_dir or run_dir>/wandb/`).
        run_id: the thesis-lib run id: the W&B run's name, and its id's source.
        settings: the tracking section (`tracking_settings`): wandb_project, wandb_entity, wandb_mode, wandb_dir.
        previous: the run's tracking.json `wandb` entry ({}: none); its run, project, entity, mode and
            directory win over `settings` (the W&B run lives there), and its marks say what it holds.
    """

    name = "wandb"
    resumable = True

    def __init__(self, *, run_dir: Path, run_id: str, settings: dict, previous: dict):
        self.run_dir = Path(run_dir)
        self.thesis_run_id = run_id
        previous = dict(previous or {})
        self.continuing = bool(previous.get("run_id"))
        self.wandb_id = str(previous["run_id"]) if self.continuing else wandb_run_id(run_id)
        self.project = str(previous.get("project") or settings.get("wandb_project") or "thesis-lib")
        self.entity = str(previous.get("entity") or settings.get("wandb_entity") or "")
        self.mode = str(previous.get("mode") or settings.get("wandb_mode") or "offline")
        recorded = previous.get("logdir")
        if recorded:  # the folder W&B made (`<dir>/wandb`): continue beside the earlier segments
            logdir = Path(recorded) if Path(recorded).is_absolute() else self.run_dir / recorded
            self.dir = logdir.parent
        else:
            self.dir = Path(settings.get("wandb_dir") or self.run_dir).expanduser()
        self.logdir: Path | None = self.dir / "wandb" if recorded or not self.continuing else None
        self.dirs: list[str] = [str(d) for d in previous.get("dirs") or []]
        self.marks = {**_fresh_marks(), **(previous.get("sent") or {})} if self.continuing else _fresh_marks()
        self.marks["epochs"] = dict(self.marks.get("epochs") or {})
        self.marks["artifacts"] = dict(self.marks.get("artifacts") or {})
        # what the earlier segments sent (skipped); within this one every row the facts hold goes, in order
        self.before = json.loads(json.dumps({k: self.marks[k] for k in ("epochs", "last_step", "last_telemetry_t")}))
        self.run = None
        self.wandb = None
        self.origin: float | None = None
        self.config: dict = {}
        self.notes = ""
        self.summary: dict = {}
        self.status: str | None = None
        self.stop_reason: str | None = None
        self._step = int(self.marks.get("history_step") or 0)
        self._hooks: tuple | None = None

    # --- the W&B run ------------------------------------------------------------------------------

    def _open(self) -> None:
        """Start (or continue) the W&B run; idempotent."""
        if self.run is not None:
            return
        wandb = self.wandb
        known = getattr(wandb.Settings, "model_fields", None)
        settings = {k: v for k, v in _SETTINGS.items() if known is None or k in known}
        if self.mode == "online":
            _check_online_credentials()
        before = (sys.exit, sys.excepthook)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, entity=self.entity or None, mode=self.mode, dir=str(self.dir),
                              id=self.wandb_id, name=self.thesis_run_id, resume="allow", config=self.config,
                              tags=["thesis-lib"], notes=self.notes, reinit="create_new",
                              settings=wandb.Settings(**settings))
        self._hooks = (before, (sys.exit, sys.excepthook))
        sync_dir = Path(self.run.settings.sync_dir)
        self.logdir = sync_dir.parent
        recorded = _as_recorded(sync_dir, self.run_dir)
        if recorded not in self.dirs:
            self.dirs.append(recorded)
        if getattr(self.run, "entity", None):
            self.entity = str(self.run.entity)
        # online, a resumed run knows its last step; offline only the marks do
        self._step = max(self._step, int(getattr(self.run, "starting_step", 0) or 0))
        for axis in (EPOCH_AXIS, STEP_AXIS, TELEMETRY_AXIS):
            self.run.define_metric(axis, hidden=True)
        for glob, axis in _AXES.items():
            self.run.define_metric(glob, step_metric=axis)
        self.marks["config_sha256"] = _digest(self.config)

    def _restore_hooks(self) -> None:
        """wandb.init replaces sys.exit and sys.excepthook for the run's exit code and keeps them after finish;
        put back what was there when they are still the ones this run installed (sweeps: no chain of hooks)."""
        if self._hooks is None:
            return
        (exit_before, hook_before), (exit_wandb, hook_wandb) = self._hooks
        if sys.exit == exit_wandb:
            sys.exit = exit_before
        if sys.excepthook == hook_wandb:
            sys.excepthook = hook_before
        self._hooks = None

    def _walltime(self, t: Any) -> float | None:
        return wall_time(self.origin, t)

    def _log(self, row: dict, t: Any) -> None:
        """One history row at the next W&B step (explicit: it continues across segments, offline too)."""
        self._open()
        walltime = self._walltime(t)
        if walltime is not None:
            row["_timestamp"] = walltime
        self.run.log(row, step=self._step, commit=True)
        self._step += 1
        self.marks["history_step"] = self._step

    # --- Mirror -----------------------------------------------------------------------------------

    def start(self, config: Mapping[str, Any], run: RunInfo) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError(f"{exc}; the W&B mirror needs the wandb package: pip install 'thesis-lib[tracking]'") from exc

        self.wandb = wandb
        self.origin = run.origin
        self.config = {**curated_config(config, run), **nested_config(config)}
        self.notes = f"thesis-lib run {run.run_id} in {run.run_dir}"
        if not self.continuing or _digest(self.config) != self.marks.get("config_sha256"):
            self._open()  # a first segment opens at once (a tracker that cannot start fails the guard's start)

    def _sent_before(self, mark: Any, value: float) -> bool:
        """At or before an earlier segment's mark: that segment sent it (rows are in facts order)."""
        return mark is not None and value <= float(mark)

    @staticmethod
    def _advance(marks: dict, name: str, value: float) -> None:
        if marks.get(name) is None or value > float(marks[name]):
            marks[name] = value

    def epoch(self, row: Mapping[str, Any]) -> None:
        split, epoch = str(row["split"]), int(row["epoch"])
        if self._sent_before(self.before["epochs"].get(split), epoch):
            return
        scalars = dict(epoch_scalars(row))
        if scalars:
            self._log({EPOCH_AXIS: epoch, **scalars}, row.get("t"))
        self._advance(self.marks["epochs"], split, epoch)

    def sync_point(self, row: Mapping[str, Any]) -> None:
        step = int(row["step"])
        if self._sent_before(self.before["last_step"], step):
            return
        scalars = dict(step_scalars(row))
        if scalars:
            self._log({STEP_AXIS: step, **scalars}, row.get("t"))
        self._advance(self.marks, "last_step", step)

    def telemetry(self, row: Mapping[str, Any]) -> None:
        t = float(row["t"])
        if self._sent_before(self.before["last_telemetry_t"], t):
            return
        scalars = dict(telemetry_scalars(row))
        if scalars:
            self._log({TELEMETRY_AXIS: t, **scalars}, t)
        self._advance(self.marks, "last_telemetry_t", t)

    def test(self, metrics: Mapping[str, Any], epoch: int | None) -> None:
        self.summary.update(test_scalars(metrics))
        if epoch is not None:
            self.summary["best_epoch"] = int(epoch)

    def end(self, status: str, stop_reason: str) -> None:
        self.status, self.stop_reason = str(status), str(stop_reason)
        self.summary.update(status=self.status, stop_reason=self.stop_reason)

    def _artifacts(self, artifacts: Mapping[str, Path]) -> dict[str, dict[str, Path]]:
        """The files by artifact type: model (model.pt, model_info.json), report (report/...)."""
        groups: dict[str, dict[str, Path]] = {"model": {}, "report": {}}
        for name, path in artifacts.items():
            if name in (MODEL_FILE, MODEL_INFO_FILE):
                groups["model"][name] = Path(path)
            elif name.startswith(f"{RUN_REPORT_DIR}/"):
                groups["report"][name] = Path(path)
        return {kind: files for kind, files in groups.items() if files}

    def _log_artifact(self, kind: str, files: dict[str, Path], digest: str) -> None:
        wandb = self.wandb
        artifact = wandb.Artifact(_ARTIFACT_NAME.sub("-", f"{kind}-{self.wandb_id}"), type=kind,
                                  metadata={"thesis_lib_run_id": self.thesis_run_id, "sha256": digest,
                                            **{k: self.summary[k] for k in ("best_epoch", "status") if k in self.summary}})
        staged = None
        if self.mode == "offline":  # uploaded by a later `wandb sync`: a copy in the segment's directory
            staged = Path(self.run.settings.sync_dir) / "artifacts" / kind
        for name, path in files.items():
            source = path
            if staged is not None:
                source = staged / name
                source.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, source)
            artifact.add_file(str(source), name=name, policy="immutable")
        self.run.log_artifact(artifact)
        self.marks["artifacts"][kind] = digest

    def close(self, artifacts: Mapping[str, Path]) -> None:
        try:
            groups = {kind: (files, _file_digest(files)) for kind, files in self._artifacts(artifacts).items()}
            new_artifacts = {k: v for k, v in groups.items() if self.marks["artifacts"].get(k) != v[1]}
            summary_digest = _digest(self.summary) if self.summary else None
            if self.run is None and self.wandb is not None and (
                    new_artifacts or (summary_digest and summary_digest != self.marks.get("summary_sha256"))):
                self._open()
            if self.run is None:
                return  # nothing new (a sync of what the W&B run holds), or never started
            if self.summary:
                self.run.summary.update(self.summary)
                self.marks["summary_sha256"] = summary_digest
                self.marks["test"] = self.marks["test"] or any(k.startswith("test/") for k in self.summary)
            if self.status is not None:
                self.run.tags = tuple(dict.fromkeys([*self.run.tags, self.status.lower()]))
                self.run.notes = f"{self.notes}: {self.status} ({self.stop_reason})"
            for kind, (files, digest) in new_artifacts.items():
                self._log_artifact(kind, files, digest)
            self.run.finish(exit_code=_EXIT_CODES.get(self.status or "", 1))
        finally:
            if self.run is not None:  # a failure above, or the guard switching this mirror off: still end it
                with contextlib.suppress(Exception):  # (a no-op when ended); the first error is the one reported
                    self.run.finish(exit_code=1)
            self.run = None
            self._restore_hooks()

    def ids(self) -> dict:
        return {"run_id": self.wandb_id, "project": self.project, "entity": self.entity, "mode": self.mode,
                "logdir": None if self.logdir is None else str(self.logdir), "dirs": list(self.dirs),
                "sent": json.loads(json.dumps(self.marks))}

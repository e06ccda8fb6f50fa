"""TensorBoard: a run's records as event files, through `torch.utils.tensorboard.SummaryWriter`.

Scalars are named as in `thesis_lib.tracking.base` (`train/loss` at each epoch, `steps/loss` at
each optimizer step of a sync point, `telemetry/<column>`, `test/<metric>`), each with the wall time
of the fact it came from (the run's origin + its `t`). Texts: `run` (run id, directory, config hash),
`config` (the flattened config as a table), `end` (status and stop reason). The flattened config is
also the HPARAMS tab's hyperparameters, in the run's own event file (not the extra sub-run
`SummaryWriter.add_hparams` makes), with `val/loss` and `test/loss` as its metrics and the run's status as
the session's. Artifacts (model.pt, the report) are not a TensorBoard concept: `close` ignores them.

Needs the `tensorboard` package: `pip install 'thesis-lib[tracking]'`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Optional

from .base import (Mirror, RunInfo, epoch_scalars, step_scalars, telemetry_scalars, telemetry_step, test_scalars,
                   wall_time)

__all__ = ["TensorBoardMirror"]

# The HPARAMS tab's metrics: tags this mirror writes.
_HPARAM_METRICS = ("val/loss", "test/loss")
# thesis-lib's statuses as the hparams plugin's session statuses.
_SESSION_STATUS = {"COMPLETED": "STATUS_SUCCESS", "STOPPED": "STATUS_ABORTED", "FAILED": "STATUS_FAILURE"}


def _markdown_table(pairs: Mapping[str, Any]) -> str:
    rows = "\n".join(f"| {key} | {str(value).replace('|', '&#124;')} |" for key, value in pairs.items())
    return "| key | value |\n|---|---|\n" + rows


class TensorBoardMirror(Mirror):
    """One run's event files in `logdir` (created by `start`).

    Args:
        logdir: the event-file directory (`tracking.ids.tensorboard_logdir`).
        flush_secs: how often SummaryWriter's thread flushes on its own (the mirror also flushes at each epoch).
    """

    name = "tensorboard"

    def __init__(self, logdir: Path, flush_secs: int = 30):
        self.logdir = Path(logdir)
        self.flush_secs = flush_secs
        self.writer = None
        self.origin: Optional[float] = None

    def _walltime(self, t: Any) -> Optional[float]:
        return wall_time(self.origin, t)

    def start(self, config: Mapping[str, Any], run: RunInfo) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as exc:
            raise ImportError(f"{exc}; the TensorBoard mirror needs the tensorboard package: "
                              "pip install 'thesis-lib[tracking]'") from exc

        self.origin = run.origin
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.logdir), flush_secs=self.flush_secs)
        walltime = run.origin if run.origin is not None else time.time()
        self.writer.add_text("run", _markdown_table(run.as_text()), global_step=0, walltime=walltime)
        self.writer.add_text("config", _markdown_table(config), global_step=0, walltime=walltime)
        experiment, session_start, _ = hparams(dict(config), {name: 0.0 for name in _HPARAM_METRICS})
        for summary in (experiment, session_start):
            self.writer.file_writer.add_summary(summary, None, walltime)
        self.writer.flush()

    def epoch(self, row: Mapping[str, Any]) -> None:
        step, walltime = int(row["epoch"]), self._walltime(row.get("t"))
        for tag, value in epoch_scalars(row):
            self.writer.add_scalar(tag, value, global_step=step, walltime=walltime)
        self.writer.flush()

    def sync_point(self, row: Mapping[str, Any]) -> None:
        step, walltime = int(row["step"]), self._walltime(row.get("t"))
        for tag, value in step_scalars(row):
            self.writer.add_scalar(tag, value, global_step=step, walltime=walltime)

    def telemetry(self, row: Mapping[str, Any]) -> None:
        step, walltime = telemetry_step(row["t"]), self._walltime(row["t"])
        for tag, value in telemetry_scalars(row):
            self.writer.add_scalar(tag, value, global_step=step, walltime=walltime)

    def test(self, metrics: Mapping[str, Any], epoch: Optional[int]) -> None:
        step = int(epoch) if epoch is not None else 0
        for tag, value in test_scalars(metrics):
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def end(self, status: str, stop_reason: str) -> None:
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from torch.utils.tensorboard.summary import Summary, SummaryMetadata

        self.writer.add_text("end", f"status: {status}, stop reason: {stop_reason}", global_step=0)
        session_end = plugin_data_pb2.HParamsPluginData(
            session_end_info=plugin_data_pb2.SessionEndInfo(
                status=api_pb2.Status.Value(_SESSION_STATUS.get(status, "STATUS_UNKNOWN"))),
            version=metadata.PLUGIN_DATA_VERSION)
        summary_metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name=metadata.PLUGIN_NAME, content=session_end.SerializeToString()))
        self.writer.file_writer.add_summary(
            Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=summary_metadata)]))
        self.writer.flush()

    def close(self, artifacts: Mapping[str, Path]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def ids(self) -> dict:
        return {"logdir": str(self.logdir)}

"""One run's report as data: the numbers, tables and findings every section is written from.

`RunReport` holds what `load_run_report` gathered from a run directory (key metrics, the
configuration snapshot, the per-epoch table, telemetry, test metrics or why the test pass was
skipped, the confusion matrix, incidents, findings, the log tail, and what could not be read:
lines the readers skipped, optional files that could not be read, figures that could not be
drawn) plus a few views the layout needs (`shown_epochs`, `confusion_rows`).
It knows nothing of Markdown: the sections are written by the cells of
`report_templates/run_report.ipynb`, and `section` / `to_markdown` run those cells in this
process (`template_exec`), so a section reads the same in report.md, report.html and here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import pandas as pd

from ..errors import ReportError
from .run_metrics import KeyMetrics, TelemetrySummary, gpu_indices
from .template_exec import RUN_REPORT_TEMPLATE, run_template, template_sections

__all__ = ["RunReport", "ConfigSnapshot", "ProfileView", "MAX_EPOCH_ROWS", "PROFILE_OPS_SHOWN"]

MAX_EPOCH_ROWS = 20  # the per-epoch table keeps the first, best and last epochs and a spread between
PROFILE_OPS_SHOWN = 10  # the profile section's table: the top ops of profile/top_ops.csv


@dataclass
class ConfigSnapshot:
    """The settings a reader needs to place the run, taken from config.yaml."""

    task: Any = None
    encoder: Any = None
    bottleneck: Any = None
    decoder: Any = None
    latent_dim: Any = None
    precision: Any = None
    batch_size: Any = None
    grad_accum_steps: Any = None
    lr: Any = None
    optimizer: Any = None
    weight_decay: Any = None
    grad_clip: Any = None
    scheduler: Any = None
    plateau_factor: Any = None
    plateau_patience: Any = None
    epochs: Any = None
    early_stopping_patience: Any = None
    seed: Any = None
    device: Any = None
    data_path: Any = None
    data_loader: Any = None
    num_workers: Any = None
    world_size: int = 1  # processes under torchrun (DDP); data.batch_size is per process

    @property
    def effective_batch(self) -> Optional[int]:
        """Samples per optimiser step: batch size times gradient accumulation times processes."""
        if isinstance(self.batch_size, int) and isinstance(self.grad_accum_steps, int):
            return self.batch_size * self.grad_accum_steps * self.world_size
        return None

    @classmethod
    def from_config(cls, config: Mapping, world_size: int = 1) -> "ConfigSnapshot":
        """Pick the snapshot's settings out of a resolved config dict (missing keys stay None)."""
        model, optim = config.get("model") or {}, config.get("optim") or {}
        trainer, data = config.get("trainer") or {}, config.get("data") or {}
        return cls(
            task=model.get("task"), encoder=model.get("encoder"), bottleneck=model.get("bottleneck"),
            decoder=model.get("decoder"), latent_dim=model.get("latent_dim"), precision=trainer.get("precision"),
            batch_size=data.get("batch_size"), grad_accum_steps=trainer.get("grad_accum_steps"), lr=optim.get("lr"),
            optimizer=optim.get("name"), weight_decay=optim.get("weight_decay"), grad_clip=optim.get("grad_clip"),
            scheduler=optim.get("scheduler"), plateau_factor=optim.get("plateau_factor"),
            plateau_patience=optim.get("plateau_patience"), epochs=trainer.get("epochs"),
            early_stopping_patience=trainer.get("early_stopping_patience"), seed=trainer.get("seed"),
            device=trainer.get("device"), data_path=data.get("path"), data_loader=data.get("loader"),
            num_workers=data.get("num_workers"), world_size=world_size,
        )


@dataclass
class ProfileView:
    """What a profiled run left in profile/ (trainer.profile): profile.json, the top ops, the trace."""

    settings: dict  # config.yaml's trainer.profile
    info: dict  # profile.json: the window, device, torch version, time traced; or {"error": ...}; {} when absent
    top_ops: list  # the first PROFILE_OPS_SHOWN rows of top_ops.csv (dicts of its columns; numbers as float)
    ops_total: int  # rows in top_ops.csv
    trace: Path | None  # profile/trace.json when it exists


@dataclass
class RunReport:
    """A run's report as data; `section(name, images)` renders one section as Markdown through the template."""

    run_dir: Path
    run_id: str
    status: str
    stop_reason: Optional[str]
    started: Optional[str]
    duration_s: Optional[float]
    epochs_completed: int
    steps: Optional[int]
    params_total: Optional[int]
    params_trainable: Optional[int]
    device: Optional[str]
    metrics: KeyMetrics
    config: ConfigSnapshot
    telemetry: TelemetrySummary
    test_metrics: dict
    test_epoch: Optional[int]
    confusion: Optional[dict]  # classifiers: {"matrix": [[true][pred]], "class_names": [...]} from on_test_end
    exception: Optional[dict]
    log_tail: list
    config_text: str = field(default="", repr=False)
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)  # one row per epoch, see run_report
    steps_table: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)  # facts/steps.csv
    telemetry_table: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)  # facts/telemetry.csv
    findings: list = field(default_factory=list)  # findings.Finding, most important first
    test_skipped: Optional[str] = None  # why the test pass did not run (schema 2: on_test_end `skipped`)
    incidents: list = field(default_factory=list)  # on_incident events: a part failed, the run went on
    bad_lines: list = field(default_factory=list)  # facts.reader.BadLine: lines the readers skipped
    unreadable: dict = field(default_factory=dict)  # {file relative to run_dir: why it could not be read}
    figure_errors: dict = field(default_factory=dict)  # {"telemetry" / "curves": why the figure was not drawn}
    # data_meta.json's `dataset` section (thesis_lib.data.describe): what the data was; {} when not recorded
    dataset: dict = field(default_factory=dict)
    profile: ProfileView | None = None  # profile/ of a run with trainer.profile on; None when it was off

    @property
    def trainable_pct(self) -> Optional[float]:
        """Trainable parameters as a percentage of all parameters."""
        if not self.params_total or self.params_trainable is None:
            return None
        return 100.0 * self.params_trainable / self.params_total

    @property
    def first_epoch(self) -> Optional[int]:
        """The first epoch in the per-epoch table, or None before any epoch finished."""
        return int(self.epochs.index.min()) if len(self.epochs.index) else None

    def gpu_devices(self) -> list[int]:
        """Indices of the GPUs with at least one reading in facts/telemetry.csv."""
        return gpu_indices(self.telemetry_table)

    def shown_epochs(self, max_rows: int = MAX_EPOCH_ROWS) -> pd.DataFrame:
        """The per-epoch table cut to at most `max_rows` rows: the first, best and last epochs and a spread between."""
        keep = list(self.epochs.index)
        if len(keep) > max_rows:
            spread = {keep[round(i * (len(keep) - 1) / (max_rows - 2))] for i in range(max_rows - 1)}
            best = self.metrics.best_epoch if self.metrics.best_epoch is not None else keep[0]
            keep = sorted(spread | {keep[-1], best})
        return self.epochs.loc[keep]

    def confusion_rows(self) -> list[tuple[str, list[int], Optional[float]]]:
        """(true class name, counts per predicted class, recall or None) per class of the test confusion matrix."""
        if not self.confusion:
            return []
        matrix = self.confusion["matrix"]
        rows = []
        for index, (name, counts) in enumerate(zip(self.confusion_classes(), matrix)):
            total = sum(counts)
            rows.append((name, list(counts), counts[index] / total if total else None))
        return rows

    def confusion_classes(self) -> list[str]:
        """The confusion matrix's class names; `class_<i>` for classes the run did not name."""
        if not self.confusion:
            return []
        names = [str(name) for name in self.confusion.get("class_names") or []]
        return names + [f"class_{i}" for i in range(len(names), len(self.confusion["matrix"]))]

    def section(self, name: str, images: Optional[Mapping[str, Any]] = None) -> str:
        """One section as Markdown, written by that section's cell of the run-report template.

        Args:
            name: the section, e.g. "summary" or "telemetry" (the template's `section:<name>` cells).
            images: {"curves": path, "telemetry": path} relative to where the Markdown will live;
                an image left out is not linked.

        Returns:
            The section's Markdown, starting with its heading.

        Raises:
            ReportError: an unknown section name (the message lists the known ones).
        """
        known = template_sections(RUN_REPORT_TEMPLATE)
        if name not in known:
            raise ReportError(f"unknown run-report section {name!r} for {self.run_dir}; known: {', '.join(known)}")
        return run_template(RUN_REPORT_TEMPLATE, {"report": self, "images": dict(images or {})},
                            sections=[name]).markdown

    def to_markdown(self, images: Optional[Mapping[str, Any]] = None) -> str:
        """The whole report: every section of the template, in order."""
        known = template_sections(RUN_REPORT_TEMPLATE)
        return run_template(RUN_REPORT_TEMPLATE, {"report": self, "images": dict(images or {})},
                            sections=known).markdown

"""Reports: a run's facts turned into report.md, report.html, telemetry.png and a written analysis.

`load_run_report(run_dir)` gathers the facts into a `RunReport` (sections as data, findings
included); `render_run_report(run_dir)` executes `report_templates/run_report.ipynb` with
papermill and exports it with nbconvert; `write_run_report_markdown(run_dir)` writes the same
report.md without a notebook, for machines without papermill/nbconvert. Sweeps:
`build_sweep_report` (analyses registered in `reports.analyses`, optional inference with AUROC)
writes the report layout; `render_sweep_report` also executes `report_templates/sweep_report.ipynb`.
"""

from .findings import Finding, find
from .render import RUN_REPORT_TEMPLATE, export_notebook, render_notebook, render_run_report, write_run_report_markdown
from .run_metrics import KeyMetrics, TelemetrySummary
from .run_report import ConfigSnapshot, RunReport, load_run_report
from .inference import InferenceResult, load_run_model, run_inference
from .sections import SECTIONS
from .sweep_report import SweepReport, build_sweep_report, render_sweep_report
from .telemetry_plot import curves_figure, plot_curves, plot_telemetry, telemetry_figure, write_report_figures

__all__ = [
    "load_run_report",
    "RunReport",
    "KeyMetrics",
    "ConfigSnapshot",
    "TelemetrySummary",
    "SECTIONS",
    "Finding",
    "find",
    "telemetry_figure",
    "curves_figure",
    "plot_telemetry",
    "plot_curves",
    "write_report_figures",
    "render_notebook",
    "export_notebook",
    "render_run_report",
    "write_run_report_markdown",
    "RUN_REPORT_TEMPLATE",
    "build_sweep_report",
    "render_sweep_report",
    "SweepReport",
    "run_inference",
    "load_run_model",
    "InferenceResult",
]

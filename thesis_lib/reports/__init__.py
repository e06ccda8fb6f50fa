"""Reports: a run's facts turned into report.md, report.html, telemetry.png and a written analysis.

`load_run_report(run_dir)` gathers the facts into a `RunReport` (numbers, tables and findings as
data); `report_templates/run_report.ipynb` lays them out as the report. `render_run_report(run_dir)`
executes that template with papermill and exports it with nbconvert; `write_run_report_markdown`
runs the same cells in this process and writes report.md, for machines without papermill/nbconvert.
Sweeps: `build_sweep_report` (analyses registered in `reports.analyses`, optional inference with
AUROC) writes the report layout; `render_sweep_report` also executes `report_templates/sweep_report.ipynb`.
Every value a run provides reaches a report through `escape_markdown`.
"""

from ..facts.run_model import load_run_model
from .findings import Finding
from .inference import InferenceResult, run_inference
from .markdown import escape_markdown
from .render import render_run_report, write_run_report_markdown
from .report_data import RunReport
from .run_report import load_run_report
from .sweep_report import SweepReport, build_sweep_report, render_sweep_report
from .telemetry_plot import curves_figure, plot_curves, plot_telemetry, telemetry_figure, write_report_figures

__all__ = [
    "load_run_report",
    "RunReport",
    "Finding",
    "render_run_report",
    "write_run_report_markdown",
    "write_report_figures",
    "telemetry_figure",
    "curves_figure",
    "plot_telemetry",
    "plot_curves",
    "escape_markdown",
    "build_sweep_report",
    "render_sweep_report",
    "SweepReport",
    "run_inference",
    "InferenceResult",
    "load_run_model",
]

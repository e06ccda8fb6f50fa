"""Reports: a run's facts turned into report.md, report.html, telemetry.png and a written analysis.

`load_run_report(run_dir)` gathers the facts into a `RunReport` (numbers, tables and findings as
data); `report_templates/run_report.ipynb` lays them out as the report. `render_run_report(run_dir)`
executes that template in this process (or, `engine="papermill"`, in a fresh kernel) and writes
report.md and report.html (`report_page`: one inert offline page, checked by `check_inert`), and
report.pdf with `pdf=True` (`write_pdf`, Chromium); `write_run_report_markdown` writes report.md alone.
Sweeps: `build_sweep_report` (analyses registered in `reports.analyses`, optional inference with
AUROC) writes the report layout; `render_sweep_report` also executes `report_templates/sweep_report.ipynb`.
Every value a run provides reaches a report through `escape_markdown`.
"""

from ..facts.run_model import load_run_model
from .findings import Finding
from .html_page import check_inert, report_page
from .inference import InferenceResult, run_inference
from .markdown import escape_markdown
from .pdf import write_pdf
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
    "report_page",
    "check_inert",
    "write_pdf",
    "build_sweep_report",
    "render_sweep_report",
    "SweepReport",
    "run_inference",
    "InferenceResult",
    "load_run_model",
]

"""Rendering reports: a template notebook executed (in this process, or by papermill), then report.md and report.html.

Both engines run the same template cells and leave the same executed notebook; report.md is its
shown Markdown (`template_exec.notebook_markdown`) and report.html that Markdown as one inert,
offline page (`html_page`), so the two engines give the same report.

- `engine="inprocess"` (the default): `template_exec.run_template` runs the cells here, in a
  namespace of their own, collecting what they `show` instead of displaying it, so a report
  rendered at the end of a run inside a user's notebook leaves the user's namespace and cell
  outputs alone. No kernel is started: a small run's report takes about a second, not eight.
- `engine="papermill"`: papermill executes the template in a fresh Jupyter kernel (what
  `papermill report_templates/run_report.ipynb out.ipynb -p run_dir ...` does by hand); for a
  template that needs a kernel of its own, or to check the in-process path against it.

`pdf=True` also prints report.html to report.pdf with Chromium (`pdf.write_pdf`).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import FactsError, ReportError
from ..atomic_files import atomic_write_text, check_inside
from ..layout import (CURVES_FIGURE, EVENTS_FILE, REPORT_HTML, REPORT_MARKDOWN, REPORT_PDF, RUN_REPORT_DIR,
                      RUN_REPORT_NOTEBOOK, TELEMETRY_FIGURE)
from ..run_lock import hold_run_lock
from .html_page import report_page
from .template_exec import RUN_REPORT_TEMPLATE, TemplateRun, executed_notebook, notebook_markdown, run_template

__all__ = ["RUN_REPORT_TEMPLATE", "ENGINES", "render_template", "render_run_report", "write_run_report_markdown"]

ENGINES = ("inprocess", "papermill")


def render_template(
    template: Union[str, Path],
    output_dir: Union[str, Path],
    parameters: Mapping[str, Any],
    *,
    title: str,
    engine: str = "inprocess",
    pdf: bool = False,
    kernel_name: str = "python3",
    timeout: int = 600,
) -> dict[str, Path]:
    """Execute a report template into `output_dir`: the executed notebook, report.md, report.html (and report.pdf).

    Args:
        template: the template notebook (its parameters cell tagged "parameters").
        output_dir: where everything goes; relative image links in the Markdown resolve against it.
        parameters: the values papermill would inject after the parameters cell.
        title: the HTML page's title.
        engine: "inprocess" (the cells run in this process) or "papermill" (a fresh kernel).
        pdf: also write report.pdf through Chromium.
        kernel_name, timeout: the kernel and the seconds one cell may run (papermill engine only).

    Returns:
        {"notebook", "markdown", "html"} and "pdf" when asked: the paths written.

    Raises:
        ImportError: engine "papermill" without papermill installed.
        ReportError: the template is missing, a cell failed (the message names the cell and its
            error), the page failed the inertness check, or the PDF could not be printed.
    """
    if engine not in ENGINES:
        raise ReportError(f"report engine {engine!r} is not one of {', '.join(ENGINES)}")
    template, output_dir = Path(template), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    notebook_path = output_dir / template.name
    if engine == "papermill":
        notebook = _execute_with_papermill(template, notebook_path, parameters, kernel_name=kernel_name,
                                           timeout=timeout)
    else:
        run = TemplateRun()
        try:
            run_template(template, parameters, into=run)
        except (ReportError, FactsError):
            raise
        except Exception as exc:
            # What ran before the failure is kept, as papermill keeps it: the notebook with the error, report.md.
            notebook = executed_notebook(template, run, parameters, error=exc)
            atomic_write_text(notebook_path, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
            atomic_write_text(output_dir / REPORT_MARKDOWN, notebook_markdown(notebook))
            raise ReportError(f"{template.name} failed: cell {run.failed_cell} raised {type(exc).__name__}: {exc}; "
                              f"the executed notebook with the error is {notebook_path}") from exc
        notebook = executed_notebook(template, run, parameters)
        atomic_write_text(notebook_path, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    markdown = notebook_markdown(notebook)
    paths = {"notebook": notebook_path,
             "markdown": atomic_write_text(output_dir / REPORT_MARKDOWN, markdown),
             "html": atomic_write_text(output_dir / REPORT_HTML, report_page(markdown, title=title, base_dir=output_dir))}
    if pdf:
        from .pdf import write_pdf

        paths["pdf"] = write_pdf(paths["html"], output_dir / REPORT_PDF, inside=output_dir)
    return paths


def _execute_with_papermill(template: Path, notebook: Path, parameters: Mapping[str, Any], *, kernel_name: str,
                            timeout: int) -> dict:
    """papermill runs the template in a new kernel (cwd: the output directory); the executed notebook's JSON."""
    import papermill

    failure: Optional[str] = None
    try:
        papermill.execute_notebook(
            str(template), str(notebook), parameters=dict(parameters), cwd=str(notebook.parent),
            kernel_name=kernel_name, execution_timeout=timeout, progress_bar=False,
            # ipykernel warns at every start that its local sockets are unencrypted, and logs the
            # interrupt nbclient sends while shutting a finished kernel down as an ERROR: neither is
            # about the report. A failing cell still raises PapermillExecutionError.
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except papermill.PapermillExecutionError as exc:
        failure = f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"
    except Exception as exc:  # a dead kernel, a timeout: reported the same way, with the notebook kept
        failure = f"{type(exc).__name__}: {exc}"
    if failure is not None:
        kept = f"; the executed notebook with the error is {notebook}" if notebook.is_file() else ""
        raise ReportError(f"{template.name} failed: {failure}{kept}")
    return json.loads(notebook.read_text(encoding="utf-8"))


def render_run_report(
    run_dir: Union[str, Path],
    output_dir: Union[str, Path, None] = None,
    *,
    template: Union[str, Path, None] = None,
    engine: str = "inprocess",
    pdf: bool = False,
    kernel_name: str = "python3",
    timeout: int = 600,
) -> dict[str, Path]:
    """Render a run's report through the run_report.ipynb template: report.md, report.html, the figures.

    Needs nothing but the run directory: it renders on a machine without a GPU, from a copy of
    the directory, as often as wanted (each render replaces the previous one).

    Args:
        run_dir: the run directory.
        output_dir: where the report goes; defaults to `<run_dir>/report/`.
        template: a template other than `report_templates/run_report.ipynb`.
        engine: "inprocess" (default: the cells run in this process) or "papermill" (a fresh kernel).
        pdf: also write report.pdf (needs Chromium).
        kernel_name, timeout: the kernel and the seconds one cell may run (papermill engine only).

    Returns:
        {"notebook", "html", "markdown", "telemetry", "curves"} (and "pdf"): paths of what was written.

    Raises:
        FactsError: `run_dir` is not a run directory.
        ImportError: engine "papermill" without papermill.
        ReportError: a template cell, the page check or the PDF failed; names the run directory and the error.
        RunLockedError: the report goes into the run directory and another process writes it
            (its message names that process); fit's own `finish` holds the lock already.
    """
    run_dir = _check_run_dir(run_dir)
    output_dir = Path(output_dir) if output_dir is not None else run_dir / RUN_REPORT_DIR
    parameters = {"run_dir": str(run_dir.resolve()), "output_dir": str(output_dir.resolve())}
    with _writer_lock(run_dir, output_dir):
        try:
            paths = render_template(template or RUN_REPORT_TEMPLATE, output_dir, parameters,
                                    title=f"Run report: {run_dir.resolve().name}", engine=engine, pdf=pdf,
                                    kernel_name=kernel_name, timeout=timeout)
        except ReportError as exc:
            raise ReportError(f"run report for {run_dir}: {exc}") from exc
    for key, filename in (("telemetry", TELEMETRY_FIGURE), ("curves", CURVES_FIGURE)):
        if (output_dir / filename).is_file():
            paths[key] = output_dir / filename
    return paths


def write_run_report_markdown(
    run_dir: Union[str, Path],
    output_dir: Union[str, Path, None] = None,
    *,
    template: Union[str, Path, None] = None,
) -> dict[str, Path]:
    """Write report.md, telemetry.png and curves.png alone: no HTML page, no executed notebook.

    The template's cells run in this process (`template_exec.run_template`) as for
    `render_run_report`, so report.md is the same; for a machine without mistune, or when only
    the Markdown is wanted.

    Args:
        run_dir: the run directory.
        output_dir: defaults to `<run_dir>/report/`.
        template: a template other than `report_templates/run_report.ipynb`.

    Returns:
        {"markdown": report.md, "telemetry": telemetry.png, "curves": curves.png}.

    Raises:
        FactsError: `run_dir` is not a run directory or its facts cannot be read.
        ReportError: the template is missing or unreadable. Other errors of a cell propagate with a
            note naming the cell.
        RunLockedError: the report goes into the run directory and another process writes it.
    """
    run_dir = _check_run_dir(run_dir)
    output_dir = Path(output_dir) if output_dir is not None else run_dir / RUN_REPORT_DIR
    with _writer_lock(run_dir, output_dir):
        run = run_template(template or RUN_REPORT_TEMPLATE,
                           {"run_dir": str(run_dir.resolve()), "output_dir": str(output_dir.resolve())})
        output_dir.mkdir(parents=True, exist_ok=True)
        markdown = atomic_write_text(output_dir / REPORT_MARKDOWN, run.markdown)
    return {"markdown": markdown, **run.namespace.get("figures", {})}


def _writer_lock(run_dir: Path, output_dir: Path) -> contextlib.AbstractContextManager:
    """The run's writer lock when the report goes into the run directory (RunLockedError while another
    process writes it; re-entrant under fit's `finish`); nothing for a report written elsewhere, which
    leaves the run directory untouched and so renders from a read-only copy too."""
    run_lexical, out_lexical = Path(os.path.abspath(run_dir)), Path(os.path.abspath(output_dir))
    if out_lexical == run_lexical or run_lexical in out_lexical.parents:
        # report/ (or the notebook in it) being a link would carry papermill's writes out of the run.
        check_inside(run_dir, output_dir / RUN_REPORT_NOTEBOOK)
        return hold_run_lock(run_dir, "rendering the run report")
    run_abs, out_abs = run_dir.resolve(), output_dir.resolve()
    if out_abs == run_abs or run_abs in out_abs.parents:
        check_inside(run_abs, out_abs / RUN_REPORT_NOTEBOOK)
        return hold_run_lock(run_dir, "rendering the run report")
    return contextlib.nullcontext()


def _check_run_dir(run_dir: Union[str, Path]) -> Path:
    """The run directory as a Path; FactsError naming it when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FactsError(f"run directory {run_dir} does not exist")
    if not (run_dir / EVENTS_FILE).is_file():
        raise FactsError(f"{run_dir} is not a run directory: it has no {EVENTS_FILE}")
    return run_dir

"""Rendering reports: papermill executes a template notebook, nbconvert exports it to HTML and Markdown.

The HTML embeds every image as a data URI, so the file opens offline on its own (nbconvert's
page still names require.js and MathJax on a CDN; offline they do not load, and a run report has
no math to typeset); the Markdown keeps images as files beside it. Both hide the code, so the report reads as a document.
papermill and nbconvert are imported only when a notebook is rendered: on a machine without
them `render_run_report` raises ImportError and `write_run_report_markdown` still works: it runs
the same template's cells in this process (`template_exec`), so both paths share one layout.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..errors import FactsError, ReportError
from ..atomic_files import atomic_write_bytes, atomic_write_text, check_inside
from ..layout import (CURVES_FIGURE, EVENTS_FILE, REPORT_MARKDOWN, REPORT_STEM, RUN_REPORT_DIR, RUN_REPORT_NOTEBOOK,
                      TELEMETRY_FIGURE)
from ..run_lock import hold_run_lock
from .template_exec import RUN_REPORT_TEMPLATE, run_template

__all__ = ["RUN_REPORT_TEMPLATE", "render_notebook", "export_notebook", "render_run_report", "write_run_report_markdown"]

# Markdown cells of a template that explain the template itself, not the run: left out of exports.
TEMPLATE_NOTE_TAG = "template-note"


def render_notebook(
    template: Union[str, Path],
    output_dir: Union[str, Path],
    parameters: Mapping[str, Any],
    *,
    name: str,
    kernel_name: str = "python3",
    timeout: int = 600,
) -> dict[str, Path]:
    """Execute a template with papermill in `output_dir`, save it, and export it to HTML and Markdown.

    On a failing cell, the executed notebook (papermill marks the error in it) and whatever
    exports can still be made are written first, then ReportError is raised.

    Args:
        template: the template notebook (its parameters cell tagged "parameters").
        output_dir: where everything goes; also the kernel's working directory.
        parameters: values papermill injects after the parameters cell.
        name: the stem of the exports: `<name>.html`, `<name>.md`, images in `<name>_files/`.
        kernel_name: the Jupyter kernel to run.
        timeout: seconds one cell may run.

    Returns:
        {"notebook": executed .ipynb (named like the template), "html": ..., "markdown": ...}.

    Raises:
        ImportError: papermill, nbformat or nbconvert is not installed.
        ReportError: the template is missing, a cell failed, or the export failed; the message
            names the template, the cell and its error.
    """
    import nbconvert  # noqa: F401  (imported before the kernel starts: a missing exporter should fail fast)
    import papermill

    template, output_dir = Path(template), Path(output_dir)
    if not template.is_file():
        raise ReportError(f"report template {template} does not exist")
    output_dir.mkdir(parents=True, exist_ok=True)
    notebook = output_dir / template.name
    failure: Optional[str] = None
    try:
        papermill.execute_notebook(
            str(template), str(notebook), parameters=dict(parameters), cwd=str(output_dir),
            kernel_name=kernel_name, execution_timeout=timeout, progress_bar=False,
            # ipykernel 7 warns at every start that its local TCP sockets are unencrypted; in a
            # report kernel that line only lands in the caller's output. Cell errors still raise.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except papermill.PapermillExecutionError as exc:
        failure = f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}"
    except Exception as exc:  # a dead kernel, a timeout: reported the same way, with the notebook kept
        failure = f"{type(exc).__name__}: {exc}"
    paths = {"notebook": notebook}
    if notebook.is_file():
        try:
            paths.update(export_notebook(notebook, output_dir, name=name))
        except Exception as exc:
            if failure is None:
                raise ReportError(f"exporting {notebook} to HTML/Markdown failed: {type(exc).__name__}: {exc}") from exc
    if failure is not None:
        raise ReportError(f"{template.name} failed: {failure}; the executed notebook with the error is {notebook}")
    return paths


def export_notebook(notebook: Union[str, Path], output_dir: Union[str, Path], *, name: str) -> dict[str, Path]:
    """Export an executed notebook, code hidden, to `<name>.html` (images embedded) and `<name>.md` (images beside it).

    Markdown images that link to files (relative to `output_dir`) are embedded in the HTML as
    data URIs; inline outputs (matplotlib shown in the notebook) are PNGs in the HTML already and
    files under `<name>_files/` for the Markdown.

    Args:
        notebook: the executed notebook.
        output_dir: where the exports go; relative image links resolve against it.
        name: the stem of the exported files.

    Returns:
        {"html": path, "markdown": path}.
    """
    import nbformat
    from nbconvert import HTMLExporter, MarkdownExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    output_dir = Path(output_dir)
    nb = nbformat.read(str(notebook), as_version=4)
    resources = {"metadata": {"path": str(output_dir), "name": name}, "output_files_dir": f"{name}_files"}
    exports = {}
    for key, exporter, suffix in (
        ("html", HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
                              embed_images=True), ".html"),
        ("markdown", MarkdownExporter(exclude_input=True), ".md"),
    ):
        exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={TEMPLATE_NOTE_TAG}), enabled=True)
        body, written = exporter.from_notebook_node(copy.deepcopy(nb), resources=copy.deepcopy(resources))
        for filename, data in (written.get("outputs") or {}).items():
            target = output_dir / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        exports[key] = atomic_write_text(output_dir / f"{name}{suffix}", body)
    return exports


def render_run_report(
    run_dir: Union[str, Path],
    output_dir: Union[str, Path, None] = None,
    *,
    template: Union[str, Path, None] = None,
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
        kernel_name: the Jupyter kernel to execute it with.
        timeout: seconds one cell may run.

    Returns:
        {"notebook", "html", "markdown", "telemetry", "curves"}: paths of what was written.

    Raises:
        FactsError: `run_dir` is not a run directory.
        ImportError: papermill or nbconvert is missing (use `write_run_report_markdown` instead).
        ReportError: a template cell or the export failed; names the run directory and the error.
        RunLockedError: the report goes into the run directory and another process writes it
            (its message names that process); fit's own `finish` holds the lock already.
    """
    run_dir = _check_run_dir(run_dir)
    output_dir = Path(output_dir) if output_dir is not None else run_dir / RUN_REPORT_DIR
    parameters = {"run_dir": str(run_dir.resolve()), "output_dir": str(output_dir.resolve())}
    with _writer_lock(run_dir, output_dir):
        try:
            paths = render_notebook(template or RUN_REPORT_TEMPLATE, output_dir, parameters, name=REPORT_STEM,
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
    """Write report.md, telemetry.png and curves.png without Jupyter: the template's cells run in this process.

    The same cells papermill executes for report.html (`template_exec.run_template`), their
    Markdown collected instead of displayed: the two reports share one layout. For machines
    without papermill/nbconvert (the template is read as JSON, no nbformat needed).

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
        run = run_template(template or RUN_REPORT_TEMPLATE, {"run_dir": str(run_dir), "output_dir": str(output_dir)})
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

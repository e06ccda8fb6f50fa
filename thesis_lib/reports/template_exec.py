"""A report template's code cells run in this process: how report.md is written without Jupyter.

The templates in `report_templates/` are the one place a report's layout lives. papermill runs
them in a kernel for report.html; `run_template` runs the same code cells here, in order, in one
namespace, and collects what each cell passes to `show`, so report.md reads the same either way.
The template is read as JSON (no nbformat), its parameters cell is run first and the given
parameters applied after it, as papermill does. The cells therefore use nothing a kernel alone
has: no magics, no shell escapes, no `display` builtin, no reliance on the working directory.

Cell tags: `parameters` (papermill's), `template-note` (Markdown about the template, left out of
exports), `load` (reads the run), `section:<name>` (one report section each); untagged code cells
set up imports. `run_template(..., sections=[...])` runs only the setup cells and those sections,
with the caller's namespace (e.g. a RunReport already loaded): `RunReport.section` works that way.
"""

from __future__ import annotations

import contextlib
import io
import json
import traceback
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from ..errors import ReportError
from ..layout import RUN_REPORT_NOTEBOOK
from ..shipped import shipped_notebook

__all__ = ["RUN_REPORT_TEMPLATE", "SECTION_TAG", "TEMPLATE_NOTE_TAG", "TemplateRun", "show", "run_template",
           "template_sections", "executed_notebook", "notebook_markdown"]

RUN_REPORT_TEMPLATE = shipped_notebook("report_templates", RUN_REPORT_NOTEBOOK, must_exist=False)
SECTION_TAG = "section:"
# Markdown cells of a template that explain the template itself, not the run: left out of reports.
TEMPLATE_NOTE_TAG = "template-note"
_PARAMETERS = "parameters"
_shown: ContextVar[Optional[list]] = ContextVar("thesis_lib_report_shown", default=None)


def show(markdown: str) -> None:
    """Display Markdown from a template cell: in a notebook through IPython, under `run_template` into its list."""
    collected = _shown.get()
    if collected is not None:
        collected.append(str(markdown))
        return
    from IPython.display import Markdown, display

    display(Markdown(str(markdown)))


@dataclass
class TemplateRun:
    """What the cells showed, in order, and the namespace they left (e.g. `figures`).

    `outputs` maps each executed code cell's index in the template to the blocks it showed, so the
    executed notebook (`executed_notebook`) holds them where papermill would have put them.
    """

    shown: list[str] = field(default_factory=list)
    namespace: dict = field(default_factory=dict, repr=False)
    outputs: dict[int, list[str]] = field(default_factory=dict, repr=False)
    printed: dict[int, str] = field(default_factory=dict, repr=False)  # what a cell printed (stdout and stderr)
    failed_cell: Optional[int] = None  # the index of the cell that raised, when one did

    @property
    def markdown(self) -> str:
        """The shown blocks as one Markdown document, a blank line between blocks."""
        return "\n".join(block.rstrip() + "\n" for block in self.shown)


def run_template(
    template: Union[str, Path],
    parameters: Optional[Mapping[str, Any]] = None,
    *,
    sections: Optional[Iterable[str]] = None,
    into: Optional[TemplateRun] = None,
) -> TemplateRun:
    """Execute a template's code cells in this process and collect what they `show`.

    Args:
        template: the template notebook.
        parameters: with `sections=None`, the values papermill would inject (applied after the
            parameters cell); with `sections`, the whole starting namespace (e.g. {"report", "images"}).
        sections: None runs every code cell; a list runs the setup cells and those sections only,
            in the template's order.
        into: a TemplateRun to fill (and return); when a cell raises, it keeps what the cells
            before it showed and `failed_cell`, for a report of the failure.

    Returns:
        A TemplateRun.

    Raises:
        ReportError: the template is missing or unreadable, or a section name is unknown (the
            known ones are listed). An exception raised by a cell propagates unchanged, with a
            note naming the template and the cell.
    """
    cells = _code_cells(Path(template))
    namespace: dict[str, Any] = {"__name__": "__report_template__"}
    if sections is None:
        chosen = range(len(cells))
    else:
        wanted = list(sections)
        known = [name for _, tags, _ in cells for name in _section_names(tags)]
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ReportError(f"unknown report section {', '.join(map(repr, unknown))} in {Path(template).name}; "
                              f"known: {', '.join(known)}")
        chosen = [i for i, (_, tags, _) in enumerate(cells)
                  if not tags or any(name in wanted for name in _section_names(tags))]
        namespace.update(parameters or {})
    run = into if into is not None else TemplateRun()
    run.namespace = namespace
    for i in chosen:
        index, tags, source = cells[i]
        blocks: list[str] = []
        printed = io.StringIO()
        token = _shown.set(blocks)
        try:
            # A print or warning of a cell goes to the executed notebook, as under papermill, not
            # into the caller's output (a user's notebook cell, a run's log).
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                _exec_cell(source, namespace, Path(template).name, index)
        except BaseException:
            run.failed_cell = index
            raise
        finally:
            _shown.reset(token)
            run.outputs[index] = blocks
            run.shown.extend(blocks)
            if printed.getvalue():
                run.printed[index] = printed.getvalue()
        if _PARAMETERS in tags and sections is None:
            namespace.update(parameters or {})
    return run


def executed_notebook(template: Union[str, Path], run: TemplateRun, parameters: Mapping[str, Any],
                      error: Optional[BaseException] = None) -> dict:
    """The template as papermill would have left it after `run`: each code cell with the Markdown it
    showed as display_data outputs, and the parameters in an `injected-parameters` cell after the
    parameters cell; `error` becomes an error output of `run.failed_cell`. Plain nbformat-4 JSON
    (nbformat's own import costs seconds here; the structure is small).
    """
    notebook = _read_notebook(Path(template))
    cells, count = [], 0
    for index, cell in enumerate(notebook.get("cells") or []):
        cell = dict(cell)
        if cell.get("cell_type") == "code":
            shown = run.outputs.get(index)
            count += shown is not None
            cell["execution_count"] = count if shown is not None else None
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": run.printed[index]}
                               ] if index in run.printed else []
            cell["outputs"] += [{"output_type": "display_data", "metadata": {},
                                "data": {"text/markdown": block, "text/plain": "<IPython.core.display.Markdown object>"}}
                               for block in shown or []]
            if error is not None and index == run.failed_cell:
                cell["outputs"].append({"output_type": "error", "ename": type(error).__name__, "evalue": str(error),
                                        "traceback": traceback.format_exception(error)})
        cells.append(cell)
        if _PARAMETERS in ((cell.get("metadata") or {}).get("tags") or []):
            source = "# Parameters\n" + "".join(f"{key} = {value!r}\n" for key, value in parameters.items())
            injected = {"cell_type": "code", "execution_count": None, "outputs": [], "source": source,
                        "metadata": {"tags": ["injected-parameters"]}}
            if "id" in cell:  # nbformat 4.5 and later: every cell has an id
                injected["id"] = "injected-parameters"
            cells.append(injected)
    return {**notebook, "cells": cells}


def notebook_markdown(notebook: Mapping[str, Any]) -> str:
    """The report Markdown of an executed template notebook (papermill's or `executed_notebook`'s).

    Markdown cells not tagged `template-note` and the text/markdown outputs of code cells, in
    order, joined as `TemplateRun.markdown` joins them: both ways of rendering give one report.md.
    """
    blocks = []
    for cell in notebook.get("cells") or []:
        tags = (cell.get("metadata") or {}).get("tags") or []
        if cell.get("cell_type") == "markdown" and TEMPLATE_NOTE_TAG not in tags:
            blocks.append(_text(cell.get("source")))
        elif cell.get("cell_type") == "code":
            blocks += [_text(output["data"]["text/markdown"]) for output in cell.get("outputs") or []
                       if output.get("output_type") in ("display_data", "execute_result")
                       and "text/markdown" in (output.get("data") or {})]
    return "\n".join(block.rstrip() + "\n" for block in blocks)


def _text(source: Any) -> str:
    """A notebook string field: nbformat stores multi-line text as a list of lines."""
    return "".join(source) if isinstance(source, list) else str(source or "")


def template_sections(template: Union[str, Path]) -> list[str]:
    """The section names of a template (its `section:<name>` cells), in order."""
    return [name for _, tags, _ in _code_cells(Path(template)) for name in _section_names(tags)]


def _read_notebook(template: Path) -> dict:
    """A notebook's JSON; ReportError naming the file when it cannot be read."""
    try:
        notebook = json.loads(template.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"report template {template} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ReportError(f"report template {template} is not a readable notebook: {exc}") from exc
    if not isinstance(notebook, dict):
        raise ReportError(f"report template {template} is not a notebook: its JSON is not an object")
    return notebook


def _code_cells(template: Path) -> list[tuple[int, list[str], str]]:
    """(cell index, tags, source) of every code cell; ReportError naming the file when it cannot be read."""
    notebook = _read_notebook(template)
    cells = []
    for index, cell in enumerate(notebook.get("cells") or []):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source") or ""
        cells.append((index, list((cell.get("metadata") or {}).get("tags") or []),
                      "".join(source) if isinstance(source, list) else source))
    return cells


def _section_names(tags: Iterable[str]) -> list[str]:
    return [tag[len(SECTION_TAG):] for tag in tags if tag.startswith(SECTION_TAG)]


def _exec_cell(source: str, namespace: dict, template_name: str, index: int) -> None:
    """Run one cell's source; an exception leaves with a note naming the template and the cell."""
    where = f"{template_name}, cell {index}"
    try:
        exec(compile(source, f"<{where}>", "exec"), namespace)  # noqa: S102 - the template is ours, as under papermill
    except Exception as exc:
        exc.add_note(f"(raised in {where}, run in-process)")
        raise

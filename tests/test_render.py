"""render.py, the two report templates and `thesis-lib report run`: papermill executes, nbconvert exports.

The templates are rendered here against real tiny runs (tests/report_fixtures.py), not executed
by nbmake with defaults: they train nothing and need a run to report on.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_notebook

from thesis_lib.cli import main
from thesis_lib.errors import ReportError
from thesis_lib.layout import CONFIG_FILE, STDOUT_LOG
from thesis_lib.reports import load_run_report, render_run_report, write_run_report_markdown
from thesis_lib.reports.sweep_report import SWEEP_REPORT_TEMPLATE
from thesis_lib.reports.template_exec import RUN_REPORT_TEMPLATE, run_template, template_sections

pytest_plugins = ("report_fixtures",)

HEADINGS = ["## Executive summary", "## Key metrics", "## Configuration", "## Training curves", "## Telemetry",
            "## Findings", "## Test metrics", "## Log tail"]
TEMPLATES = {"run_report": RUN_REPORT_TEMPLATE, "sweep_report": SWEEP_REPORT_TEMPLATE}
# Run-provided strings that must come out as text: in config.yaml (so in the configuration table) and the log.
HOSTILE_OPTIMIZER = "**x**|y"
HOSTILE_DATA = "<img src=x onerror=alert(1)>"
HOSTILE_LOG = "</details><script>alert(1)</script> ``` `x` **y**"


def _hostile_copy(run_dir: Path, dest: Path) -> Path:
    """A copy of a run whose config.yaml and log hold strings that would be markup if not escaped."""
    copy = shutil.copytree(run_dir, dest)
    config = yaml.safe_load((copy / CONFIG_FILE).read_text())
    config["optim"]["name"], config["data"]["path"] = HOSTILE_OPTIMIZER, HOSTILE_DATA
    config["run_name"] = "<script>alert(1)</script>"
    (copy / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    with open(copy / STDOUT_LOG, "a", encoding="utf-8") as log:
        log.write(HOSTILE_LOG + "\n")
    return copy


@pytest.mark.slow
def test_a_copied_run_directory_renders_to_html_and_markdown(autoencoder_run, tmp_path):
    copy = _hostile_copy(autoencoder_run, tmp_path / "elsewhere" / autoencoder_run.name)  # the run directory alone
    paths = render_run_report(copy)
    out = copy / "report"
    assert paths == {"notebook": out / "run_report.ipynb", "html": out / "report.html", "markdown": out / "report.md",
                     "telemetry": out / "telemetry.png", "curves": out / "curves.png"}
    assert all(path.is_file() for path in paths.values())

    html = paths["html"].read_text()
    assert 'alt="Telemetry" src="data:image/png;base64,' in html and 'alt="Training curves" src="data:image/png;base64,' in html
    assert not re.findall(r'<img[^>]*src="(?!data:)', html)  # opens offline: no image file is referenced
    assert "load_run_report" not in html and "Cells tagged" not in html  # code and template notes hidden
    # Hostile strings are text: no tag of theirs survives, the configuration table keeps its cells.
    assert "<script>alert" not in html and "<img src=x" not in html and "</details><script>" not in html
    assert f"<td>{HOSTILE_OPTIMIZER} (weight decay" in html
    assert "<td>&lt;img src=x onerror=alert(1)&gt; (loader" in html
    assert "&lt;/details&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the log line, in its code block

    markdown = paths["markdown"].read_text()
    assert [line for line in markdown.splitlines() if line.startswith("## ")] == HEADINGS
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert links == ["curves.png", "telemetry.png"] and all((out / link).is_file() for link in links)
    assert "load_run_report" not in markdown and "Cells tagged" not in markdown
    assert r"| Optimiser | \*\*x\*\*\|y (weight decay" in markdown
    # The notebook shows exactly what the in-process path writes: one layout, the template's.
    in_process = write_run_report_markdown(copy, tmp_path / "md")["markdown"].read_text()
    report = load_run_report(copy.resolve())
    for name in template_sections(RUN_REPORT_TEMPLATE):
        section = report.section(name, {"curves": "curves.png", "telemetry": "telemetry.png"}).strip()
        assert section in markdown, name
        assert section.replace(str(copy.resolve()), str(copy)) in in_process, name
    assert f"`{copy.resolve()}`" in markdown and "- **Status:** COMPLETED (max_epochs)" in markdown


@pytest.mark.slow
def test_a_classifier_report_shows_its_confusion_matrix(classifier_run, tmp_path):
    paths = render_run_report(classifier_run, tmp_path / "report")
    html = paths["html"].read_text()
    assert '<h3 id="Confusion-matrix">Confusion matrix' in html
    assert "<strong>qcd_multijet</strong>" in html and "<th>recall</th>" in html
    markdown = paths["markdown"].read_text()
    assert "| true \\ predicted | qcd_multijet | w_jets | ttbar | z_ll | recall |" in markdown


def test_cli_report_run_on_a_missing_directory_names_it(tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    assert main(["report", "run", str(missing)]) == 2
    assert f"thesis-lib report: error: run directory {missing} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", "run", str(tmp_path / "empty"), "--markdown-only"]) == 2
    assert "is not a run directory: it has no facts/events.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_report_run(autoencoder_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", "run", str(autoencoder_run), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"html: {out / 'report.html'}" in printed and f"markdown: {out / 'report.md'}" in printed
    assert (out / "report.html").stat().st_size > 10_000 and (out / "telemetry.png").is_file()

    assert main(["report", "run", str(autoencoder_run), "--output-dir", str(tmp_path / "md"), "--markdown-only"]) == 0
    assert sorted(p.name for p in (tmp_path / "md").iterdir()) == ["curves.png", "report.md", "telemetry.png"]


@pytest.mark.slow
def test_a_failing_cell_keeps_the_notebook_and_names_run_and_error(autoencoder_run, tmp_path):
    template = tmp_path / "broken.ipynb"
    nb = new_notebook(cells=[
        new_code_cell('run_dir = ""\noutput_dir = None', metadata={"tags": ["parameters"]}),
        new_code_cell('print("written before the failure")'),
        new_code_cell('raise ValueError(f"no report for {run_dir}")'),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, template)
    out = tmp_path / "out"
    with pytest.raises(ReportError) as caught:
        render_run_report(autoencoder_run, out, template=template)
    message = str(caught.value)
    assert message.startswith(f"run report for {autoencoder_run}: broken.ipynb failed: cell ")
    assert f"raised ValueError: no report for {autoencoder_run.resolve()}" in message
    assert f"the executed notebook with the error is {out / 'broken.ipynb'}" in message
    # What was produced before the failure is kept: the executed notebook and its exports.
    assert "written before the failure" in (out / "report.md").read_text()
    assert "ValueError" in (out / "broken.ipynb").read_text()


# -- the templates themselves ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_parameter_shows_in_help_notebook_with_a_help_line(name):
    cells = json.loads(Path(TEMPLATES[name]).read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", []))
    assigned = [node.target.id if isinstance(node, ast.AnnAssign) else node.targets[0].id
                for node in ast.parse(source).body if isinstance(node, (ast.Assign, ast.AnnAssign))]
    parameters = papermill.inspect_notebook(str(TEMPLATES[name]))  # what `papermill --help-notebook` prints
    assert list(parameters) == assigned, "papermill cannot parse a parameter line (it drops it from --help-notebook)"
    for parameter, info in parameters.items():
        assert info["help"].strip(), f"{name}.ipynb: parameter {parameter} has no '# help' comment"


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_templates_train_nothing_and_need_no_kernel(name):
    cells = json.loads(Path(TEMPLATES[name]).read_text())["cells"]
    code = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    for source in code:
        assert not re.search(r"^\s*[%!]", source, re.M), source  # no magics, no shell escapes
        assert "get_ipython" not in source and "IPython" not in source and "display(" not in source, source
        assert not re.search(r"\b(train|fit|sweep|make_synthetic_events)\(", source), source
    # Without a run to report on, the template says so instead of training one.
    with pytest.raises(ReportError, match="trains none"):
        run_template(TEMPLATES[name], {})


def test_an_unknown_section_lists_the_known_ones(autoencoder_run):
    report = load_run_report(autoencoder_run)
    with pytest.raises(ReportError, match="unknown run-report section 'nope'.*known: title, summary, metrics"):
        report.section("nope")

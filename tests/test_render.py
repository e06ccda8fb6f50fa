"""render.py, the two report templates and `thesis-lib report run|sweep`: executed in process or by
papermill, written as report.md, report.html and report.pdf.

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
from thesis_lib.reports import load_run_report, render_run_report, render_sweep_report, write_run_report_markdown
from thesis_lib.reports.sweep_report import SWEEP_REPORT_TEMPLATE
from thesis_lib.reports.template_exec import RUN_REPORT_TEMPLATE, run_template, template_sections

pytest_plugins = ("report_fixtures",)

HEADINGS = ["## Executive summary", "## Key metrics", "## Configuration", "## Dataset", "## Training curves", "## Telemetry",
            "## Profile", "## Findings", "## Test metrics", "## Log tail"]
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
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="Telemetry">', html)
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="Training curves">', html)
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
    # Every section of the template, and nothing else, in its order: one layout, the template's.
    report = load_run_report(copy.resolve())
    sections = [report.section(name, {"curves": "curves.png", "telemetry": "telemetry.png"}).strip()
                for name in template_sections(RUN_REPORT_TEMPLATE)]
    assert markdown == "\n".join(section + "\n" for section in sections)
    assert write_run_report_markdown(copy, tmp_path / "md")["markdown"].read_text() == markdown
    assert f"`{copy.resolve()}`" in markdown and "- **Status:** COMPLETED (max_epochs)" in markdown


@pytest.mark.slow
def test_papermill_and_the_in_process_engine_give_the_same_report(autoencoder_run, report_sweep, tmp_path, capfd):
    """`papermill report_templates/run_report.ipynb` (a fresh kernel) still renders the template, to the same report."""
    fast = render_run_report(autoencoder_run, tmp_path / "fast")
    slow = render_run_report(autoencoder_run, tmp_path / "papermill", engine="papermill")
    render_sweep_report(sweep_dir=report_sweep, analysis="generic", output_dir=tmp_path / "sweep", engine="papermill")
    printed = capfd.readouterr()
    # Nothing from the kernel reaches the console after a successful render (it used to log the
    # interrupt of its own shutdown as "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel").
    assert "IPKernelApp" not in printed.err + printed.out and "KeyboardInterrupt" not in printed.err + printed.out
    assert slow["markdown"].read_text() == fast["markdown"].read_text()
    assert slow["html"].read_text() == fast["html"].read_text()
    # The executed notebooks hold the same Markdown outputs, cell by cell.
    def shown(path):
        cells = json.loads(path.read_text())["cells"]
        return [["".join(o["data"]["text/markdown"]) for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
                for c in cells if c["cell_type"] == "code" and "injected-parameters" not in c["metadata"].get("tags", [])]
    assert shown(slow["notebook"]) == shown(fast["notebook"])
    assert not (tmp_path / "fast" / "report_files").exists()


@pytest.mark.slow
def test_a_classifier_report_shows_its_confusion_matrix(classifier_run, tmp_path):
    paths = render_run_report(classifier_run, tmp_path / "report")
    html = paths["html"].read_text()
    assert "<h3>Confusion matrix</h3>" in html
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
    assert main(["report", "run", str(autoencoder_run), "--markdown-only", "--pdf"]) == 2
    assert "--pdf prints report.html, which --markdown-only does not write" in capsys.readouterr().err


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
    # What was produced before the failure is kept: the executed notebook, with what the cells printed.
    executed = json.loads((out / "broken.ipynb").read_text())
    outputs = [output for cell in executed["cells"] for output in cell.get("outputs", [])]
    assert {"output_type": "stream", "name": "stdout", "text": "written before the failure\n"} in outputs
    assert [o["ename"] for o in outputs if o["output_type"] == "error"] == ["ValueError"]


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


def _page_one_inked(pdf: Path, tmp_path: Path) -> float:
    """The share of non-white pixels on page 1 of `pdf`, rendered by pdftoppm."""
    import subprocess

    from PIL import Image

    stem = tmp_path / f"{pdf.parent.name}-page"
    subprocess.run(["pdftoppm", "-png", "-r", "40", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(stem)], check=True)
    histogram = Image.open(f"{stem}.png").convert("L").histogram()
    return sum(histogram[:240]) / sum(histogram)


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("pdftoppm")),
                    reason="needs Debian's chromium and poppler-utils (.ci/install-browser-deps)")
def test_pdf_reports_of_a_run_a_sweep_and_the_config_switch(autoencoder_run, report_sweep, report_root, tiny_trainer,
                                                             tmp_path, capsys):
    assert main(["report", "run", str(autoencoder_run), "--output-dir", str(tmp_path / "run"), "--pdf"]) == 0
    assert f"pdf: {tmp_path / 'run' / 'report.pdf'}" in capsys.readouterr().out
    assert main(["report", "sweep", str(report_sweep), "--analysis", "generic", "--output-dir", str(tmp_path / "sweep"),
                 "--pdf"]) == 0
    assert f"pdf: {tmp_path / 'sweep' / 'report.pdf'}" in capsys.readouterr().out
    for pdf in (tmp_path / "run" / "report.pdf", tmp_path / "sweep" / "report.pdf"):
        assert pdf.read_bytes().startswith(b"%PDF-")
        assert _page_one_inked(pdf, tmp_path) > 0.01, pdf
    # report.pdf=true: the run's own report comes with its PDF (train() renders it when the run ends).
    from thesis_lib import train

    result = train({"output_root": str(tmp_path / "outputs"), "data": {"path": str(report_root / "events.h5")},
                    "model": {"encoder": "mlp", "hidden_dim": 16, "num_layers": 1, "latent_dim": 8},
                    "trainer": {"epochs": 1}, "telemetry": {"enabled": False}, "report": {"pdf": True}},
                   dashboard=None)
    assert _page_one_inked(Path(result.run_dir) / "report" / "report.pdf", tmp_path) > 0.01


def test_the_dataset_section_shows_data_meta_and_says_when_it_was_not_recorded(classifier_run, tmp_path):
    meta = json.loads((classifier_run / "data_meta.json").read_text())["dataset"]
    markdown = load_run_report(classifier_run).section("dataset")
    train = meta["splits"]["train"]
    counts = " | ".join(f"{n:,}" for n in meta["classes"]["counts"]["train"])
    assert f"| train | {train['rows']:,} | {train['rows_in_file']:,} | {train['batches']:,} | {counts} |" in markdown
    assert "| qcd_multijet | w_jets | ttbar | z_ll |" in markdown
    assert f"computed from the train split ({meta['normalization']['rows']:,} rows)" in markdown
    assert f"sample sha256 `{meta['file']['sample_sha256'][:16]}`" in markdown

    old = shutil.copytree(classifier_run, tmp_path / "old_run")
    (old / "data_meta.json").unlink()
    assert "Not recorded: the run has no data_meta.json" in load_run_report(old).section("dataset")
    (old / "data_meta.json").write_text("{not json")
    assert "data_meta.json could not be read:" in load_run_report(old).section("dataset")


@pytest.mark.slow
def test_the_end_of_run_report_leaves_a_users_notebook_alone(report_root, tmp_path):
    """train() in a user's kernel renders the report in that kernel: no output, no name, no figure of its own."""
    user_cell = (
        "import matplotlib.pyplot as plt\n"
        "from thesis_lib import train\n"
        f"result = train({{'output_root': {str(tmp_path / 'outputs')!r}, 'data': {{'path': {str(report_root / 'events.h5')!r}}},\n"
        "                 'model': {'encoder': 'mlp', 'hidden_dim': 16, 'num_layers': 1, 'latent_dim': 8},\n"
        "                 'trainer': {'epochs': 1}, 'telemetry': {'enabled': False}}, dashboard=None)"
    )
    check_cell = ("names = sorted(n for n in ('report', 'figures', 'images', 'show', 'esc', 'run_dir', 'output_dir') "
                  "if n in globals())\nprint('LEFT', names, 'FIGURES', plt.get_fignums())")
    notebook = new_notebook(cells=[new_code_cell(user_cell), new_code_cell(check_cell)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "user.ipynb")
    papermill.execute_notebook(str(tmp_path / "user.ipynb"), str(tmp_path / "ran.ipynb"), kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path))
    ran = nbformat.read(tmp_path / "ran.ipynb", as_version=4)
    train_outputs, check_outputs = ran.cells[0].outputs, ran.cells[1].outputs
    assert [o.output_type for o in train_outputs] and all(o.output_type == "stream" for o in train_outputs)
    printed = "".join(o.text for o in train_outputs)
    assert "report: " in printed and "## Executive summary" not in printed  # the run's own log lines only
    assert "".join(o.text for o in check_outputs).strip() == "LEFT [] FIGURES []"
    [run_dir] = (tmp_path / "outputs" / "runs").iterdir()
    assert (run_dir / "report" / "report.html").is_file()

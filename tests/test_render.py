"""render.py and `thesis-lib report run`: papermill executes run_report.ipynb, nbconvert exports it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from thesis_lib.cli import main
from thesis_lib.data import make_synthetic_events
from thesis_lib.errors import ReportError
from thesis_lib.reports import SECTIONS, load_run_report, render_run_report
from thesis_lib.train import train

HEADINGS = ["## Executive summary", "## Key metrics", "## Configuration", "## Training curves", "## Telemetry",
            "## Findings", "## Test metrics", "## Log tail"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    events = make_synthetic_events(root / "events.h5", n_events=800, seed=0, n_tokens=8)
    result = train({
        "output_root": str(root / "outputs"), "run_name": "render",
        "data": {"path": str(events), "batch_size": 128},
        "model": {"encoder": "mlp", "bottleneck": "linear", "latent_dim": 8, "hidden_dim": 32, "num_layers": 1,
                  "token_embed_dim": 4},
        "trainer": {"epochs": 2, "seed": 2},
        "telemetry": {"enabled": False}, "report": {"enabled": False},
    })
    return Path(result.run_dir)


@pytest.mark.slow
def test_a_copied_run_directory_renders_to_html_and_markdown(run_dir, tmp_path):
    copy = shutil.copytree(run_dir, tmp_path / "elsewhere" / run_dir.name)  # the run directory alone
    paths = render_run_report(copy)
    out = copy / "report"
    assert paths == {"notebook": out / "run_report.ipynb", "html": out / "report.html", "markdown": out / "report.md",
                     "telemetry": out / "telemetry.png", "curves": out / "curves.png"}
    assert all(path.is_file() for path in paths.values())

    html = paths["html"].read_text()
    assert 'alt="Telemetry" src="data:image/png;base64,' in html and 'alt="Training curves" src="data:image/png;base64,' in html
    assert not re.findall(r'<img[^>]*src="(?!data:)', html)  # opens offline: no image file is referenced
    assert "load_run_report" not in html and "Cells tagged" not in html  # code and template notes hidden

    markdown = paths["markdown"].read_text()
    assert [line for line in markdown.splitlines() if line.startswith("## ")] == HEADINGS
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert links == ["curves.png", "telemetry.png"] and all((out / link).is_file() for link in links)
    assert "load_run_report" not in markdown and "Cells tagged" not in markdown
    # The notebook shows the very sections write_run_report_markdown writes: one source of truth.
    report = load_run_report(copy.resolve())
    for name in SECTIONS:
        assert report.section(name, {"curves": "curves.png", "telemetry": "telemetry.png"}).strip() in markdown, name
    assert f"`{copy.resolve()}`" in markdown and "- **Status:** COMPLETED (max_epochs)" in markdown


@pytest.mark.slow
def test_cli_report_run(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", "run", str(run_dir), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"html: {out / 'report.html'}" in printed and f"markdown: {out / 'report.md'}" in printed
    assert (out / "report.html").stat().st_size > 10_000 and (out / "telemetry.png").is_file()

    assert main(["report", "run", str(run_dir), "--output-dir", str(tmp_path / "md"), "--markdown-only"]) == 0
    assert sorted(p.name for p in (tmp_path / "md").iterdir()) == ["curves.png", "report.md", "telemetry.png"]


def test_cli_report_run_on_a_missing_directory_names_it(tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    assert main(["report", "run", str(missing)]) == 2
    assert f"thesis-lib report: error: run directory {missing} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", "run", str(tmp_path / "empty"), "--markdown-only"]) == 2
    assert "is not a run directory: it has no facts/events.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_a_failing_cell_keeps_the_notebook_and_names_run_and_error(run_dir, tmp_path):
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
        render_run_report(run_dir, out, template=template)
    message = str(caught.value)
    assert message.startswith(f"run report for {run_dir}: broken.ipynb failed: cell ")
    assert f"raised ValueError: no report for {run_dir.resolve()}" in message
    assert f"the executed notebook with the error is {out / 'broken.ipynb'}" in message
    # What was produced before the failure is kept: the executed notebook and its exports.
    assert "written before the failure" in (out / "report.md").read_text()
    assert "ValueError" in (out / "broken.ipynb").read_text()

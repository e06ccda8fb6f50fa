"""The live dashboard in a real JupyterLab, driven by Playwright in Debian's headless Chromium.

A notebook trains with `train(cfg, dashboard="widget")`; the test watches the widget update, pauses
and resumes the run with its buttons, clicks Stop, and checks from the run's facts that the run
ended STOPPED with its checkpoints. One cell first checks that "auto" picks the widget here. It needs
/usr/bin/chromium (`.ci/install-browser-deps`), jupyterlab, playwright and ipywidgets, and is
skipped, with the reason, without them. Playwright never downloads a browser here: it launches
Debian's Chromium.

The screenshot of the live widget is written to the test's tmp dir; with
THESIS_LIB_UPDATE_SCREENSHOT=1 it also replaces docs/dashboard.png (the README shows it), so an
ordinary test run does not rewrite a tracked file.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from browser.lab import JupyterLabServer, NotebookPage, launch_chromium, missing_requirements

MISSING = missing_requirements()
pytestmark = [pytest.mark.browser, pytest.mark.slow]
if MISSING:
    pytestmark.append(pytest.mark.skip(reason=MISSING))

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "dashboard.png"
NOTEBOOK = "live_dashboard.ipynb"
AUTO_CELL, TRAIN_CELL = 0, 1

AUTO_SOURCE = """\
from thesis_lib.live import detect_dashboard_kind
print("AUTO_KIND", detect_dashboard_kind())"""

# Many short epochs on a tiny model: the widget redraws several times a second and the run
# would go on for minutes, so only the Stop button can end it within the test's time.
TRAIN_SOURCE = """\
from thesis_lib import train
from thesis_lib.data import make_synthetic_events

make_synthetic_events("events.h5", n_events=1_000, seed=0, n_tokens=8)
cfg = {
    "output_root": "outputs",
    "run_name": "browser",
    "data": {"path": "events.h5", "batch_size": 32},
    "model": {"encoder": "mlp", "bottleneck": "vq", "latent_dim": 8, "hidden_dim": 32},
    "trainer": {"epochs": 1000, "sync_every_n_steps": 4, "test": False},
    "report": {"enabled": False},
    "logging": {"update_interval_ms": 100},
}
result = train(cfg, dashboard="widget")
print("RUN_DIR", result.run_dir)
print("RESULT", result.status, result.stop_reason)"""


def write_notebook(path: Path) -> None:
    """The notebook the browser opens: the "auto" probe, then the training cell."""
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(AUTO_SOURCE), nbformat.v4.new_code_cell(TRAIN_SOURCE)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
    )
    nbformat.write(notebook, path)


def wait_for_epochs(root: Path, epochs: int, timeout_s: float) -> Path:
    """Wait until a run under `root`/outputs/runs has finished `epochs` epochs; returns its directory."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for scalars in (root / "outputs" / "runs").glob("*/facts/scalars.csv"):
            val_rows = sum(1 for line in scalars.read_text().splitlines()[1:] if ",val," in line)
            if val_rows >= epochs and (scalars.parents[1] / "best_val.pt").is_file():
                return scalars.parents[1]
        time.sleep(0.2)
    raise AssertionError(f"no run under {root / 'outputs' / 'runs'} finished {epochs} epochs within {timeout_s:.0f} s")


def epoch_position(text: str) -> str:
    """The widget's "2.82 / 1000 epochs" progress figure."""
    found = re.search(r"([0-9.]+) / 1000 epochs", text)
    assert found, f"no epoch progress in the widget's text:\n{text}"
    return found.group(1)


def wait_for_progress(widget, timeout_s: float) -> str:
    """Read the widget until its epoch progress moves (training, not just the clock); returns its text."""
    first = epoch_position(widget.inner_text())
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.3)
        text = widget.inner_text()
        if epoch_position(text) != first:
            return text
    raise AssertionError(f"the widget's progress stayed at {first} epochs for {timeout_s:.0f} s")


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a fresh root with the test notebook in it; shut down (process group) after."""
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / NOTEBOOK)
    with JupyterLabServer(root) as server:
        yield server


def drive_the_dashboard(notebook: NotebookPage, tmp_path: Path) -> tuple[Path, str]:
    """Check "auto", train, see the widget update, screenshot it, Pause/Resume, Stop; returns (run_dir, output)."""
    notebook.open(timeout_s=60)
    notebook.run_cell(AUTO_CELL)
    notebook.wait_cell_done(AUTO_CELL, timeout_s=30)
    assert "AUTO_KIND widget" in notebook.output_text(AUTO_CELL)

    notebook.run_cell(TRAIN_CELL)
    notebook.wait_cell_started(TRAIN_CELL)
    widget = notebook.widget(TRAIN_CELL)
    widget.wait_for(timeout=45_000)
    update_docs = os.environ.get("THESIS_LIB_UPDATE_SCREENSHOT") == "1"
    # The picture in the README gets a few more epochs of chart than the test needs.
    run_dir = wait_for_epochs(notebook.server.root, epochs=8 if update_docs else 2, timeout_s=60)
    assert "browser" in wait_for_progress(widget, timeout_s=10)  # live, and the header names the run

    shot = tmp_path / "dashboard.png"
    widget.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000  # a rendered widget, not an empty box
    if update_docs:
        shutil.copyfile(shot, SCREENSHOT)

    cell = notebook.cell(TRAIN_CELL)
    # Button names also hold the icon's glyph: match on the words.
    cell.get_by_role("button", name="Pause").click()
    cell.get_by_role("button", name="Resume").wait_for(timeout=10_000)
    paused_at = epoch_position(widget.inner_text())
    time.sleep(1.0)
    assert epoch_position(widget.inner_text()) == paused_at, "training went on while paused"
    cell.get_by_role("button", name="Resume").click()
    wait_for_progress(widget, timeout_s=10)

    cell.get_by_role("button", name="Stop").click()
    notebook.wait_cell_done(TRAIN_CELL, timeout_s=45)
    return run_dir, notebook.output_text(TRAIN_CELL)


def test_widget_updates_live_pauses_and_stop_ends_the_run_stopped(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    from thesis_lib import load_runs

    with sync_playwright() as playwright:
        context = launch_chromium(playwright, tmp_path / "chromium-profile")
        notebook = NotebookPage(context.new_page(), lab, NOTEBOOK)
        try:
            run_dir, output = drive_the_dashboard(notebook, tmp_path)
        except Exception as exc:
            picture = tmp_path / "failure.png"
            try:
                notebook.page.screenshot(path=str(picture))
            except Exception as shot_error:  # a crashed page: report the first error, not this one
                picture = f"none ({shot_error})"
            raise AssertionError(f"{type(exc).__name__}: {exc}\nthe page when it failed: {picture}\n"
                                 f"the training cell's output:\n{notebook.output_text(TRAIN_CELL)}\n"
                                 f"server log:\n{lab.log_tail(15)}") from exc
        finally:
            context.close()

    printed = re.search(r"RUN_DIR (\S+)", output)
    assert printed, f"the training cell did not print its run directory; its output:\n{output}"
    assert (lab.root / printed.group(1)).resolve() == run_dir.resolve()
    assert "RESULT STOPPED stopped_by_user" in output
    runs_df, per_epoch, order = load_runs(run_dirs=[run_dir])
    row = runs_df.iloc[0]
    assert (row["status"], row["stop_reason"]) == ("STOPPED", "stopped_by_user")
    assert row["epochs"] >= 2 and len(per_epoch[order[0]]) >= 4
    for checkpoint in ("last.pt", "best_val.pt", "model.pt"):
        assert (run_dir / checkpoint).is_file(), f"{checkpoint} missing from {run_dir}"

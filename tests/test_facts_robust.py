"""The readers keep what is good: a bad line costs that line (named, counted), an unreadable optional file its section.

Each test writes a real run (RunWriter, or a copy of a session fixture trained for real), breaks
one thing by hand, and checks that the run is still read and its report still renders, saying
what was skipped and why.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import warnings
from pathlib import Path

import pytest

from thesis_lib.facts import load_runs, read_events, read_scalars
from thesis_lib.layout import create_run_dir
from thesis_lib.record.schema import config_hash, scalar_columns
from thesis_lib.record.writer import RunWriter
from thesis_lib.reports import load_run_report, write_run_report_markdown

pytest_plugins = ("report_fixtures",)

COLUMNS = scalar_columns(["loss", "metric_accuracy"])
CONFIG = {"run_name": "robust", "model": {"task": "autoencoder", "encoder": "mlp", "bottleneck": "vq"},
          "trainer": {"seed": 1, "epochs": 3}}
REASON = "the test split holds no samples (0 in the data's split sizes)"


def write_run(root: Path, name: str = "robust", *, test_skipped: bool = False, incident: bool = False) -> Path:
    """A completed 3-epoch run written through RunWriter; the test pass measured or skipped, an incident after the end."""
    run_dir, run_id = create_run_dir(root, name)
    with RunWriter(run_dir, run_id, COLUMNS) as writer:
        writer.write_config(CONFIG)
        writer.event("on_start", config_hash=config_hash(CONFIG), params={"total": 10, "trainable": 10},
                     pid=os.getpid(), host=socket.gethostname(), scalar_columns=list(COLUMNS))
        for epoch, val in enumerate((1.0, 0.5, 0.7)):
            writer.scalars({"epoch": epoch, "split": "train", "step": 10 * (epoch + 1), "loss": val + 0.1,
                            "samples": 64, "throughput": 100.0})
            # The last validation pass saw no samples: its loss and metric are left out, not 0.
            last = epoch == 2
            writer.scalars({"epoch": epoch, "split": "val", "step": 10 * (epoch + 1), "loss": None if last else val,
                            "metric_accuracy": None if last else 0.5, "samples": 0 if last else 32})
            writer.event("on_epoch_end", epoch=epoch, step=10 * (epoch + 1))
            writer.flush()
        writer.event("on_train_end", status="COMPLETED", stop_reason="max_epochs", best_epoch=1,
                     epochs_completed=3, steps=30, samples=192, total_time_s=9.0)
        if test_skipped:
            writer.event("on_test_end", skipped=REASON, epoch=1, samples=0)
        else:
            writer.event("on_test_end", metrics={"loss": 0.55}, epoch=1, samples=16)
        if incident:
            writer.event("on_incident", part="figures", message="No space left on device",
                         path=str(run_dir / "figures" / "curves.png"), error_type="OSError")
    return run_dir


def insert_lines(path: Path, after: int, new_lines: list[str]) -> None:
    """Put `new_lines` after line `after` (1-based) of a text file."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:after] + [line + "\n" for line in new_lines] + lines[after:]))


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of a session fixture run: the shared one is never broken."""
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name))


def test_a_bad_line_in_the_middle_of_events_keeps_the_run_and_names_the_line(tmp_path):
    run_dir = write_run(tmp_path)
    events_path = run_dir / "facts" / "events.jsonl"
    good = len(events_path.read_text().splitlines())
    insert_lines(events_path, 2, ["{garbage from a crash"])
    insert_lines(events_path, 4, ['["a JSON list, not an event"]'])

    with pytest.warns(UserWarning) as caught:
        loaded = load_runs(run_dirs=[run_dir])
    runs_df, per_epoch, order = loaded
    assert order == [str(run_dir)]
    row = runs_df.iloc[0]
    assert (row["status"], row["stop_reason"]) == ("COMPLETED", "max_epochs")
    assert row["test.loss"] == pytest.approx(0.55) and row["best_epoch"] == 1
    message = "\n".join(str(w.message) for w in caught)
    assert f"{events_path}: lines 3, 5 (not a JSON object" in message
    assert [(b.line, b.path) for b in loaded.bad_lines[str(run_dir)]] == [(3, str(events_path)), (5, str(events_path))]
    assert "not an event" in loaded.bad_lines[str(run_dir)][1].reason
    assert loaded.skipped_runs == []

    bad = []
    assert len(read_events(run_dir, bad_lines=bad)) == good  # every good line read
    assert [b.line for b in bad] == [3, 5]


def test_a_garbage_scalars_row_is_dropped_and_counted_and_the_columns_keep_their_types(tmp_path):
    run_dir = write_run(tmp_path)
    scalars_path = run_dir / "facts" / "scalars.csv"
    width = len(COLUMNS)
    garbage = [
        ",".join(["abc", "train"] + ["1"] * (width - 2)),  # line 4: epoch not a number
        ",".join(["1", "bogus"] + ["1"] * (width - 2)),  # line 5: a split the run does not have
        ",".join(["1", "val", "20", "x", "zero"] + [""] * (width - 5)),  # line 6: text in numeric columns
        ",".join(["1.5", "val"] + [""] * (width - 2)),  # line 7: not a whole epoch
        "1,val,oops",  # line 8: too few fields
    ]
    insert_lines(scalars_path, 3, garbage)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_runs(run_dirs=[run_dir])
    frame = loaded[1][str(run_dir)]
    assert str(frame["epoch"].dtype) == "int64" and frame["epoch"].tolist() == [0, 0, 1, 1, 2, 2]
    assert set(frame["split"]) == {"train", "val"}
    assert all(frame[c].dtype.kind in "fi" for c in frame.columns if c != "split")
    row = loaded[0].iloc[0]
    assert row["epochs"] == 3 and row["best_epoch"] == 1 and row["loss.total_best"] == pytest.approx(0.5)
    message = "\n".join(str(w.message) for w in caught)
    assert f"skipped 5 bad lines in 1 file; their runs were kept:\n  {scalars_path}: lines 4, 5, 6, 7, 8" in message
    assert [b.line for b in loaded.bad_lines[str(run_dir)]] == [4, 5, 6, 7, 8]

    bad = []
    frame = read_scalars(run_dir, bad_lines=bad)
    assert [b.line for b in bad] == [4, 5, 6, 7, 8]
    assert "epoch" in bad[0].reason and "split 'bogus'" in bad[1].reason and "3 fields" in bad[4].reason
    assert str(frame["epoch"].dtype) == "int64" and len(frame) == 6


def test_a_garbled_scalars_header_is_read_with_the_on_start_columns(tmp_path):
    run_dir = write_run(tmp_path)
    scalars_path = run_dir / "facts" / "scalars.csv"
    lines = scalars_path.read_text().splitlines(keepends=True)
    scalars_path.write_text("\x00\x00garbage\n" + "".join(lines[1:]))
    with pytest.warns(UserWarning, match=r"scalars\.csv: line 1 \(not a header"):
        loaded = load_runs(run_dirs=[run_dir])
    assert loaded.per_epoch[str(run_dir)]["epoch"].tolist() == [0, 0, 1, 1, 2, 2]
    assert loaded.runs_df.iloc[0]["loss.total_best"] == pytest.approx(0.5)


TELEMETRY_HEADER = "t,cpu_pct,rss_mb,gpu0_util_pct,gpu0_mem_used_mb,gpu0_mem_total_mb,gpu0_power_w,gpu0_temp_c"


@pytest.mark.parametrize("fault", ["steps", "telemetry"])
def test_a_bad_steps_or_telemetry_row_still_renders_the_report_and_names_the_row(autoencoder_run, tmp_path, fault):
    run_dir = copy_run(autoencoder_run, tmp_path)
    rows = [f"{0.5 * i:.1f},100.0,2000.0,50.0,{1000.0 + i},80000.0,{200.0 + i},60.0" for i in range(8)]
    telemetry_path = run_dir / "facts" / "telemetry.csv"
    telemetry_path.write_text("\n".join([TELEMETRY_HEADER, *rows]) + "\n")  # a valid GPU telemetry file
    if fault == "steps":
        path = run_dir / "facts" / "steps.csv"
        assert len(path.read_text().splitlines()) > 4  # the fixture syncs every step
        insert_lines(path, 3, ["nan?,step,t,loss,lr"])  # line 4: right shape, no numbers
        line = 4
    else:
        path = telemetry_path
        insert_lines(path, 5, ["1,2,3,4,5,6,7,8,9,10,11,12"])  # line 6: too many fields
        line = 6

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = write_run_report_markdown(run_dir, tmp_path / "report")
    assert not [w for w in caught if path.name in str(w.message)]  # the report states the bad line instead
    markdown = paths["markdown"].read_text()
    assert paths["telemetry"].is_file() and paths["curves"].is_file()
    assert "## Log tail" in markdown  # the whole report, to its last section
    assert "**Skipped unreadable lines.** 1 line of the run's facts could not be read" in markdown
    assert f"{path.name} line {line}" in markdown
    report = load_run_report(run_dir)
    assert [(b.path, b.line) for b in report.bad_lines] == [(str(path), line)]
    assert report.telemetry.has_gpu and report.telemetry.samples == 8  # the good rows are all there
    assert report.metrics.power_peak_w == pytest.approx(207.0)
    assert len(report.steps_table) > 2 and report.steps_table["t"].dtype.kind == "f"


def test_a_run_directory_without_events_is_listed_among_the_skipped_runs(tmp_path):
    sweep = tmp_path / "sweep"
    good = write_run(sweep, "good")
    lost = write_run(sweep, "lost")
    (lost / "facts" / "events.jsonl").unlink()

    with pytest.warns(UserWarning, match=rf"skipped 1 of 2 run directories:\n  {lost}: .*events\.jsonl is missing"):
        loaded = load_runs(sweep_dir=sweep)
    assert loaded.order == [str(good)]
    assert [(s.run_dir, "events.jsonl is missing" in s.reason) for s in loaded.skipped_runs] == [(str(lost), True)]


def _as_directory(path: Path) -> None:
    """Make `path` unreadable as a file: a folder by its name (permissions do not stop root)."""
    if path.exists():
        path.unlink()
    path.mkdir(parents=True)


@pytest.mark.parametrize("part, says", [
    ("logs/stdout.log", "## Log tail\n\nlogs/stdout.log could not be read: Is a directory."),
    ("facts/telemetry.csv", "No GPU telemetry: facts/telemetry.csv could not be read (Is a directory)."),
    ("facts/steps.csv", "facts/steps.csv could not be read (Is a directory): the loss panel shows per-epoch losses."),
    ("model_info.json", "**Could not read model_info.json.** model_info.json could not be read: not valid JSON"),
    ("report/telemetry.png", "telemetry.png could not be drawn: IsADirectoryError"),
], ids=["stdout_log", "telemetry_csv", "steps_csv", "model_info_json", "telemetry_png"])
def test_an_unreadable_optional_file_never_sinks_the_report_its_section_says_why(autoencoder_run, tmp_path, part,
                                                                                  says):
    run_dir = copy_run(autoencoder_run, tmp_path)
    if part == "model_info.json":
        (run_dir / part).write_text('{"parameters": {"total": 1')  # cut short
    else:
        _as_directory(run_dir / part)
    paths = write_run_report_markdown(run_dir, run_dir / "report")
    markdown = paths["markdown"].read_text()
    assert says in markdown
    assert "## Log tail" in markdown and "- **Status:** COMPLETED (max_epochs)" in markdown
    report = load_run_report(run_dir)
    if part == "model_info.json":  # the parameter counts come from the on_start event instead
        assert report.params_total is not None and report.params_total > 0


def test_a_skipped_test_pass_is_read_as_no_metrics_and_reported_with_its_reason(tmp_path):
    run_dir = write_run(tmp_path, test_skipped=True)

    runs_df, per_epoch, _ = load_runs(run_dirs=[run_dir])
    row = runs_df.iloc[0]
    assert row["test.skipped"] == REASON
    assert not [c for c in runs_df.columns if c.startswith("test.") and c != "test.skipped"]  # no metrics, no zeros
    assert math.isnan(row["loss.total_final"])  # the last val pass saw no samples: missing, not 0
    assert row["loss.total_best"] == pytest.approx(0.5)
    assert math.isnan(per_epoch[str(run_dir)]["val_loss"].iloc[-1])

    report = load_run_report(run_dir)
    assert report.test_metrics == {} and report.test_skipped == REASON
    assert report.metrics.loss_final_val == pytest.approx(0.5)  # the last measured one; the absent one is skipped
    assert f"## Test metrics\n\nThe test pass was skipped: {REASON}." in report.section("test")
    assert "**Test pass skipped.**" in report.section("findings")


def test_an_incident_after_the_end_is_a_finding_and_leaves_the_status_alone(tmp_path):
    run_dir = write_run(tmp_path, incident=True)

    runs_df, _, _ = load_runs(run_dirs=[run_dir])
    assert (runs_df.iloc[0]["status"], runs_df.iloc[0]["stop_reason"]) == ("COMPLETED", "max_epochs")
    report = load_run_report(run_dir)
    assert report.status == "COMPLETED" and report.test_metrics == {"loss": 0.55}
    assert [(i["part"], i["error_type"]) for i in report.incidents] == [("figures", "OSError")]
    (incident,) = [f for f in report.findings if f.kind == "incident"]
    assert incident.title == "Incident: figures" and incident.level == "warning"
    assert "No space left on device" in incident.text and str(run_dir / "figures" / "curves.png") in incident.text
    assert "**Incident: figures.** figures failed" in report.to_markdown()

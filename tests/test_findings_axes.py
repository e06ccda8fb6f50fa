"""Findings on two axes: one stop cause and one outcome per ended run, never a pair the table excludes.

Every case is a run directory written with RunWriter from known losses and read back with
load_run_report, so the rules are checked on what a report really sees. Each run must carry
exactly one "stop" and one "outcome" finding, agree with `stop_cause` / `outcome`, and no other
finding may state an outcome of its own.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from thesis_lib.config import Config
from thesis_lib.record.schema import scalar_columns
from thesis_lib.record.writer import RunWriter
from thesis_lib.reports import load_run_report
from thesis_lib.reports.findings import (
    CONVERGED_REL_CHANGE,
    CONVERGENCE_WINDOW,
    EXCLUDED,
    Outcome,
    StopCause,
    outcome,
    stop_cause,
)

RUN_ID = "run_20260101-000000_axes_abcd"
COLUMNS = scalar_columns(["loss"])
DEAD_PID = 2**22 + 4321  # above Linux's pid_max: never a live process
TITLES = {Outcome.CONVERGED: "Converged", Outcome.STILL_IMPROVING: "Still improving",
          Outcome.OVERFITTING: "Over-fitting", Outcome.DIVERGED: "Diverged",
          Outcome.UNDETERMINED: "Outcome undetermined"}
# What only the outcome finding may say; a plateau, an LR cut or a stop finding saying it would be a second outcome.
OUTCOME_WORDS = ("converged", "still improving", "over-fitting", "overfitting", "diverged", "more epochs would")

# Six healthy epochs: the best val loss moves 0.50 % over the last three (converged).
HEALTHY = ([1.0, 0.8, 0.7, 0.69, 0.685, 0.68], [1.1, 0.9, 0.8, 0.799, 0.798, 0.796])
NAN_ERROR = {"error_type": "NonFiniteLossError", "message": "training loss became nan at step 61 in epoch 6",
             "traceback": "Traceback...\nNonFiniteLossError: training loss became nan"}
OOM_ERROR = {"error_type": "RuntimeError", "message": "CUDA out of memory",
             "traceback": "File x\nRuntimeError: CUDA out of memory"}


def write_run(root: Path, train, val, *, status="COMPLETED", stop_reason="max_epochs", exception=None, ended=True,
              pid=None, patience=2) -> Path:
    """A run directory with these per-epoch losses (val None: no validation rows at all)."""
    run_dir = root / RUN_ID
    cfg = Config().to_dict()
    cfg["trainer"].update(epochs=len(train), early_stopping_patience=patience)
    with RunWriter(run_dir, RUN_ID, COLUMNS) as writer:
        writer.write_config(cfg)
        writer.write_env({"host": socket.gethostname(), "gpus": []})
        writer.event("on_start", params={"total": 1000, "trainable": 1000}, pid=pid or os.getpid(),
                     host=socket.gethostname(), device="cpu", scalar_columns=list(COLUMNS))
        for e, train_loss in enumerate(train):
            common = {"epoch": e, "step": 10 * (e + 1), "t": 10.0 * (e + 1), "lr": 1e-3, "epoch_time_s": 10.0}
            writer.scalars({**common, "split": "train", "loss": train_loss, "samples": 100, "throughput": 10.0})
            if val is not None:
                writer.scalars({**common, "split": "val", "loss": val[e], "samples": 20, "throughput": 50.0})
            writer.event("on_epoch_end", epoch=e, step=10 * (e + 1))
        if exception:
            writer.event("on_exception", **exception)
        if ended:
            writer.event("on_train_end", status=status, stop_reason=stop_reason, epochs_completed=len(train),
                         steps=10 * len(train), samples=100 * len(train), total_time_s=10.0 * len(train))
    return run_dir


def axes(report):
    """The run's one stop finding and one outcome finding, checked against the pure functions and the rest."""
    stops = [f for f in report.findings if f.kind == "stop"]
    outcomes = [f for f in report.findings if f.kind == "outcome"]
    assert len(stops) == 1 and len(outcomes) == 1, [(f.kind, f.title) for f in report.findings]
    (stop,), (ended,) = stops, outcomes
    assert ended.title == TITLES[outcome(report)]
    assert (stop_cause(report), outcome(report)) not in EXCLUDED
    for other in report.findings:
        if other.kind != "outcome":
            said = f"{other.title} {other.text}".lower()
            assert not any(word in said for word in OUTCOME_WORDS), (other.title, other.text)
    return stop, ended


# -- one row per stop cause ----------------------------------------------------------------------------

STOPS = [
    # id, status, stop_reason, exception, ended, pid, cause, title, cited in the evidence
    ("epoch_limit", "COMPLETED", "max_epochs", None, True, None, StopCause.EPOCH_LIMIT,
     "Reached the epoch limit", "stop_reason = max_epochs; epochs completed = 6"),
    ("early_stopping", "STOPPED", "early_stopping", None, True, None, StopCause.EARLY_STOPPING,
     "Stopped early", "trainer.early_stopping_patience = 2; last epoch 5 val loss 0.796"),
    ("user_keyboard", "STOPPED", "interrupted", None, True, None, StopCause.USER,
     "Interrupted", "stop_reason = interrupted; last epoch in scalars.csv: 5"),
    ("user_dashboard", "STOPPED", "stopped_by_user", None, True, None, StopCause.USER,
     "Stopped by the user", "stop_reason = stopped_by_user; last epoch in scalars.csv: 5"),
    ("signal", "STOPPED", "signal: SIGTERM", None, True, None, StopCause.SIGNAL,
     "Stopped by SIGTERM", "stop_reason = signal: SIGTERM; last epoch in scalars.csv: 5"),
    ("nan", "FAILED", "non_finite_loss", NAN_ERROR, True, None, StopCause.NAN,
     "Loss became NaN/inf", "last finite val loss 0.796 (epoch 5)"),
    ("nan_without_end_event", None, None, NAN_ERROR, False, None, StopCause.NAN,
     "Loss became NaN/inf", "on_exception: training loss became nan at step 61 in epoch 6"),
    ("failed", "FAILED", "exception: RuntimeError", OOM_ERROR, True, None, StopCause.FAILED,
     "Failed", "RuntimeError: CUDA out of memory"),
    ("crash", None, None, None, False, DEAD_PID, StopCause.CRASH,
     "Crashed", "no on_train_end after on_start; 6 epochs in scalars.csv"),
    ("unknown", "COMPLETED", "budget_spent", None, True, None, StopCause.UNKNOWN,
     "Stopped", "stop_reason 'budget_spent'"),
]


@pytest.mark.parametrize("status, reason, exception, ended, pid, cause, title, cited",
                         [row[1:] for row in STOPS], ids=[row[0] for row in STOPS])
def test_each_stop_cause_is_one_finding_citing_its_numbers(tmp_path, status, reason, exception, ended, pid, cause,
                                                          title, cited):
    report = load_run_report(write_run(tmp_path, *HEALTHY, status=status, stop_reason=reason, exception=exception,
                                       ended=ended, pid=pid))
    stop, _ = axes(report)
    assert stop_cause(report) is cause
    assert stop.title == title and cited in stop.evidence
    # The curve is a converged one: only the NaN decides otherwise (see the exclusion rows).
    assert outcome(report) is (Outcome.DIVERGED if cause is StopCause.NAN else Outcome.CONVERGED)


def test_the_stop_rows_cover_every_stop_cause():
    assert {row[6] for row in STOPS} == set(StopCause)


def test_a_running_run_has_neither_axis_yet(tmp_path):
    report = load_run_report(write_run(tmp_path, *HEALTHY, ended=False))
    assert report.status == "RUNNING" and (stop_cause(report), outcome(report)) == (None, None)
    assert not [f for f in report.findings if f.kind in ("stop", "outcome")]


# -- one row per outcome state -------------------------------------------------------------------------

OUTCOMES = [
    # id, train, val, outcome, cited in the evidence
    ("converged", *HEALTHY, Outcome.CONVERGED, "best val loss 0.8 by epoch 2 -> 0.796 by epoch 5 (0.50 %)"),
    ("still_improving", [1.0, 0.9, 0.8, 0.7, 0.6], [1.1, 1.0, 0.9, 0.8, 0.7], Outcome.STILL_IMPROVING,
     "best val loss 1 by epoch 1 -> 0.7 by epoch 4 (30.00 %)"),
    # The ResNet run that read "still improving": its last val loss jumped 56 % while train kept falling.
    ("overfitting_one_jump", [1.023, 0.7638, 0.5002, 0.3222], [0.9623, 0.7888, 0.6557, 1.0262], Outcome.OVERFITTING,
     "val loss 0.6557 (epoch 2) -> 1.026 (epoch 3), +56.50 %; train loss 0.5002 -> 0.3222"),
    ("overfitting_slow_rise", [1.0, 0.8, 0.6, 0.5, 0.45, 0.4], [1.0, 0.8, 0.7, 0.69, 0.70, 0.71], Outcome.OVERFITTING,
     "val rose and train fell in each of the last 2 epochs"),
    # A mid-run plateau, then a new best and over-fitting: the plateau finding must not restate the end.
    ("overfitting_after_plateau", [0.9, 0.7, 0.69, 0.68, 0.67, 0.5, 0.45, 0.4],
     [1.0, 0.8, 0.799, 0.798, 0.797, 0.6, 0.62, 0.66], Outcome.OVERFITTING, "+10.00 %"),
    ("diverged", [1.0, 0.8, 0.7, 0.9, 1.2], [1.0, 0.85, 0.8, 1.0, 1.3], Outcome.DIVERGED,
     "train loss 0.7 (epoch 2) -> 1.2 (epoch 4), +71.43 %; val loss 0.8 (epoch 2) -> 1.3 (epoch 4), +62.50 %"),
    ("undetermined_too_few_epochs", [1.0, 0.9], [1.0, 0.9], Outcome.UNDETERMINED,
     "val loss 1 (epoch 0), 0.9 (epoch 1) (scalars.csv)"),
    ("undetermined_val_up_train_flat", [1.0, 0.8, 0.7, 0.70, 0.72], [1.0, 0.8, 0.7, 0.75, 0.76], Outcome.UNDETERMINED,
     "val loss 0.7 (epoch 2) -> 0.76 (epoch 4), +8.57 %; train loss 0.7 -> 0.72"),
    ("undetermined_no_val_loss", [1.0, 0.9, 0.8, 0.7, 0.6], None, Outcome.UNDETERMINED, "no finite val loss in scalars.csv"),
]


@pytest.mark.parametrize("train, val, expected, cited", [row[1:] for row in OUTCOMES], ids=[row[0] for row in OUTCOMES])
def test_each_outcome_is_one_finding_citing_its_numbers(tmp_path, train, val, expected, cited):
    report = load_run_report(write_run(tmp_path, train, val))
    _, ended = axes(report)
    assert outcome(report) is expected
    assert cited in ended.evidence, ended.evidence
    assert ended.level == ("warning" if expected in (Outcome.OVERFITTING, Outcome.DIVERGED) else "info")


def test_the_outcome_rows_cover_every_outcome():
    assert {row[3] for row in OUTCOMES} == set(Outcome)


def test_an_undetermined_outcome_says_why(tmp_path):
    # Guessing from two epochs is what the UNDETERMINED value exists to avoid: the text names the need.
    _, ended = axes(load_run_report(write_run(tmp_path, [1.0, 0.9], [1.0, 0.9])))
    assert f"needs at least {CONVERGENCE_WINDOW + 1}" in ended.text


# -- one row per excluded pair ---------------------------------------------------------------------------

_STOPPED_BY = {StopCause.EARLY_STOPPING: {"status": "STOPPED", "stop_reason": "early_stopping", "patience": 1},
               StopCause.NAN: {"status": "FAILED", "stop_reason": "non_finite_loss", "exception": NAN_ERROR}}
# Per excluded pair: losses whose curve alone reads as the excluded outcome.
_READS_AS = {
    # Patience 1 with a best one epoch before the end: the window still shows a 50 % drop.
    (StopCause.EARLY_STOPPING, Outcome.STILL_IMPROVING): ([1.0, 0.8, 0.6, 0.4, 0.39], [1.0, 0.8, 0.6, 0.4, 0.41]),
    (StopCause.EARLY_STOPPING, Outcome.UNDETERMINED): ([1.0, 0.8, 0.7], [1.0, 0.8, 0.81]),
    (StopCause.NAN, Outcome.CONVERGED): HEALTHY,
    (StopCause.NAN, Outcome.STILL_IMPROVING): ([1.0, 0.9, 0.8, 0.7, 0.6], [1.1, 1.0, 0.9, 0.8, 0.7]),
    (StopCause.NAN, Outcome.OVERFITTING): ([1.0, 0.8, 0.6, 0.5, 0.4, 0.3], [1.0, 0.8, 0.7, 0.75, 0.8, 0.9]),
    (StopCause.NAN, Outcome.UNDETERMINED): ([1.0, 0.9], [1.0, 0.9]),
}


@pytest.mark.parametrize("pair", list(EXCLUDED), ids=[f"{c.value}-{o.value}" for c, o in EXCLUDED])
def test_an_excluded_pair_is_never_reported_and_the_table_says_what_is(tmp_path, pair):
    cause, excluded = pair
    train, val = _READS_AS[pair]
    # At the epoch limit nothing is excluded: the curve alone reads as the excluded outcome.
    free = load_run_report(write_run(tmp_path / "limit", train, val))
    assert outcome(free) is excluded and axes(free)[1].title == TITLES[excluded]
    options = dict(_STOPPED_BY[cause])
    report = load_run_report(write_run(tmp_path / "stopped", train, val, patience=options.pop("patience", 2),
                                       **options))
    _, ended = axes(report)
    assert stop_cause(report) is cause and outcome(report) is EXCLUDED[pair].instead
    assert ended.title == TITLES[EXCLUDED[pair].instead]
    assert TITLES[excluded] not in [f.title for f in report.findings]
    assert EXCLUDED[pair].reason in ended.text  # the finding says why the curve's reading gave way


def test_the_exclusion_table_is_the_documented_one_and_replaces_with_an_allowed_outcome():
    assert set(EXCLUDED) == set(_READS_AS)  # a row added or dropped needs its own test row
    for (cause, _), exclusion in EXCLUDED.items():
        assert (cause, exclusion.instead) not in EXCLUDED and exclusion.reason


def test_early_stopping_on_a_rising_val_loss_is_over_fitting_not_still_improving(tmp_path):
    # The contradiction the report once printed: "Stopped early", "Over-fitting" and "Still
    # improving ... more epochs would likely lower it further" for one run.
    train, val = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3], [1.0, 0.9, 0.8, 0.7, 0.72, 0.75]
    window_drop = (min(val[:-CONVERGENCE_WINDOW]) - min(val)) / min(val[:-CONVERGENCE_WINDOW])
    assert window_drop >= CONVERGED_REL_CHANGE  # the best did fall over the window: the old rule's trap
    report = load_run_report(write_run(tmp_path, train, val, status="STOPPED", stop_reason="early_stopping"))
    stop, ended = axes(report)
    assert (stop.title, ended.title) == ("Stopped early", "Over-fitting")
    assert (stop_cause(report), outcome(report)) == (StopCause.EARLY_STOPPING, Outcome.OVERFITTING)
    assert "Validation loss did not improve for 2 epochs after its best 0.7 at epoch 3" in stop.text
    assert ended.evidence == ("val loss 0.7 (epoch 3) -> 0.75 (epoch 5), +7.14 %; train loss 0.5 -> 0.3 over the same "
                              "epochs; val rose and train fell in each of the last 2 epochs (scalars.csv)")
    assert not any("still improving" in f"{f.title} {f.text}".lower() or "more epochs would" in f.text
                   for f in report.findings)

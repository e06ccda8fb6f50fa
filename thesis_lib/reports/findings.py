"""Findings: the written analysis of a run, drawn deterministically from its facts alone.

The seed asked an LLM to comment on a run; here each finding is a rule over the per-epoch table
and the key metrics, and each cites the numbers it rests on (`evidence`), so a reader can check
it against scalars.csv, telemetry.csv or events.jsonl. The thresholds are module constants.
Titles, texts and evidence are plain text (the template escapes them), never Markdown.

An ended run sits on two axes, one finding and one value each, so a report cannot call one run
"stopped early", "over-fitting" and "still improving" at once:

- why it stopped (`StopCause`, kind "stop"): the epoch limit, early stopping, the user, a stop
  signal, a NaN/inf loss, an exception, a crash, or a stop reason this version does not know
  (quoted as recorded). A plateau is not a stop cause: the trainer has no plateau stop
  (optim.scheduler = plateau only cuts the learning rate, an LR-cut finding). Early stopping is
  its stop on a validation plateau, and whether that plateau was flat or rising is the outcome.
- how it ended (`Outcome`, kind "outcome"): converged, still improving, over-fitting, diverged,
  or undetermined with the reason (too few epochs, no validation loss, a rise neither rule explains).

The outcome is read from the curves, then checked against `EXCLUDED`, the pairs that cannot both
hold (early stopping fires on a validation loss that stopped improving, so that run was not still
improving): an excluded reading gives way to the row's replacement, and the finding gives the
row's reason. A RUNNING run has neither value yet. The other findings (incidents, a skipped test
pass, unreadable facts, mid-run plateaus, LR cuts, resources) are observations on the side and
never state either axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..layout import (
    CONFIG_FILE,
    ENV_FILE,
    EVENTS_FILE,
    MODEL_INFO_FILE,
    SCALARS_FILE,
    STDOUT_LOG,
    STEPS_FILE,
    TELEMETRY_FILE,
)
from .report_data import RunReport

__all__ = [
    "CONVERGED_REL_CHANGE",
    "CONVERGENCE_WINDOW",
    "DIVERGED_REL_RISE",
    "EXCLUDED",
    "GPU_UNDERUSED_PCT",
    "INPUT_BOUND_FRAC",
    "OVERFIT_EPOCHS",
    "OVERFIT_REL_RISE",
    "PLATEAU_MIN_EPOCHS",
    "PLATEAU_REL_CHANGE",
    "Exclusion",
    "Finding",
    "Outcome",
    "StopCause",
    "find",
    "outcome",
    "stop_cause",
]

CONVERGENCE_WINDOW = 3  # epochs looked back to judge convergence
CONVERGED_REL_CHANGE = 0.01  # best val loss improving less than this over the window: converged
PLATEAU_REL_CHANGE = 0.01  # ... over at least PLATEAU_MIN_EPOCHS epochs in mid-run: a plateau
PLATEAU_MIN_EPOCHS = 3
# Over-fitting at the end: the training loss fell since the best epoch, and the validation loss
# either ended more than OVERFIT_REL_RISE above its best or rose in each of the last
# OVERFIT_EPOCHS epochs while the training loss fell in each. A smaller, one-off rise is read as
# noise around a converged loss rather than a trend.
OVERFIT_EPOCHS = 2
OVERFIT_REL_RISE = 0.05
# Diverged: both losses ended more than this above their lowest. The training loss is what the
# optimiser minimises, so its rise means the optimiser lost ground; val alone rising is over-fitting.
DIVERGED_REL_RISE = 0.10
INPUT_BOUND_FRAC = 0.3  # mean share of step time spent waiting for data
GPU_UNDERUSED_PCT = 50.0
# Evidence cites the facts files by their short names ("scalars.csv").
_EVENTS, _SCALARS, _TELEMETRY = (PurePosixPath(path).name for path in (EVENTS_FILE, SCALARS_FILE, TELEMETRY_FILE))


class StopCause(str, Enum):
    """Why an ended run stopped, one value per run; `stop_cause` maps status and stop_reason onto it."""

    EPOCH_LIMIT = "epoch_limit"  # stop_reason max_epochs
    EARLY_STOPPING = "early_stopping"  # early_stopping: patience epochs without a new best val loss
    USER = "user"  # interrupted (KeyboardInterrupt) or stopped_by_user (a dashboard's Stop)
    SIGNAL = "signal"  # "signal: SIGTERM" (SIGINT, SIGUSR1)
    NAN = "nan"  # non_finite_loss: the loss became NaN or infinite
    FAILED = "failed"  # "exception: <type>", or an on_exception with no end event
    CRASH = "crash"  # no end event and the process is gone
    UNKNOWN = "unknown"  # a stop_reason this version does not know (another trainer's): quoted as recorded


class Outcome(str, Enum):
    """How an ended run's training stood at its end, one value per run; `outcome` decides it."""

    CONVERGED = "converged"  # the best val loss moved < CONVERGED_REL_CHANGE over the window
    STILL_IMPROVING = "still_improving"  # it moved more, and the last val loss is near the best
    OVERFITTING = "overfitting"  # val ended above its best while train fell since the best epoch
    DIVERGED = "diverged"  # both losses ended well above their lowest, or the loss became NaN/inf
    UNDETERMINED = "undetermined"  # the facts do not decide; the finding says why


class Exclusion(NamedTuple):
    """Why a (stop cause, outcome) pair cannot both hold, and the outcome reported in its place."""

    reason: str
    instead: Outcome


_NAN_REASON = "a loss that became NaN or infinite ended training diverged, whatever the finite epochs before it showed"
# The pairs that exclude each other. The curves are read without the stop cause; a reading that
# lands on one of these keys is replaced by `instead`, and the outcome finding quotes `reason`.
EXCLUDED: dict[tuple[StopCause, Outcome], Exclusion] = {
    # The window can still show a large drop when the patience is shorter than it (patience 1, a
    # best two epochs before the end): the stop itself says the improvement had ended.
    (StopCause.EARLY_STOPPING, Outcome.STILL_IMPROVING): Exclusion(
        "early stopping fires only after the validation loss went trainer.early_stopping_patience epochs without "
        "a new best, so it was not still improving when the run ended", Outcome.CONVERGED),
    # Fewer epochs than the window, or no validation loss in scalars.csv: the trainer saw the val
    # losses the curve lacks and judged them stalled.
    (StopCause.EARLY_STOPPING, Outcome.UNDETERMINED): Exclusion(
        "early stopping is itself the evidence the curve lacks: the validation loss went "
        "trainer.early_stopping_patience epochs without a new best", Outcome.CONVERGED),
    # The finite epochs before a NaN can look converged, improving or over-fitted; the NaN decides.
    (StopCause.NAN, Outcome.CONVERGED): Exclusion(_NAN_REASON, Outcome.DIVERGED),
    (StopCause.NAN, Outcome.STILL_IMPROVING): Exclusion(_NAN_REASON, Outcome.DIVERGED),
    (StopCause.NAN, Outcome.OVERFITTING): Exclusion(_NAN_REASON, Outcome.DIVERGED),
    (StopCause.NAN, Outcome.UNDETERMINED): Exclusion(_NAN_REASON, Outcome.DIVERGED),
}


@dataclass
class Finding:
    """One statement about the run and the numbers behind it.

    Attributes:
        title: a few words ("Converged", "Input-bound").
        text: the statement, one or two sentences.
        evidence: the figures it rests on and where they come from.
        kind: a stable identifier for the rule: "stop" and "outcome" (the two axes, exactly one
            each for an ended run), "incident", "test_skipped", "unreadable", "bad_lines",
            "plateau", "lr_cut", "input_bound", "gpu_underused", "energy".
        level: "info" or "warning".
    """

    title: str
    text: str
    evidence: str
    kind: str
    level: str = "info"


def find(report: RunReport) -> list[Finding]:
    """Every finding the run's facts support, most important first.

    Why it stopped and how it ended (one finding each, none while RUNNING), then what went wrong
    on the side (incidents, a skipped test pass, facts that could not be read), then observations
    on training, then resources.

    Args:
        report: the run's RunReport.

    Returns:
        The findings; empty when no rule applies (e.g. a run still in its first epochs).
    """
    rules = (_stop, _outcome, _incidents, _test_skipped, _unreadable, _bad_lines, _plateaus, _lr_cuts,
             _input_bound, _gpu_underused, _energy)
    return [finding for rule in rules for finding in rule(report)]


# -- why it stopped ----------------------------------------------------------------------------------

_STOP_REASONS = {"max_epochs": StopCause.EPOCH_LIMIT, "early_stopping": StopCause.EARLY_STOPPING,
                 "interrupted": StopCause.USER, "stopped_by_user": StopCause.USER,
                 "non_finite_loss": StopCause.NAN}


def stop_cause(report: RunReport) -> StopCause | None:
    """Why the run stopped, from its status and stop_reason (the training loop's values).

    Args:
        report: the run's RunReport.

    Returns:
        The run's one StopCause; UNKNOWN for a stop_reason this version does not know; None while
        the run is RUNNING.
    """
    if report.status == "RUNNING":
        return None
    if report.status == "CRASHED":
        return StopCause.CRASH
    reason = report.stop_reason or ""
    if reason in _STOP_REASONS:
        return _STOP_REASONS[reason]
    if report.status == "FAILED":
        # Without an end event the reason is the on_exception's "<type>: <message>".
        non_finite = (report.exception or {}).get("error_type") == "NonFiniteLossError"
        return StopCause.NAN if non_finite else StopCause.FAILED
    return StopCause.SIGNAL if reason.startswith("signal: ") else StopCause.UNKNOWN


def _stop(report: RunReport) -> list[Finding]:
    """Why the run ended: the one StopCause, worded with its numbers."""
    cause = stop_cause(report)
    if cause is None:
        return []
    cfg, done = report.config, report.epochs_completed
    planned = f"{done} of {cfg.epochs}" if cfg.epochs is not None else str(done)
    reason = report.stop_reason or ""
    last_epoch = f"last epoch in {_SCALARS}: {_last_epoch(report)}"
    if cause is StopCause.CRASH:
        text = (f"The run has no end event: {reason}. Its facts up to the last written epoch ({_last_epoch(report)}) "
                "are intact; trainer.resume_from continues it from last.pt.")
        evidence = f"{_EVENTS}: no on_train_end after on_start; {done} epochs in {_SCALARS}"
        return [Finding("Crashed", text, evidence, "stop", "warning")]
    if cause is StopCause.NAN:
        return [_non_finite(report)]
    if cause is StopCause.FAILED:
        error = report.exception or {}
        where = f"on_exception at t = {_seconds(error.get('t'))}" if error else "on_train_end"
        last_line = (error.get("traceback") or "").strip().splitlines()[-1:] or [""]
        return [Finding("Failed", f"The run failed after {planned} epochs with {error.get('error_type', 'an error')}: "
                        f"{error.get('message', reason)}", f"{where}; {last_line[0]}".rstrip("; "), "stop", "warning")]
    if cause is StopCause.EARLY_STOPPING:
        m = report.metrics
        patience = cfg.early_stopping_patience if cfg.early_stopping_patience is not None else "the configured"
        text = (f"Validation loss did not improve for {_count(patience, 'epoch')} after its best "
                f"{_n(m.loss_best_val)} at epoch {m.best_epoch}; {planned} epochs ran.")
        last = _last_epoch(report)
        since = (f", {_count(last - m.best_epoch, 'epoch')} after the best"
                 if last is not None and m.best_epoch is not None else "")
        evidence = (f"trainer.early_stopping_patience = {cfg.early_stopping_patience}; last epoch {last} "
                    f"val loss {_n(m.loss_final_val)}{since} ({_SCALARS})")
        return [Finding("Stopped early", text, evidence, "stop")]
    if cause is StopCause.USER:
        if reason == "interrupted":
            return [Finding("Interrupted", f"Stopped by the user (KeyboardInterrupt) after {planned} epochs; facts and "
                            "checkpoints up to the last finished epoch were written.",
                            f"stop_reason = interrupted; {last_epoch}", "stop")]
        return [Finding("Stopped by the user", f"The dashboard's Stop ended the run after {planned} epochs; facts and "
                        "checkpoints up to the last finished epoch were written.",
                        f"stop_reason = {reason}; {last_epoch}", "stop")]
    if cause is StopCause.SIGNAL:
        name = reason.split(": ", 1)[1]
        who = _SIGNAL_SENDERS.get(name, "A process")
        return [Finding(f"Stopped by {name}", f"{who} sent {name} after {planned} epochs; the run finished its "
                        "step and wrote last.pt, model.pt (the best epoch's weights) and its facts before it ended.",
                        f"stop_reason = {reason}; {last_epoch}", "stop")]
    if cause is StopCause.EPOCH_LIMIT:
        return [Finding("Reached the epoch limit", f"All {planned} epochs ran (trainer.epochs = {cfg.epochs}).",
                        f"stop_reason = max_epochs; epochs completed = {done}", "stop")]
    return [Finding("Stopped", f"The run ended with status {report.status} ({reason or 'no reason recorded'}) "
                    f"after {planned} epochs.", f"on_train_end: status {report.status}, stop_reason {reason!r}", "stop")]


# Who usually sends a stop signal, for the finding's wording.
_SIGNAL_SENDERS = {
    "SIGTERM": "The batch system or container runtime (SLURM, HTCondor, Kubernetes, docker stop)",
    "SIGINT": "The user (Ctrl-C or a notebook's Interrupt)",
    "SIGUSR1": "SLURM's --signal warning (the job's time is running out)",
}


def _non_finite(report: RunReport) -> Finding:
    """The NaN/inf stop: the message, the last finite losses and how the gradient norm moved."""
    message = (report.exception or {}).get("message") or "the loss became NaN or infinite"
    train, val = _series(report.epochs, "train_loss"), _series(report.epochs, "val_loss")
    evidence = [f"on_exception: {message}"]
    if len(train):
        evidence.append(f"last finite train loss {_n(train.iloc[-1])} (epoch {train.index[-1]})")
    if len(val):
        evidence.append(f"last finite val loss {_n(val.iloc[-1])} (epoch {val.index[-1]})")
    grad = _series(report.epochs, "grad_norm")
    hint = ""
    if len(grad) >= 2:
        evidence.append(f"grad norm {_n(grad.iloc[0])} (epoch {grad.index[0]}) -> "
                        f"{_n(grad.iloc[-1])} (epoch {grad.index[-1]})")
        if grad.iloc[-1] > 10 * grad.iloc[0]:
            hint = " The gradient norm grew more than tenfold before it: lower the learning rate or set optim.grad_clip."
    return Finding("Loss became NaN/inf", f"Training stopped because {message}.{hint}", "; ".join(evidence),
                   "stop", "warning")


# -- how it ended ------------------------------------------------------------------------------------

_TITLES = {Outcome.CONVERGED: "Converged", Outcome.STILL_IMPROVING: "Still improving",
           Outcome.OVERFITTING: "Over-fitting", Outcome.DIVERGED: "Diverged",
           Outcome.UNDETERMINED: "Outcome undetermined"}


@dataclass(frozen=True)
class _Judgement:
    """An outcome with its finding's text and evidence; `note` is the reading in a clause, for a replacement to cite."""

    outcome: Outcome
    text: str
    evidence: str
    note: str


def outcome(report: RunReport) -> Outcome | None:
    """How the run's training stood at its end, consistent with why it stopped.

    The curves are read first (`_read_curves`: diverged, over-fitting, then the best val loss's
    change over the last CONVERGENCE_WINDOW epochs); a reading that `EXCLUDED` rules out for the
    run's stop cause gives way to that row's `instead`.

    Args:
        report: the run's RunReport.

    Returns:
        The run's one Outcome (UNDETERMINED when the facts do not decide); None while RUNNING.
    """
    judged = _judge(report)
    return None if judged is None else judged.outcome


def _outcome(report: RunReport) -> list[Finding]:
    """How the run ended: the one Outcome, worded with its numbers."""
    judged = _judge(report)
    if judged is None:
        return []
    level = "warning" if judged.outcome in (Outcome.OVERFITTING, Outcome.DIVERGED) else "info"
    return [Finding(_TITLES[judged.outcome], judged.text, judged.evidence, "outcome", level)]


def _judge(report: RunReport) -> _Judgement | None:
    """The outcome the curves support, replaced per `EXCLUDED` when the stop cause rules it out."""
    cause = stop_cause(report)
    if cause is None:
        return None
    reading = _read_curves(report)
    exclusion = EXCLUDED.get((cause, reading.outcome))
    if exclusion is None:
        return reading
    if exclusion.instead is Outcome.DIVERGED:
        return _diverged_by_nan(report, reading, exclusion)
    if exclusion.instead is Outcome.CONVERGED:
        return _stalled(report, reading, exclusion)
    raise ValueError(f"EXCLUDED has no wording for an outcome replaced by {exclusion.instead.value}")


def _read_curves(report: RunReport) -> _Judgement:
    """The outcome the per-epoch losses alone support, without looking at why the run stopped."""
    val, train = _series(report.epochs, "val_loss"), _series(report.epochs, "train_loss")
    if not len(val):
        return _Judgement(Outcome.UNDETERMINED, "No validation loss was recorded, so how training ended cannot be read "
                          "from the curves.", f"no finite val loss in {_SCALARS}", "no validation loss was recorded")
    best_epoch, best = int(val.idxmin()), float(val.min())
    last_epoch, last = int(val.index[-1]), float(val.iloc[-1])
    rise = -_relative_drop(best, last)
    diverged = _read_divergence(train, val)
    if diverged is not None:
        return diverged
    both = pd.concat([train.rename("train"), val.rename("val")], axis=1, join="inner")
    train_best = both["train"].get(best_epoch)
    train_last = both["train"].get(last_epoch)
    overfitting = _read_overfitting(both, best_epoch, last_epoch, rise)
    if overfitting is not None:
        return overfitting
    ends = f"val loss {_n(best)} (epoch {best_epoch}) -> {_n(last)} (epoch {last_epoch}), {_signed(rise)}"
    if rise > OVERFIT_REL_RISE:
        if train_best is not None and train_last is not None:
            how = f"while the training loss did not fall ({_n(train_best)} -> {_n(train_last)})"
            ends += f"; train loss {_n(train_best)} -> {_n(train_last)} over the same epochs"
        else:
            how = "and no training loss was recorded at those epochs to compare"
        note = f"the validation loss ended {_pct(rise)} above its best {how}"
        return _Judgement(Outcome.UNDETERMINED, f"The validation loss ended {_pct(rise)} above its best {how}: neither "
                          f"over-fitting (the training loss falling) nor divergence (both losses more than "
                          f"{_pct(DIVERGED_REL_RISE, 0)} above their lowest) fits.", f"{ends} ({_SCALARS})", note)
    if len(val) <= CONVERGENCE_WINDOW:
        listed = ", ".join(f"{_n(value)} (epoch {epoch})" for epoch, value in val.items())
        note = f"only {_count(len(val), 'epoch')} had a validation loss, too few to judge"
        return _Judgement(Outcome.UNDETERMINED, f"Only {_count(len(val), 'epoch')} {'has' if len(val) == 1 else 'have'} "
                          f"a validation loss; judging whether it converged needs at least {CONVERGENCE_WINDOW + 1} "
                          f"(the last {CONVERGENCE_WINDOW} and the one before).",
                          f"val loss {listed} ({_SCALARS})", note)
    running_best = val.cummin()
    before, now = running_best.iloc[-CONVERGENCE_WINDOW - 1], running_best.iloc[-1]
    change = _relative_drop(before, now)
    evidence = (f"best val loss {_n(before)} by epoch {running_best.index[-CONVERGENCE_WINDOW - 1]} -> {_n(now)} by "
                f"epoch {running_best.index[-1]} ({_pct(change)})")
    if last_epoch != best_epoch:
        evidence += f"; last val loss {_n(last)} (epoch {last_epoch}), {_signed(rise)} against the best"
    if change < CONVERGED_REL_CHANGE:
        return _Judgement(Outcome.CONVERGED, f"Over the last {CONVERGENCE_WINDOW} epochs the best validation loss "
                          f"improved by only {_pct(change)} (< {_pct(CONVERGED_REL_CHANGE, 0)}).", evidence,
                          f"the best validation loss had moved only {_pct(change)} over the last "
                          f"{CONVERGENCE_WINDOW} epochs")
    return _Judgement(Outcome.STILL_IMPROVING, f"The best validation loss fell {_pct(change)} over the last "
                      f"{CONVERGENCE_WINDOW} epochs; more epochs would likely lower it further.", evidence,
                      f"the best validation loss had fallen {_pct(change)} over the last {CONVERGENCE_WINDOW} epochs")


def _read_divergence(train: pd.Series, val: pd.Series) -> _Judgement | None:
    """Diverged: train and val loss both ended more than DIVERGED_REL_RISE above their lowest."""
    if len(train) < 2 or len(val) < 2:
        return None
    train_rise, val_rise = -_relative_drop(train.min(), train.iloc[-1]), -_relative_drop(val.min(), val.iloc[-1])
    if train_rise <= DIVERGED_REL_RISE or val_rise <= DIVERGED_REL_RISE:
        return None
    evidence = "; ".join(f"{name} loss {_n(series.min())} (epoch {series.idxmin()}) -> {_n(series.iloc[-1])} "
                         f"(epoch {series.index[-1]}), {_signed(rise)}"
                         for name, series, rise in (("train", train, train_rise), ("val", val, val_rise)))
    return _Judgement(Outcome.DIVERGED, f"Training diverged: both losses ended more than {_pct(DIVERGED_REL_RISE, 0)} "
                      f"above their lowest (train {_signed(train_rise)}, val {_signed(val_rise)}), so the optimiser "
                      "lost ground on the loss it minimises; a lower optim.lr or optim.grad_clip usually steadies it.",
                      f"{evidence} ({_SCALARS})",
                      f"both losses ended more than {_pct(DIVERGED_REL_RISE, 0)} above their lowest")


def _read_overfitting(both: pd.DataFrame, best_epoch: int, last_epoch: int, rise: float) -> _Judgement | None:
    """Over-fitting: train fell since the best val epoch and val ended well above its best or kept rising."""
    if best_epoch == last_epoch or best_epoch not in both.index or last_epoch not in both.index:
        return None
    train_best, train_last = both.at[best_epoch, "train"], both.at[last_epoch, "train"]
    val_best, val_last = both.at[best_epoch, "val"], both.at[last_epoch, "val"]
    tail = both.iloc[-(OVERFIT_EPOCHS + 1):]
    rising = (len(tail) == OVERFIT_EPOCHS + 1 and tail.index[-1] == last_epoch
              and bool((np.diff(tail["val"]) > 0).all() and (np.diff(tail["train"]) < 0).all()))
    if not (train_last < train_best and (rise > OVERFIT_REL_RISE or rising)):
        return None
    gap_best, gap_last = val_best - train_best, val_last - train_last
    evidence = (f"val loss {_n(val_best)} (epoch {best_epoch}) -> {_n(val_last)} (epoch {last_epoch}), "
                f"{_signed(rise)}; train loss {_n(train_best)} -> {_n(train_last)} over the same epochs")
    if rising:
        evidence += f"; val rose and train fell in each of the last {OVERFIT_EPOCHS} epochs"
    return _Judgement(
        Outcome.OVERFITTING,
        f"From epoch {best_epoch} on, validation loss rose while training loss fell; the gap val - train grew "
        f"from {_n(gap_best)} (epoch {best_epoch}) to {_n(gap_last)} (epoch {last_epoch}). model.pt keeps the "
        f"best epoch's weights (epoch {best_epoch}).",
        f"{evidence} ({_SCALARS})",
        f"the validation loss had risen {_pct(rise)} above its best while the training loss fell")


def _diverged_by_nan(report: RunReport, reading: _Judgement, exclusion: Exclusion) -> _Judgement:
    """The NaN/inf stop's outcome: diverged, with what the finite epochs alone read and why that gives way."""
    last = _last_epoch(report)
    if last is None:
        return _Judgement(Outcome.DIVERGED, "Training diverged: the loss became NaN or infinite before any epoch "
                          "finished.", f"stop_reason = {report.stop_reason}; no finished epoch in {_SCALARS}",
                          "the loss became NaN or infinite")
    return _Judgement(Outcome.DIVERGED, f"Training diverged: the loss became NaN or infinite after epoch {last}. "
                      f"From the finite epochs alone, {reading.note}; but {exclusion.reason}.",
                      f"stop_reason = {report.stop_reason}; {reading.evidence}", "the loss became NaN or infinite")


def _stalled(report: RunReport, reading: _Judgement, exclusion: Exclusion) -> _Judgement:
    """The early-stopping outcome when the curve alone reads improving or cannot tell: converged at its best."""
    patience = report.config.early_stopping_patience
    val = _series(report.epochs, "val_loss")
    if len(val):
        best_epoch, best = int(val.idxmin()), float(val.min())
        last_epoch, last = int(val.index[-1]), float(val.iloc[-1])
        if last_epoch == best_epoch:  # each step since the early-stopping best was smaller than its min_delta
            text = (f"The validation loss stopped improving: its last epoch ({last_epoch}) was its best, {_n(best)}, "
                    "but the gains before it were smaller than trainer.early_stopping_min_delta.")
        else:
            text = (f"The validation loss stopped improving: its best was {_n(best)} at epoch {best_epoch}, and the "
                    f"run ended {_count(last_epoch - best_epoch, 'epoch')} later at {_n(last)} "
                    f"({_signed(-_relative_drop(best, last))} against the best).")
    else:
        text = f"Early stopping found the validation loss no longer improving; {_SCALARS} holds none to show it."
    text += f" From the curve alone, {reading.note}; but {exclusion.reason}."
    if reading.outcome is Outcome.STILL_IMPROVING:
        text += " A larger trainer.early_stopping_patience would give it longer."
    return _Judgement(Outcome.CONVERGED, text,
                      f"stop_reason = early_stopping; trainer.early_stopping_patience = {patience}; {reading.evidence}",
                      "early stopping found the validation loss no longer improving")


# -- on the side -------------------------------------------------------------------------------------


def _incidents(report: RunReport) -> list[Finding]:
    """One finding per on_incident: a part of the run (console, figures, report, ...) failed and the run went on."""
    findings = []
    for incident in report.incidents:
        part = str(incident.get("part") or "unknown part")
        message = str(incident.get("message") or "no message recorded")
        error = f"{incident['error_type']}: " if incident.get("error_type") else ""
        path = f" ({incident['path']})" if incident.get("path") else ""
        evidence = f"{_EVENTS}: on_incident at t = {_seconds(incident.get('t'))}, part {part}"
        if incident.get("path"):
            evidence += f", path {incident['path']}"
        findings.append(Finding(f"Incident: {part}", f"{part} failed{path} and the run went on: {error}{message}",
                                evidence, "incident", "warning"))
    return findings


def _test_skipped(report: RunReport) -> list[Finding]:
    """The test pass was recorded as skipped: no test metrics, and why."""
    if not report.test_skipped:
        return []
    return [Finding("Test pass skipped", f"The test pass did not run: {report.test_skipped}. No test metric was "
                    "measured, so none is reported.", f"{_EVENTS}: on_test_end skipped, samples 0", "test_skipped")]


_WITHOUT = {  # what a report goes on without when one of the run's optional files cannot be read
    CONFIG_FILE: "the configuration snapshot is empty",
    SCALARS_FILE: "there are no per-epoch losses or curves",
    STEPS_FILE: "the loss panel shows per-epoch losses",
    TELEMETRY_FILE: "there are no telemetry samples (GPU, CPU, memory)",
    ENV_FILE: "GPU names come from the sampler's summary only",
    MODEL_INFO_FILE: "parameter counts come from the on_start event",
    STDOUT_LOG: "there is no log tail",
}


def _unreadable(report: RunReport) -> list[Finding]:
    """One finding per optional file that could not be read, and what the report does without it."""
    return [Finding(f"Could not read {name}", f"{name} could not be read: {why}. The report goes on without it: "
                    f"{_WITHOUT.get(name, 'its part is left out')}.", f"{report.run_dir / name}", "unreadable", "warning")
            for name, why in report.unreadable.items()]


def _bad_lines(report: RunReport) -> list[Finding]:
    """The lines the readers skipped (torn, garbage, wrong shape or type), per file with their numbers."""
    if not report.bad_lines:
        return []
    files: dict[str, list] = {}
    for bad in report.bad_lines:
        files.setdefault(PurePosixPath(str(bad.path)).name, []).append(bad)
    parts = []
    for name, lines in files.items():
        numbers = ", ".join(str(b.line) for b in lines[:10]) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")
        parts.append(f"{name} line{'s' if len(lines) > 1 else ''} {numbers}")
    count = len(report.bad_lines)
    text = (f"{count} line{'s' if count > 1 else ''} of the run's facts could not be read and "
            f"{'were' if count > 1 else 'was'} skipped; the rest was read: " + "; ".join(parts) + ".")
    evidence = "; ".join(f"{PurePosixPath(str(b.path)).name} line {b.line}: {b.reason}" for b in report.bad_lines[:10])
    if count > 10:
        evidence += f"; and {count - 10} more"
    return [Finding("Skipped unreadable lines", text, evidence, "bad_lines", "warning")]



def _plateaus(report: RunReport) -> list[Finding]:
    """Mid-run stretches of >= PLATEAU_MIN_EPOCHS epochs where the best val loss moved < PLATEAU_REL_CHANGE."""
    best = _series(report.epochs, "val_loss").cummin()
    epochs, values = best.index.to_list(), best.to_numpy()
    cuts = {epoch for _, epoch, _, _ in _cuts(report)}
    # (first epoch, the epoch that ended it) per stretch. A stretch still open at the last epoch
    # is not listed: how the run ended is the outcome finding's business, stated once.
    stretches, anchor = [], 0
    for i in range(1, len(values)):
        if _relative_drop(values[anchor], values[i]) >= PLATEAU_REL_CHANGE:
            if i - 1 - anchor >= PLATEAU_MIN_EPOCHS - 1:
                stretches.append((anchor, i))
            anchor = i
    if not stretches:
        return []
    parts, evidence = [], []
    for a, i in stretches:
        ended_by = f", after the LR cut at epoch {epochs[i]}" if epochs[i] in cuts else ""
        gain = _pct(_relative_drop(values[i - 1], values[i]))
        parts.append(f"epochs {epochs[a]}-{epochs[i - 1]}, then it improved {gain} at epoch {epochs[i]}{ended_by}")
        evidence.append(f"best val loss {_n(values[a])} (epoch {epochs[a]}) -> {_n(values[i - 1])} "
                        f"(epoch {epochs[i - 1]}) -> {_n(values[i])} (epoch {epochs[i]})")
    text = f"The best validation loss stalled (< {_pct(PLATEAU_REL_CHANGE, 0)} change) over " + "; ".join(parts) + "."
    return [Finding("Plateau" if len(parts) == 1 else "Plateaus", text, "; ".join(evidence), "plateau")]


def _lr_cuts(report: RunReport) -> list[Finding]:
    """Each learning-rate drop and how much the best val loss improved between it and the next cut (or the end)."""
    cuts = _cuts(report)
    if not cuts:
        return []
    best = _series(report.epochs, "val_loss").cummin()
    parts, evidence = [], []
    for n, (previous, epoch, before, after) in enumerate(cuts):
        evidence.append(f"lr {before:.3g} (epoch {previous}) -> {after:.3g} (epoch {epoch}), x{after / before:.3g}")
        until = cuts[n + 1][1] - 1 if n + 1 < len(cuts) else (best.index[-1] if len(best) else epoch)
        prior, later = best[best.index < epoch], best[(best.index >= epoch) & (best.index <= until)]
        effect = ""
        if len(prior) and len(later):
            start, end = prior.iloc[-1], later.iloc[-1]
            effect = (f"; the best val loss then went {_n(start)} -> {_n(end)} by epoch {later.index[-1]} "
                      f"({_pct(_relative_drop(start, end))})")
        parts.append(f"at epoch {epoch} ({before:.3g} -> {after:.3g}){effect}")
    scheduler = report.config.scheduler
    title = "Learning-rate cut" if len(cuts) == 1 else f"{len(cuts)} learning-rate cuts"
    return [Finding(title, f"The learning rate was cut {_times(len(cuts))} (optim.scheduler = {scheduler}): "
                    + "; ".join(parts) + ".", "; ".join(evidence) + f" ({_SCALARS} lr)", "lr_cut")]


def _input_bound(report: RunReport) -> list[Finding]:
    """The training step waited for data more than INPUT_BOUND_FRAC of the time."""
    wait = _series(report.epochs, "data_wait_frac")
    if not len(wait) or wait.mean() <= INPUT_BOUND_FRAC:
        return []
    cfg = report.config
    return [Finding("Input-bound", f"The training step waited for data {_pct(wait.mean(), 1)} of the time (data.loader = "
                    f"{cfg.data_loader}, data.num_workers = {cfg.num_workers}): a faster input pipeline (the in-memory "
                    "loader, more workers, larger read blocks) would speed training up more than a faster model.",
                    f"data_wait_frac mean {wait.mean():.3f} over {len(wait)} epochs, highest {wait.max():.3f} "
                    f"(epoch {wait.idxmax()}) ({_SCALARS})", "input_bound", "warning")]


def _gpu_underused(report: RunReport) -> list[Finding]:
    """Average GPU utilisation below GPU_UNDERUSED_PCT."""
    util = report.metrics.gpu_util_avg
    if util is None or util >= GPU_UNDERUSED_PCT:
        return []
    cfg = report.config
    if _input_bound(report):
        why = "the data wait above explains part of it"
    else:
        why = (f"with batch size {cfg.batch_size} (effective {cfg.effective_batch}) a larger batch or model "
               "would use it better")
    table = report.telemetry_table
    per_gpu = [f"GPU {i}: {pd.to_numeric(table[f'gpu{i}_util_pct'], errors='coerce').mean():.1f} %"
               for i in report.gpu_devices() if f"gpu{i}_util_pct" in table.columns]
    source = f"{_TELEMETRY}, {report.telemetry.samples} samples; " + ", ".join(per_gpu) if per_gpu else "sampler summary"
    text = f"The GPU was busy {util:.1f} % of the time on average (< {GPU_UNDERUSED_PCT:.0f} %); {why}."
    return [Finding("GPU under-used", text, f"GPU utilisation mean {util:.1f} % ({source})", "gpu_underused", "warning")]


def _energy(report: RunReport) -> list[Finding]:
    """Energy of the run, per training sample."""
    m = report.metrics
    if m.energy_j is None:
        return []
    per_sample = m.energy_j_per_sample
    text = f"The run used {m.energy_kwh:.4g} kWh ({m.energy_j:,.0f} J, {m.energy_method})"
    if per_sample is not None:
        text += f": {per_sample:.4g} J per training sample over {m.samples:,} samples"
    if m.power_avg_w is not None:
        text += f", at {m.power_avg_w:.1f} W on average"
    evidence = f"energy {m.energy_j:.1f} J; samples {m.samples}; duration {report.duration_s or 0:.1f} s"
    return [Finding("Energy per sample", text + ".", evidence, "energy")]


def _cuts(report: RunReport) -> list[tuple[int, int, float, float]]:
    """(previous epoch, epoch, lr before, lr from this epoch on) for every epoch whose lr is below the previous one's."""
    lr = _series(report.epochs, "lr")
    return [(int(lr.index[i - 1]), int(lr.index[i]), float(lr.iloc[i - 1]), float(lr.iloc[i]))
            for i in range(1, len(lr)) if lr.iloc[i] < lr.iloc[i - 1] * (1 - 1e-9)]


def _series(table: pd.DataFrame, column: str) -> pd.Series:
    """The finite values of a per-epoch column, indexed by epoch; empty when absent."""
    if column not in table.columns:
        return pd.Series(dtype=float)
    values = pd.to_numeric(table[column], errors="coerce").astype(float)
    return values[np.isfinite(values.to_numpy())]


def _relative_drop(before: float, after: float) -> float:
    """How much smaller `after` is than `before`, as a fraction of |before| (negative when it grew)."""
    scale = abs(before) if before else 1.0
    return (before - after) / scale


def _last_epoch(report: RunReport) -> int | None:
    """The last epoch in the per-epoch table, or None."""
    return int(report.epochs.index.max()) if len(report.epochs.index) else None


def _seconds(value: object) -> str:
    """An event's `t` as '12.3 s'; 'n/a' when it has none."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.1f} s"


def _pct(fraction: float, digits: int = 2) -> str:
    """A fraction as a percentage with a space before the sign, as the rest of the report writes them."""
    return f"{100 * fraction:.{digits}f} %"


def _signed(fraction: float) -> str:
    """A relative change with its sign ("+56.50 %", "-0.50 %")."""
    return f"+{_pct(fraction)}" if fraction >= 0 else _pct(fraction)


def _count(number: object, noun: str) -> str:
    """'1 epoch', '3 epochs'; a number that is not one (an unset patience) keeps the plural."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _times(count: int) -> str:
    return "once" if count == 1 else "twice" if count == 2 else f"{count} times"


def _n(value: float | None) -> str:
    """A loss-like number with 4 significant digits; 'n/a' when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4g}"

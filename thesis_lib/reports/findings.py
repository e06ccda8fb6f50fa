"""Findings: the written analysis of a run, drawn deterministically from its facts alone.

The seed asked an LLM to comment on a run; here each finding is a rule over the per-epoch table
and the key metrics, and each cites the numbers it rests on (`evidence`), so a reader can check
it against scalars.csv, telemetry.csv or events.jsonl. The thresholds are module constants.
Titles, texts and evidence are plain text (the template escapes them), never Markdown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Optional

import numpy as np
import pandas as pd

from ..layout import (CONFIG_FILE, ENV_FILE, EVENTS_FILE, MODEL_INFO_FILE, SCALARS_FILE, STDOUT_LOG, STEPS_FILE,
                      TELEMETRY_FILE)
from .report_data import RunReport

__all__ = [
    "Finding",
    "find",
    "CONVERGENCE_WINDOW",
    "CONVERGED_REL_CHANGE",
    "PLATEAU_REL_CHANGE",
    "PLATEAU_MIN_EPOCHS",
    "INPUT_BOUND_FRAC",
    "GPU_UNDERUSED_PCT",
]

CONVERGENCE_WINDOW = 3  # epochs looked back to judge convergence
CONVERGED_REL_CHANGE = 0.01  # best val loss improving less than this over the window: converged
PLATEAU_REL_CHANGE = 0.01  # ... over at least PLATEAU_MIN_EPOCHS epochs in mid-run: a plateau
PLATEAU_MIN_EPOCHS = 3
OVERFIT_EPOCHS = 2  # consecutive epochs of val rising while train falls
INPUT_BOUND_FRAC = 0.3  # mean share of step time spent waiting for data
GPU_UNDERUSED_PCT = 50.0
# Evidence cites the facts files by their short names ("scalars.csv").
_EVENTS, _SCALARS, _TELEMETRY = (PurePosixPath(path).name for path in (EVENTS_FILE, SCALARS_FILE, TELEMETRY_FILE))


@dataclass
class Finding:
    """One statement about the run and the numbers behind it.

    Attributes:
        title: a few words ("Converged", "Input-bound").
        text: the statement, one or two sentences.
        evidence: the figures it rests on and where they come from.
        kind: a stable identifier for the rule ("convergence", "overfitting", "plateau", "lr_cut",
            "stop", "failure", "incident", "test_skipped", "unreadable", "bad_lines", "input_bound",
            "gpu_underused", "energy").
        level: "info" or "warning".
    """

    title: str
    text: str
    evidence: str
    kind: str
    level: str = "info"


def find(report: RunReport) -> list[Finding]:
    """Every finding the run's facts support, most important first.

    Why it stopped, then what went wrong on the side (incidents, a skipped test pass, facts that
    could not be read), then training, then resources.

    Args:
        report: the run's RunReport.

    Returns:
        The findings; empty when no rule applies (e.g. a run still in its first epochs).
    """
    rules = (_stop, _incidents, _test_skipped, _unreadable, _bad_lines, _convergence, _overfitting, _plateaus,
             _lr_cuts, _input_bound, _gpu_underused, _energy)
    return [finding for rule in rules for finding in rule(report)]


def _stop(report: RunReport) -> list[Finding]:
    """Why the run ended: the epoch limit, early stopping, the user, a NaN, an exception, or a crash."""
    cfg, done = report.config, report.epochs_completed
    planned = f"{done} of {cfg.epochs}" if cfg.epochs is not None else str(done)
    reason = report.stop_reason or ""
    if report.status == "RUNNING":
        return []
    if report.status == "CRASHED":
        text = (f"The run has no end event: {reason}. Its facts up to the last written epoch ({_last_epoch(report)}) "
                "are intact; trainer.resume_from continues it from last.pt.")
        evidence = f"{_EVENTS}: no on_train_end after on_start; {done} epochs in {_SCALARS}"
        return [Finding("Crashed", text, evidence, "failure", "warning")]
    if reason == "non_finite_loss":
        return [_non_finite(report)]
    if report.status == "FAILED":
        error = report.exception or {}
        where = f"on_exception at t = {_seconds(error.get('t'))}" if error else "on_train_end"
        last_line = (error.get("traceback") or "").strip().splitlines()[-1:] or [""]
        return [Finding("Failed", f"The run failed after {planned} epochs with {error.get('error_type', 'an error')}: "
                        f"{error.get('message', reason)}", f"{where}; {last_line[0]}".rstrip("; "), "failure", "warning")]
    if reason == "early_stopping":
        m, patience = report.metrics, cfg.early_stopping_patience
        text = (f"Validation loss did not improve for {patience} epochs after its best {_n(m.loss_best_val)} "
                f"at epoch {m.best_epoch}; {planned} epochs ran.")
        evidence = (f"trainer.early_stopping_patience = {patience}; last epoch {_last_epoch(report)} "
                    f"val loss {_n(m.loss_final_val)}")
        return [Finding("Stopped early", text, evidence, "stop")]
    if reason == "interrupted":
        return [Finding("Interrupted", f"Stopped by the user (KeyboardInterrupt) after {planned} epochs; facts and "
                        "checkpoints up to the last finished epoch were written.", f"stop_reason = interrupted; "
                        f"last epoch in {_SCALARS}: {_last_epoch(report)}", "stop")]
    if reason.startswith("signal: "):
        name = reason.split(": ", 1)[1]
        who = _SIGNAL_SENDERS.get(name, "a process")
        return [Finding(f"Stopped by {name}", f"{who} sent {name} after {planned} epochs; the run finished its "
                        "step and wrote last.pt, model.pt (the best epoch's weights) and its facts before it ended.",
                        f"stop_reason = {reason}; last epoch in {_SCALARS}: {_last_epoch(report)}", "stop")]
    if reason == "max_epochs":
        return [Finding("Reached the epoch limit", f"All {planned} epochs ran (trainer.epochs = {cfg.epochs}).",
                        f"stop_reason = max_epochs; epochs completed = {done}", "stop")]
    return [Finding("Stopped", f"The run ended with status {report.status} ({reason or 'no reason recorded'}) "
                    f"after {planned} epochs.", f"on_train_end: status {report.status}, stop_reason {reason!r}", "stop")]


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


# Who usually sends a stop signal, for the finding's wording.
_SIGNAL_SENDERS = {
    "SIGTERM": "The batch system or container runtime (SLURM, HTCondor, Kubernetes, docker stop)",
    "SIGINT": "The user (Ctrl-C or a notebook's Interrupt)",
    "SIGUSR1": "SLURM's --signal warning (the job's time is running out)",
}


def _non_finite(report: RunReport) -> Finding:
    """The NaN/inf finding: the message, the last finite losses and how the gradient norm moved."""
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
                   "failure", "warning")


def _convergence(report: RunReport) -> list[Finding]:
    """Whether the best validation loss still moved over the last CONVERGENCE_WINDOW epochs."""
    best = _series(report.epochs, "val_loss").cummin()
    if len(best) <= CONVERGENCE_WINDOW:
        return []
    before, now = best.iloc[-CONVERGENCE_WINDOW - 1], best.iloc[-1]
    change = _relative_drop(before, now)
    evidence = (f"best val loss {_n(before)} by epoch {best.index[-CONVERGENCE_WINDOW - 1]} -> {_n(now)} by epoch "
                f"{best.index[-1]} ({_pct(change)})")
    if change < CONVERGED_REL_CHANGE:
        return [Finding("Converged", f"Over the last {CONVERGENCE_WINDOW} epochs the best validation loss improved by "
                        f"only {_pct(change)} (< {_pct(CONVERGED_REL_CHANGE, 0)}).", evidence, "convergence")]
    return [Finding("Still improving", f"The best validation loss fell {_pct(change)} over the last {CONVERGENCE_WINDOW} "
                    "epochs; more epochs would likely lower it further.", evidence, "convergence")]


def _overfitting(report: RunReport) -> list[Finding]:
    """The first epoch after which val loss rises while train loss falls for OVERFIT_EPOCHS epochs, if the gap grew."""
    if not {"train_loss", "val_loss"} <= set(report.epochs.columns):
        return []
    both = report.epochs[["train_loss", "val_loss"]].apply(pd.to_numeric, errors="coerce").dropna()
    if len(both) < OVERFIT_EPOCHS + 1:
        return []
    train, val, epochs = both["train_loss"].to_numpy(), both["val_loss"].to_numpy(), both.index.to_numpy()
    for i in range(len(both) - OVERFIT_EPOCHS):
        span = range(i + 1, i + OVERFIT_EPOCHS + 1)
        if all(val[j] > val[j - 1] and train[j] < train[j - 1] for j in span):
            gap_start, gap_end = val[i] - train[i], val[-1] - train[-1]
            if gap_end <= gap_start:  # the gap closed again by the end: look for a later onset
                continue
            k = i + OVERFIT_EPOCHS
            return [Finding(
                "Over-fitting",
                f"From epoch {epochs[i]} on, validation loss rose while training loss fell; the gap val - train grew "
                f"from {_n(gap_start)} (epoch {epochs[i]}) to {_n(gap_end)} (epoch {epochs[-1]}). model.pt keeps the "
                f"best epoch's weights (epoch {report.metrics.best_epoch}).",
                f"val loss {_n(val[i])} -> {_n(val[k])} and train loss {_n(train[i])} -> {_n(train[k])} over epochs "
                f"{epochs[i]}-{epochs[k]} ({_SCALARS})",
                "overfitting", "warning")]
    return []


def _plateaus(report: RunReport) -> list[Finding]:
    """Mid-run stretches of >= PLATEAU_MIN_EPOCHS epochs where the best val loss moved < PLATEAU_REL_CHANGE."""
    best = _series(report.epochs, "val_loss").cummin()
    epochs, values = best.index.to_list(), best.to_numpy()
    cuts = {epoch for _, epoch, _, _ in _cuts(report)}
    # (first epoch, the epoch that ended it) per stretch. A stretch still open at the last epoch
    # is not listed: whether the run converged is the convergence finding's business.
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


def _last_epoch(report: RunReport) -> Optional[int]:
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


def _times(count: int) -> str:
    return "once" if count == 1 else "twice" if count == 2 else f"{count} times"


def _n(value: Optional[float]) -> str:
    """A loss-like number with 4 significant digits; 'n/a' when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4g}"

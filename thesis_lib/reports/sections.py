"""The Markdown of each run-report section; shared by the notebook template and the plain writer.

`render_section(report, name, images)` is the one place a section's text is written: the
template displays each section through IPython's Markdown display, `RunReport.to_markdown`
joins them for the no-notebook path, so report.md reads the same either way.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import pandas as pd

from ..errors import ReportError

if TYPE_CHECKING:
    from .run_report import RunReport

__all__ = ["SECTIONS", "render_section", "MAX_EPOCH_ROWS"]

SECTIONS = ("title", "summary", "metrics", "configuration", "curves", "telemetry", "findings", "test", "log")
MAX_EPOCH_ROWS = 20  # the per-epoch table under the curves keeps the first, best and last epochs and a spread between


def render_section(report: "RunReport", name: str, images: Mapping[str, Any]) -> str:
    """One section of `report` as Markdown.

    Args:
        report: the run's RunReport.
        name: one of SECTIONS.
        images: {"curves": path, "telemetry": path}, relative to the Markdown file; missing ones are not linked.

    Returns:
        The section's Markdown, starting with its heading (the title section with `#`, the others `##`).

    Raises:
        ReportError: `name` is not one of SECTIONS.
    """
    builders: dict[str, Callable[["RunReport", Mapping[str, Any]], str]] = {
        "title": _title, "summary": _summary, "metrics": _metrics, "configuration": _configuration,
        "curves": _curves, "telemetry": _telemetry, "findings": _findings, "test": _test, "log": _log,
    }
    if name not in builders:
        raise ReportError(f"unknown run-report section {name!r} for {report.run_dir}; known: {', '.join(SECTIONS)}")
    return builders[name](report, images).rstrip() + "\n"


def _title(report: "RunReport", images: Mapping) -> str:
    started = f" · started {report.started}" if report.started else ""
    return f"# Run report: {report.run_id}\n\n`{report.run_dir}`{started}"


def _summary(report: "RunReport", images: Mapping) -> str:
    m, cfg = report.metrics, report.config
    reason = f" ({report.stop_reason})" if report.stop_reason else ""
    planned = f" of {cfg.epochs}" if cfg.epochs is not None else ""
    params = "n/a"
    if report.params_total is not None:
        params = f"{_int(report.params_trainable)} of {_int(report.params_total)} ({_num(report.trainable_pct, '.1f')} %)"
    device = report.device or "n/a"
    names = [d.get("name") for d in report.telemetry.devices if d.get("name")]
    if names and device.startswith("cuda"):
        device += f" ({', '.join(names)})"
    lines = [
        "## Executive summary",
        "",
        f"- **Status:** {report.status}{reason}",
        f"- **Duration:** {_duration(report.duration_s)}",
        f"- **Epochs:** {report.epochs_completed}{planned} · **Steps:** {_int(report.steps)} · "
        f"**Samples:** {_int(m.samples)}",
        f"- **Trainable params:** {params}",
        f"- **Device:** {device}",
        f"- **Best validation loss:** {_num(m.loss_best_val)} (epoch {_dash(m.best_epoch)})"
        + (f" · **test loss:** {_num(report.test_metrics['loss'])}" if "loss" in report.test_metrics else ""),
    ]
    if report.findings:
        lines.append("- **Findings:** " + "; ".join(f.title for f in report.findings))
    return "\n".join(lines)


def _metrics(report: "RunReport", images: Mapping) -> str:
    m = report.metrics
    no_gpu = "n/a (no GPU telemetry)"
    vram = no_gpu
    if m.vram_peak_mb is not None:
        vram = f"{_mb(m.vram_peak_mb)} / {_mb(m.vram_avg_mb)}" + (f" of {_mb(m.vram_total_mb)}" if m.vram_total_mb else "")
    power = no_gpu if m.power_peak_w is None else f"{_num(m.power_peak_w, '.1f')} W / {_num(m.power_avg_w, '.1f')} W"
    energy = no_gpu if m.energy_j is None else f"{_num(m.energy_kwh)} kWh ({m.energy_j:,.0f} J; {m.energy_method})"
    per_sample = "n/a" if m.energy_j_per_sample is None else f"{_num(m.energy_j_per_sample)} J/sample"
    rows = [
        ("Loss, initial",
         f"train {_num(m.loss_initial_train)} · val {_num(m.loss_initial_val)} (epoch {_first_epoch(report)})"),
        ("Loss, best", f"val {_num(m.loss_best_val)} (epoch {_dash(m.best_epoch)})"),
        ("Loss, final", f"train {_num(m.loss_final_train)} · val {_num(m.loss_final_val)} (epoch {_dash(m.final_epoch)})"),
        ("VRAM peak / avg (NVML)", vram),
        ("VRAM peak (torch allocated)", "n/a" if m.torch_vram_peak_mb is None else _mb(m.torch_vram_peak_mb)),
        ("Power peak / avg", power),
        ("Energy", energy),
        ("Energy per sample", per_sample),
        ("Samples processed", _int(m.samples)),
        ("Throughput", "n/a" if m.samples_per_s is None else f"{m.samples_per_s:,.0f} samples/s"),
        ("GPU utilisation avg", no_gpu if m.gpu_util_avg is None else f"{m.gpu_util_avg:.1f} %"),
    ]
    note = ("Losses from facts/scalars.csv; VRAM (device view, any GPU), power (summed over GPUs) and utilisation "
            "from the samples in facts/telemetry.csv; the torch peak is the highest per-epoch "
            "`torch.cuda.max_memory_allocated`; throughput is the mean of the training epochs'; energy per sample "
            "divides the whole run's energy by the training samples.")
    return "## Key metrics\n\n" + _table(("Metric", "Value"), rows) + "\n\n" + note


def _configuration(report: "RunReport", images: Mapping) -> str:
    c = report.config
    scheduler = c.scheduler
    if scheduler == "plateau":
        scheduler = f"plateau (factor {c.plateau_factor}, patience {c.plateau_patience})"
    early = "off" if not c.early_stopping_patience else f"patience {c.early_stopping_patience}"
    clip = "off" if not c.grad_clip else f"{c.grad_clip}"
    ran_on = f" (ran on {report.device})" if report.device else ""
    rows = [
        ("Model",
         f"{c.task}: encoder {c.encoder}, bottleneck {c.bottleneck}, decoder {c.decoder}, latent_dim {c.latent_dim}"),
        ("Precision", c.precision),
        ("Batch size", c.batch_size),
        ("Gradient accumulation", c.grad_accum_steps),
        *([("Processes (DDP)", c.world_size)] if c.world_size > 1 else []),
        ("Effective batch", _dash(c.effective_batch)),
        ("Learning rate", c.lr),
        ("Optimiser", f"{c.optimizer} (weight decay {c.weight_decay}, grad clip {clip})"),
        ("Scheduler", scheduler),
        ("Epochs", f"{c.epochs} (early stopping {early})"),
        ("Seed", c.seed),
        ("Device", f"{c.device}{ran_on}"),
        ("Data", f"{c.data_path} (loader {c.data_loader}, {c.num_workers} workers)"),
    ]
    text = "## Configuration\n\n" + _table(("Setting", "Value"), rows)
    if report.config_text:
        text += ("\n\n<details><summary>config.yaml (the resolved config)</summary>\n\n"
                 + _fenced(report.config_text, "yaml") + "\n\n</details>")
    return text


def _curves(report: "RunReport", images: Mapping) -> str:
    parts = ["## Training curves"]
    if "curves" in images:
        parts.append(f"![Training curves]({_link(images['curves'])})")
    table = _epoch_rows(report)
    parts.append(table if table else "No epoch has finished yet: facts/scalars.csv has no rows.")
    return "\n\n".join(parts)


def _telemetry(report: "RunReport", images: Mapping) -> str:
    t, parts = report.telemetry, ["## Telemetry"]
    if not t.has_gpu:
        parts.append(f"No GPU telemetry: {t.warning.rstrip('.')}.")
    else:
        every = f" every {t.interval_s:g} s" if t.interval_s else ""
        gpus = ", ".join(f"{d.get('index')}: {d.get('name')}" for d in t.devices)
        gpus = gpus or ", ".join(map(str, report.gpu_devices()))
        parts.append(f"Sampled by {t.backend or 'the telemetry sampler'}{every} ({t.samples:,} samples); power field: "
                     f"{t.power_field or 'n/a'}; energy: {report.metrics.energy_method or 'n/a'}. GPUs: {gpus}; "
                     f"peak temperature {_num(t.temp_peak_c, '.0f')} °C.")
        if t.warning:
            parts.append(f"Warning: {t.warning}")
    if t.cpu_avg_pct is not None or t.rss_peak_mb is not None:
        parts.append(f"Process: CPU {_num(t.cpu_avg_pct, '.1f')} % on average, RSS peak {_mb(t.rss_peak_mb)}.")
    if "telemetry" in images:
        parts.append(f"![Telemetry]({_link(images['telemetry'])})")
    return "\n\n".join(parts)


def _findings(report: "RunReport", images: Mapping) -> str:
    if not report.findings:
        return ("## Findings\n\nNo findings: none of the rules (why it stopped, convergence, over-fitting, plateaus, "
                "learning-rate cuts, input-bound, GPU use, energy) applies to these facts yet.")
    items = []
    for f in report.findings:
        mark = "⚠ " if f.level == "warning" else ""
        items.append(f"- {mark}**{f.title}.** {f.text}  \n  *Evidence:* {f.evidence}")
    return "## Findings\n\n" + "\n".join(items)


def _test(report: "RunReport", images: Mapping) -> str:
    if not report.test_metrics:
        return ("## Test metrics\n\nNo test metrics: trainer.test was off, the data has no test split, "
                "or the run did not finish.")
    rows = [(name, _num(value, ".6g")) for name, value in report.test_metrics.items()]
    text = (f"## Test metrics\n\nThe best weights (epoch {_dash(report.test_epoch)}) on the test split.\n\n"
            + _table(("Metric", "Value"), rows))
    if report.confusion:
        text += "\n\n" + _confusion(report.confusion)
    return text


def _confusion(confusion: Mapping) -> str:
    """The classifier's confusion matrix on the test split: rows true class, columns predicted, recall per row."""
    matrix = confusion["matrix"]
    names = list(confusion.get("class_names") or [])
    names += [f"class_{i}" for i in range(len(names), len(matrix))]
    rows = []
    for index, (name, counts) in enumerate(zip(names, matrix)):
        total = sum(counts)
        recall = f"{100.0 * counts[index] / total:.1f} %" if total else "–"
        rows.append((f"**{name}**", *(f"{c:,}" for c in counts), recall))
    return ("### Confusion matrix\n\nRows: true class; columns: predicted class (test split).\n\n"
            + _table(("true \\ predicted", *names, "recall"), rows))


def _log(report: "RunReport", images: Mapping) -> str:
    if not report.log_tail:
        return "## Log tail\n\nlogs/stdout.log is empty or missing."
    return (f"## Log tail\n\nThe last {len(report.log_tail)} lines of `logs/stdout.log`:\n\n"
            + _fenced("\n".join(report.log_tail), "text"))


def _epoch_rows(report: "RunReport") -> str:
    """The per-epoch table (losses, val metrics, lr, time, throughput), at most MAX_EPOCH_ROWS rows."""
    epochs = report.epochs
    if epochs.empty:
        return ""
    keep = list(epochs.index)
    if len(keep) > MAX_EPOCH_ROWS:
        spread = {keep[round(i * (len(keep) - 1) / (MAX_EPOCH_ROWS - 2))] for i in range(MAX_EPOCH_ROWS - 1)}
        keep = sorted(spread | {keep[-1], report.metrics.best_epoch if report.metrics.best_epoch is not None else keep[0]})
    columns = [("train_loss", "train loss", ".4g"), ("val_loss", "val loss", ".4g")]
    columns += [(c, c[len("val_"):] + " (val)", ".4g") for c in epochs.columns if c.startswith("val_metric_")]
    columns += [("lr", "lr", ".3g"), ("epoch_time_s", "time (s)", ".1f"), ("throughput", "samples/s", ",.0f")]
    columns = [c for c in columns if c[0] in epochs.columns]
    rows = [(epoch, *(_num(epochs.at[epoch, c], spec) for c, _, spec in columns)) for epoch in keep]
    note = f"\n\n{len(keep)} of {len(epochs)} epochs shown." if len(keep) < len(epochs) else ""
    return _table(("epoch", *(label for _, label, _ in columns)), rows) + note


def _table(header: tuple, rows: list) -> str:
    """A Markdown table; '|' inside cells is escaped."""
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return _dash(value).replace("|", "\\|").replace("\n", " ")


def _fenced(text: str, language: str) -> str:
    """A fenced code block whose fence is longer than any backtick run inside `text`."""
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def _link(path: Any) -> str:
    """An image path as a Markdown link target (forward slashes, spaces escaped)."""
    return PurePath(path).as_posix().replace(" ", "%20")


def _first_epoch(report: "RunReport") -> str:
    return _dash(int(report.epochs.index.min()) if len(report.epochs.index) else None)


def _num(value: Optional[float], spec: str = ".4g") -> str:
    """A number in `spec`, 'n/a' when missing or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return "n/a"
    return format(value, spec)


def _int(value: Optional[int]) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def _mb(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:,.0f} MB"


def _dash(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _duration(seconds: Optional[float]) -> str:
    """'42.0 s', '3 min 05 s' or '2 h 03 min (2.05 h)'."""
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min ({seconds / 3600:.2f} h)"

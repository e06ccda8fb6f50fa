"""The sweep report: load runs, select, run one analysis, write the report directory's layout.

```
<output_root>/reports/report_<YYYYmmdd-HHMMSS>_<name>/
  manifest.yaml                inputs, filters, runs (with config hashes), skipped and left-out runs,
                               thesis_lib version, time, analysis, every output file
  training/summary.csv         one row per analysed run (runs_df plus energy_j_total)
  training/summary.json        analysis summary, notes, sweep.yaml, filters, tables as records
  training/table-<name>.csv    each table the analysis made
  training/figures/figure-<name>.png
  inference/summary.json       (inference enabled) per-model metrics and AUROC, errors, options
  inference/figures/figure-<name>.png
  report.html  report.md       (render_sweep_report) the executed notebook
```

`output_root` is the sweep's root when `sweep_dir` is `<root>/multiruns/exp_...`, the runs'
root when every run sits in `<root>/runs/`, else `outputs`. Each analysed run gets a backlink:
one line appended to `<run_dir>/reports.txt` (`<UTC time>\\t<analysis>\\t<report dir>`); the
run's facts are never touched. Appending one line per report is safe when several reports
read the same run at once, which a rewritten JSON file would not be.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pandas as pd
import yaml

from ..shipped import shipped_notebook
from ..version import __version__
from ..errors import ConfigError, FactsError, ReportError, RunLockedError
from ..facts import discover_runs, load_runs
from ..atomic_files import append_open, atomic_write_text
from ..layout import (SWEEP_REPORT_NOTEBOOK, FIGURES_DIR, INFERENCE_DIR, MANIFEST_FILE, REPORT_BACKLINKS, REPORTS_DIR, RUNS_DIR,
                      SUMMARY_CSV, SUMMARY_JSON, SWEEP_FILE, SWEEPS_DIR, TRAINING_DIR, sanitize_run_name)
from ..record.writer import to_plain
from ..run_lock import hold_run_lock
from .analyses import (AnalysisContext, AnalysisOutput, check_which_figures, energy_per_run, filter_tasks, get_analysis,
                       select_runs)
from .render import render_template

__all__ = ["SweepReport", "build_sweep_report", "render_sweep_report", "resolve_report_dir",
           "DEFAULT_INFERENCE", "SWEEP_REPORT_TEMPLATE"]

SWEEP_REPORT_TEMPLATE = shipped_notebook("report_templates", SWEEP_REPORT_NOTEBOOK, must_exist=False)
DEFAULT_INFERENCE = {"enabled": False, "batch_size": 512, "autocast": True, "dataset_split": "test",
                     "max_samples": 0, "persist_raw_scores": False}


@dataclass
class SweepReport:
    """A written sweep report: where it is and what went into it."""

    report_dir: Path
    analysis: str
    runs_df: pd.DataFrame
    output: AnalysisOutput
    skipped: list[dict] = field(default_factory=list)  # runs load_runs could not read, with the reason
    excluded: list[dict] = field(default_factory=list)  # runs read but left out (task), with the reason
    inference: Optional[dict] = None  # inference/summary.json's content
    inference_figures: dict[str, Path] = field(default_factory=dict)

    @property
    def manifest_path(self) -> Path:
        return self.report_dir / MANIFEST_FILE

    @property
    def figures(self) -> dict[str, Path]:
        """Training figures by name."""
        return self.output.figures


def build_sweep_report(
    *,
    sweep_dir: str | Path | None = None,
    run_dirs: Iterable[str | Path] | str | Path | None = None,
    analysis: str = "generic",
    select: Optional[Mapping[str, Any]] = None,
    thresholds: Optional[Mapping[str, Any]] = None,
    which_figures: Optional[Iterable[str]] = None,
    inference: Optional[Mapping[str, Any]] = None,
    output_dir: str | Path | None = None,
    name: Optional[str] = None,
) -> SweepReport:
    """Write a sweep report directory (see the module docstring for its layout).

    Args:
        sweep_dir: a sweep folder (searched recursively for runs), or a glob of them.
        run_dirs: run folders or globs, instead of or besides sweep_dir.
        analysis: a registered analysis: "generic", "compare_tokenizers", "compare_globals_heads".
        select: {runs_df column: value or list of values}; numbers and text compare alike.
        thresholds: analysis thresholds, e.g. {"val_mse": 0.1} for compare_tokenizers.
        which_figures: figure names to draw (None: all the analysis draws).
        inference: {"enabled", "batch_size", "autocast", "dataset_split", "max_samples",
            "persist_raw_scores"}; missing keys take DEFAULT_INFERENCE's values.
        output_dir: the report directory itself (created); default
            `<output_root>/reports/report_<ts>_<name>`.
        name: the report's name; defaults to the analysis name.

    Returns:
        The SweepReport.

    Raises:
        ConfigError: unknown analysis or figure name, a select column that does not exist or
            that matches no run (listing the values that exist), bad inference options.
        FactsError: sweep_dir does not exist; NoValidRunsError: no run could be loaded.
        ReportError: no run of a task the analysis reads (naming the tasks found).
    """
    module = get_analysis(analysis)
    figures = check_which_figures(analysis, which_figures)
    options = _inference_options(inference)
    if sweep_dir is not None and not any(ch in str(sweep_dir) for ch in "*?[") and not Path(sweep_dir).is_dir():
        raise FactsError(f"sweep_dir {str(sweep_dir)!r} does not exist or is not a directory")
    runs_df, per_epoch, order, skipped = _load_with_skips(sweep_dir, run_dirs)
    runs_df = select_runs(runs_df, select)
    runs_df, excluded = filter_tasks(runs_df, module.TASKS, analysis)
    kept = set(runs_df["run_dir"])
    order = [r for r in order if r in kept]
    energy = energy_per_run(per_epoch, order)
    runs_df = runs_df.assign(energy_j_total=[energy[r] for r in runs_df["run_dir"]]).reset_index(drop=True)

    name = name or analysis
    report_dir = Path(output_dir) if output_dir is not None else resolve_report_dir(sweep_dir, runs_df["run_dir"], name)
    (report_dir / TRAINING_DIR / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    report = SweepReport(report_dir=report_dir, analysis=analysis, runs_df=runs_df, output=AnalysisOutput(),
                         skipped=skipped, excluded=excluded)
    inputs = {"name": name, "sweep_dir": None if sweep_dir is None else str(sweep_dir), "run_dirs": _listed(run_dirs),
              "select": select, "thresholds": thresholds, "which_figures": figures, "inference": options}
    ctx = AnalysisContext(runs_df=runs_df, per_epoch={r: per_epoch[r] for r in order}, order=order,
                          figures_dir=report_dir / TRAINING_DIR / FIGURES_DIR, thresholds=dict(thresholds or {}),
                          which_figures=figures)
    try:
        report.output = module.run(ctx)
        _write_training(report, inputs, _read_sweep_spec(sweep_dir))
        if options["enabled"]:
            report.inference, report.inference_figures = _inference_section(report_dir / INFERENCE_DIR, runs_df, options)
            report.output.notes += [f"Inference could not evaluate {run}: {why}"
                                    for run, why in report.inference["errors"].items()]
    except Exception as exc:  # write what there is, saying what failed, before raising
        _write_manifest(report, inputs, error=f"{type(exc).__name__}: {exc}")
        raise
    _write_manifest(report, inputs)
    _write_backlinks(report)
    return report


def render_sweep_report(
    *,
    sweep_dir: str | Path | None = None,
    run_dirs: Iterable[str | Path] | str | Path | None = None,
    analysis: str = "generic",
    select: Optional[Mapping[str, Any]] = None,
    thresholds: Optional[Mapping[str, Any]] = None,
    which_figures: Optional[Iterable[str]] = None,
    inference: Optional[Mapping[str, Any]] = None,
    output_dir: str | Path | None = None,
    name: Optional[str] = None,
    engine: str = "inprocess",
    pdf: bool = False,
    kernel_name: str = "python3",
) -> dict[str, Path]:
    """Execute report_templates/sweep_report.ipynb into the report directory: the layout plus report.html/.md.

    The template calls `build_sweep_report` with these arguments, so the report directory holds
    both the layout and the executed notebook (`sweep_report.ipynb`, `report.html` with images
    embedded, `report.md`). Arguments are checked here first, so a bad one fails before any cell runs.

    Args:
        sweep_dir, run_dirs, analysis, select, thresholds, which_figures, inference, output_dir,
        name: as for `build_sweep_report`.
        engine: "inprocess" (default: the cells run in this process) or "papermill" (a fresh kernel).
        pdf: also write report.pdf (needs Chromium).
        kernel_name: the Jupyter kernel that executes the template (papermill engine only).

    Returns:
        {"report_dir", "manifest", "notebook", "html", "markdown"} (and "pdf"): paths written.

    Raises:
        The errors of `build_sweep_report` for bad arguments; ReportError when a template cell
        fails (naming the cell), or the page check or the PDF fails.
    """
    get_analysis(analysis)
    figures = check_which_figures(analysis, which_figures)
    if sweep_dir is None and run_dirs is None:
        raise ReportError("render_sweep_report needs sweep_dir or run_dirs: a sweep report reports on runs "
                          "that exist and trains none")
    candidates = discover_runs(sweep_dir, run_dirs)
    report_dir = (Path(output_dir) if output_dir is not None
                  else resolve_report_dir(sweep_dir, map(str, candidates), name or analysis))
    parameters = {"sweep_dir": "" if sweep_dir is None else str(Path(sweep_dir).resolve()),
                  "run_dirs": [str(Path(r).resolve()) for r in _listed(run_dirs) or []], "analysis": analysis,
                  "select": dict(select or {}), "thresholds": dict(thresholds or {}), "which_figures": figures,
                  "inference": _inference_options(inference), "output_dir": str(report_dir.resolve()),
                  "name": name or analysis}
    parameters = to_plain(parameters, where="parameters", nonfinite_to_none=False)
    paths = render_template(SWEEP_REPORT_TEMPLATE, report_dir, parameters, title=f"Sweep report: {analysis}",
                            engine=engine, pdf=pdf, kernel_name=kernel_name)
    return {"report_dir": report_dir, "manifest": report_dir / MANIFEST_FILE, **paths}


def resolve_report_dir(sweep_dir: str | Path | None, run_dirs: Iterable[str], name: str) -> Path:
    """A new `<output_root>/reports/report_<YYYYmmdd-HHMMSS>_<name>` path (suffixed -2, -3 ... if taken)."""
    root = Path("outputs")
    if sweep_dir is not None and Path(sweep_dir).parent.name == SWEEPS_DIR:
        root = Path(sweep_dir).parent.parent
    elif sweep_dir is None:
        parents = {Path(r).parent for r in run_dirs}
        if len(parents) == 1 and next(iter(parents)).name == RUNS_DIR:
            root = next(iter(parents)).parent
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / REPORTS_DIR / f"report_{stamp}_{sanitize_run_name(name)}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _inference_section(inference_dir: Path, runs_df: pd.DataFrame, options: Mapping[str, Any]):
    """Run inference on the analysed runs; write inference/summary.json and inference/figures/."""
    from .inference import run_inference
    from .inference_plots import plot_inference_figures

    inference_dir.mkdir(parents=True, exist_ok=True)
    result = run_inference(list(runs_df["run_dir"]), dataset_split=options["dataset_split"],
                           batch_size=int(options["batch_size"]), autocast=bool(options["autocast"]),
                           max_samples=int(options["max_samples"]),
                           persist_raw_scores=bool(options["persist_raw_scores"]), output_dir=inference_dir)
    summary = result.to_dict()
    _write_json(inference_dir / SUMMARY_JSON, summary)
    return summary, plot_inference_figures(result, inference_dir / FIGURES_DIR)


def _load_with_skips(sweep_dir, run_dirs):
    """load_runs, plus each candidate it skipped and the reason from its warning."""
    candidates = discover_runs(sweep_dir, run_dirs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs_df, per_epoch, order = load_runs(sweep_dir=sweep_dir, run_dirs=run_dirs)
    text = "\n".join(str(w.message) for w in caught)
    skipped = []
    loaded = set(order)
    for candidate in candidates:
        if str(candidate) in loaded:
            continue
        reason = next((line.split(f"  {candidate}: ", 1)[1] for line in text.splitlines()
                       if line.startswith(f"  {candidate}: ")), "could not be loaded")
        skipped.append({"run_dir": str(candidate), "reason": reason})
    for w in caught:  # pass the reader's own warnings on, now that their content is recorded
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return runs_df, per_epoch, order, skipped


def _read_sweep_spec(sweep_dir) -> Optional[dict]:
    """sweep.yaml of the sweep folder, when there is one (a glob or run_dirs have none)."""
    path = Path(sweep_dir) / SWEEP_FILE if sweep_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return {"unreadable": f"{path}: {exc}"}


def _write_training(report: SweepReport, inputs: Mapping[str, Any], sweep_spec: Optional[dict]) -> None:
    """training/summary.csv, one table-<name>.csv per table, and summary.json."""
    training_dir = report.report_dir / TRAINING_DIR
    report.runs_df.to_csv(training_dir / SUMMARY_CSV, index=False)
    records = {}
    for table_name, table in report.output.tables.items():
        indexed = not isinstance(table.index, pd.RangeIndex)  # grids keep their row axis
        table.to_csv(training_dir / f"table-{table_name}.csv", index=indexed)
        records[table_name] = json.loads((table.reset_index() if indexed else table).to_json(orient="records"))
    _write_json(training_dir / SUMMARY_JSON, {
        "analysis": report.analysis, "n_runs": len(report.runs_df), "select": inputs["select"],
        "thresholds": inputs["thresholds"], "which_figures": inputs["which_figures"], "sweep": sweep_spec,
        "summary": report.output.summary, "notes": report.output.notes,
        "figures": {k: str(p.relative_to(report.report_dir)) for k, p in report.output.figures.items()},
        "tables": records, "skipped": report.skipped, "excluded": report.excluded,
    })


def _write_manifest(report: SweepReport, inputs: Mapping[str, Any], error: Optional[str] = None) -> None:
    """manifest.yaml: what went in, what was left out and why, every file that came out (and an error, if any)."""
    runs = [{"run_id": row["run_id"], "run_dir": row["run_dir"], "config_hash": row["config_hash"],
             "status": row["status"], "task": row["task"]} for _, row in report.runs_df.iterrows()]
    outputs = sorted(str(p.relative_to(report.report_dir)) for p in report.report_dir.rglob("*") if p.is_file())
    manifest = {
        "report_id": report.report_dir.name, "name": inputs["name"], "analysis": report.analysis,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "thesis_lib_version": __version__,
        "inputs": {"sweep_dir": inputs["sweep_dir"], "run_dirs": inputs["run_dirs"]},
        "filters": {"select": inputs["select"]}, "thresholds": inputs["thresholds"],
        "which_figures": inputs["which_figures"], "inference": inputs["inference"],
        "runs": runs, "skipped": report.skipped, "excluded": report.excluded, "notes": report.output.notes,
        "outputs": sorted({*outputs, MANIFEST_FILE}),
    }
    if error is not None:
        manifest["error"] = error
    plain = to_plain(manifest, where="manifest", nonfinite_to_none=True, unknown_as_str=True)
    atomic_write_text(report.manifest_path, yaml.safe_dump(plain, sort_keys=False, allow_unicode=True))


def _inference_options(inference: Optional[Mapping[str, Any]] | bool) -> dict:
    """The inference options with defaults filled in; `True`/`False` stand for {"enabled": ...}."""
    given = {"enabled": inference} if isinstance(inference, bool) else dict(inference or {})
    unknown = sorted(set(given) - set(DEFAULT_INFERENCE))
    if unknown:
        raise ConfigError(f"inference options {unknown} are unknown; expected some of {sorted(DEFAULT_INFERENCE)}")
    return {**DEFAULT_INFERENCE, **given}


def _listed(run_dirs) -> Optional[list[str]]:
    """run_dirs as a list of strings (None stays None)."""
    if run_dirs is None:
        return None
    return [str(r) for r in ([run_dirs] if isinstance(run_dirs, (str, Path)) else run_dirs)]


def _write_backlinks(report: SweepReport) -> None:
    """Append this report to each analysed run's reports.txt under the run's writer lock.

    A run another process is writing (RunLockedError) or a read-only run gets no backlink: a
    warning names the run and why (the holder: pid, host, job, what it does), and the report goes on.
    """
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    line = f"{stamp}\t{report.analysis}\t{report.report_dir.resolve()}\n"
    for run_dir in report.runs_df["run_dir"]:
        try:
            with hold_run_lock(run_dir, "adding a sweep report's backlink", heartbeat_every_s=None):
                with append_open(Path(run_dir) / REPORT_BACKLINKS, "a", inside=run_dir, encoding="utf-8") as handle:
                    handle.write(line)
        except RunLockedError as exc:
            warnings.warn(f"skipped the backlink to {run_dir}/{REPORT_BACKLINKS}: {exc}", stacklevel=3)
        except (OSError, FactsError) as exc:
            warnings.warn(f"could not add a backlink to {run_dir}/{REPORT_BACKLINKS}: {exc}", stacklevel=3)


def _write_json(path: Path, data: Any) -> None:
    """Strict JSON (NaN as null), atomically."""
    plain = to_plain(data, where=str(path), nonfinite_to_none=True, unknown_as_str=True)
    atomic_write_text(path, json.dumps(plain, indent=2) + "\n")

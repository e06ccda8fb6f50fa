"""Where everything lives: every file and folder of a run, a sweep and a report directory, named once.

This is the contract every part shares: the loop and the facts writer write these paths, the
readers, reports, exports and sweeps find them here, and `RUN_LAYOUT` / `SWEEP_LAYOUT` /
`REPORT_LAYOUT` say in one line each what a path holds (a test compares `RUN_LAYOUT` with what a
real run writes, so a new file must be registered here to exist). Paths are relative to the
directory they belong to, with "/" as separator. The module is a leaf: it imports nothing of
thesis_lib but its errors, and neither torch nor pandas.

Run ids are `run_<YYYYmmdd-HHMMSS>_<name>_<4 hex>` (local time). Uniqueness comes from
`os.mkdir`, which fails when the directory exists, on every POSIX filesystem including NFS:
a collision (50 runs of one sweep started in the same second) retries with a new suffix.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from .errors import FactsError

__all__ = ["RUN_LAYOUT", "SWEEP_LAYOUT", "REPORT_LAYOUT", "create_run_dir", "sanitize_run_name"]

# --- under an output root (`output_root`, "outputs" by default) ---------------------------------
RUNS_DIR = "runs"  # <output_root>/runs/<run_id>/: one run directory each; a sweep has its own runs/
SWEEPS_DIR = "multiruns"  # <output_root>/multiruns/exp_<stamp>_<name>/: one sweep directory each
REPORTS_DIR = "reports"  # <output_root>/reports/report_<stamp>_<name>/: one sweep report each
# <output_root>/.multiruns.lock: held (thesis_lib.run_lock) for the moment a sweep finds or creates its
# directory under multiruns/, so two identical sweeps started together share one directory.
SWEEPS_LOCK = ".multiruns.lock"

# --- a run directory -------------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"
ENV_FILE = "env.json"
DATA_META_FILE = "data_meta.json"
FACTS_DIR = "facts"
EVENTS_FILE = f"{FACTS_DIR}/events.jsonl"
SCALARS_FILE = f"{FACTS_DIR}/scalars.csv"
STEPS_FILE = f"{FACTS_DIR}/steps.csv"
TELEMETRY_FILE = f"{FACTS_DIR}/telemetry.csv"
LOGS_DIR = "logs"
STDOUT_LOG = f"{LOGS_DIR}/stdout.log"
BEST_CHECKPOINT = "best_val.pt"
LAST_CHECKPOINT = "last.pt"
MODEL_FILE = "model.pt"
MODEL_INFO_FILE = "model_info.json"
HISTORY_FILE = "training_history.json"
FIGURES_DIR = "figures"
EXPORTS_DIR = "exports"
# Inside the exports folder (EXPORTS_DIR unless `thesis-lib export --output-dir` names another).
EXPORT_INFO_FILE = "export_info.json"
STATE_DICT_EXPORT = "model_state_dict.pt"
TORCHSCRIPT_EXPORT = "model.torchscript.pt"
ONNX_EXPORT = "model.onnx"
# The serving models (thesis-lib export --format serving): raw waveform segments in, probabilities or scores out.
SERVING_TORCHSCRIPT_EXPORT = "serving.torchscript.pt"
SERVING_ONNX_EXPORT = "serving.onnx"
DRIVER_NOTEBOOK = "train.ipynb"
RUN_REPORT_DIR = "report"
REPORT_BACKLINKS = "reports.txt"
# Experiment trackers (thesis_lib.tracking): the TensorBoard event files (tracking.tensorboard_dir "")
# and each tracker's ids for this run (TensorBoard: the event-file directory written).
TENSORBOARD_DIR = "tensorboard"
TRACKING_FILE = "tracking.json"
# trainer.profile (thesis_lib/train/profiling.py): torch.profiler over a window of one epoch's batches.
PROFILE_DIR = "profile"
PROFILE_TRACE = f"{PROFILE_DIR}/trace.json"
PROFILE_TOP_OPS_TEXT = f"{PROFILE_DIR}/top_ops.txt"
PROFILE_TOP_OPS_CSV = f"{PROFILE_DIR}/top_ops.csv"
PROFILE_INFO = f"{PROFILE_DIR}/profile.json"
# The writer lock (thesis_lib.run_lock): the guard file stays; the holder record exists only while a
# process writes the run (a crash leaves it behind, and the next writer takes it over).
WRITER_LOCK = "writer.lock"
WRITER_RECORD = "writer.json"
# A report folder (a run's report/ or a sweep report directory) holds the executed template
# exported under one stem; images of the Markdown go to <stem>_files/.
REPORT_STEM = "report"
REPORT_HTML = f"{REPORT_STEM}.html"
REPORT_MARKDOWN = f"{REPORT_STEM}.md"
REPORT_PDF = f"{REPORT_STEM}.pdf"
TELEMETRY_FIGURE = "telemetry.png"
CURVES_FIGURE = "curves.png"
# The executed report notebook keeps its template's name (report_templates/<name>).
RUN_REPORT_NOTEBOOK = "run_report.ipynb"
SWEEP_REPORT_NOTEBOOK = "sweep_report.ipynb"

RUN_LAYOUT: dict[str, str] = {
    CONFIG_FILE: "the resolved config that produced the run, exactly",
    ENV_FILE: "host, python, torch, CUDA, GPU name/driver/power limit, git commit, pid, world size",
    DATA_META_FILE: "feature names, split sizes and the train split's z-score statistics; `dataset`: the data "
                    "file's identity and format, rows per split, features, class counts per split, where the "
                    "normalization came from, the loaders (absent in runs before it)",
    FACTS_DIR: "the run's facts, append-only",
    EVENTS_FILE: "lifecycle events (on_start ... on_exception), one JSON object a line",
    SCALARS_FILE: "one row per (epoch, split) under a header fixed at the start",
    STEPS_FILE: "the training loss at sync-point resolution",
    TELEMETRY_FILE: "one row per telemetry sample: GPU via NVML, process CPU% and RSS",
    LOGS_DIR: "what the run printed",
    STDOUT_LOG: "everything the run printed, stdout and stderr",
    BEST_CHECKPOINT: "the best validation epoch's weights, replaced when it improves",
    LAST_CHECKPOINT: "weights, optimiser, scheduler, early stopping and RNG state after the last epoch (resume)",
    MODEL_FILE: "the best epoch's weights (a state_dict), however the run ended",
    MODEL_INFO_FILE: "architecture, parameter counts, status, best epoch and test metrics",
    HISTORY_FILE: "per-epoch losses, metrics and learning rates",
    FIGURES_DIR: "training-time figure families (when logging.figures lists any)",
    EXPORTS_DIR: "state_dict, TorchScript and ONNX exports and export_info.json (thesis-lib export)",
    f"{EXPORTS_DIR}/{EXPORT_INFO_FILE}": "what was exported: files, sha256, shapes, max difference from eager",
    f"{EXPORTS_DIR}/{STATE_DICT_EXPORT}": "the best weights as a plain state_dict",
    f"{EXPORTS_DIR}/{TORCHSCRIPT_EXPORT}": "the model traced to TorchScript",
    f"{EXPORTS_DIR}/{ONNX_EXPORT}": "the model as ONNX, dynamic batch axis",
    f"{EXPORTS_DIR}/{SERVING_TORCHSCRIPT_EXPORT}": "waveform -> STFT, globals, normalization, model, traced to TorchScript",
    f"{EXPORTS_DIR}/{SERVING_ONNX_EXPORT}": "the same serving graph as ONNX, dynamic batch axis",
    DRIVER_NOTEBOOK: "the executed driver notebook, when the run went through papermill",
    RUN_REPORT_DIR: "the run report (report.enabled)",
    f"{RUN_REPORT_DIR}/{REPORT_HTML}": "the report as one offline HTML page: no script, images embedded",
    f"{RUN_REPORT_DIR}/{REPORT_PDF}": "the report printed by Chromium (report.pdf, or --pdf)",
    f"{RUN_REPORT_DIR}/{REPORT_MARKDOWN}": "the report as Markdown, figures beside it",
    f"{RUN_REPORT_DIR}/{TELEMETRY_FIGURE}": "the six telemetry panels: loss, LR, VRAM, GPU util, power, temperature",
    f"{RUN_REPORT_DIR}/{CURVES_FIGURE}": "loss and metric curves per epoch",
    f"{RUN_REPORT_DIR}/{RUN_REPORT_NOTEBOOK}": "the executed report template, outputs and all",
    REPORT_BACKLINKS: "the sweep reports that included this run, one path a line",
    TENSORBOARD_DIR: "TensorBoard event files (tracking.backends lists tensorboard, or thesis-lib sync --to tensorboard)",
    TRACKING_FILE: "each experiment tracker's ids for this run (TensorBoard: the event-file directory), so a sync updates",
    PROFILE_DIR: "torch.profiler's view of a window of training steps (trainer.profile.enabled)",
    PROFILE_TRACE: "the window as a Chrome trace: open it in https://ui.perfetto.dev or chrome://tracing",
    PROFILE_TOP_OPS_TEXT: "torch's table of the ops that took the most time in the window (key_averages)",
    PROFILE_TOP_OPS_CSV: "every op of the window, one row each: calls, self/total CPU and device time (us), memory",
    PROFILE_INFO: "the window (epoch, batches, settings), device, torch version, time traced, the files; or the error",
    WRITER_LOCK: f"the writer lock's guard (thesis_lib.run_lock); while a process writes the run, {WRITER_RECORD} "
                 "beside it names that process: pid, host, start, batch job, what it is doing, heartbeat",
}

# --- a sweep directory -----------------------------------------------------------------------------
SWEEP_FILE = "sweep.yaml"
SWEEP_NOTEBOOKS_DIR = "notebooks"
SWEEP_LOCKS_DIR = "locks"
SWEEP_JOB_LOGS_DIR = "job_logs"

SWEEP_LAYOUT: dict[str, str] = {
    SWEEP_FILE: "base config, grid, seeds, executor and each point's state, rewritten as points finish",
    RUNS_DIR: "the sweep's run directories",
    SWEEP_NOTEBOOKS_DIR: "driver notebooks being executed (via='notebook'); each moves into its run when done",
    SWEEP_LOCKS_DIR: "<point config hash>.lock per point: the process running a point holds its lock "
                     "(the .json beside it names that process while it runs), so no point runs twice at once",
    SWEEP_JOB_LOGS_DIR: "executor='slurm' / 'htcondor': the batch jobs' output and error files",
}

# --- a sweep report directory ----------------------------------------------------------------------
MANIFEST_FILE = "manifest.yaml"
TRAINING_DIR = "training"
INFERENCE_DIR = "inference"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"

REPORT_LAYOUT: dict[str, str] = {
    MANIFEST_FILE: "what the report was made from: inputs, runs, skipped runs, outputs, versions",
    TRAINING_DIR: "the training analysis",
    f"{TRAINING_DIR}/{SUMMARY_CSV}": "one row per run (load_runs' runs_df)",
    f"{TRAINING_DIR}/{SUMMARY_JSON}": "the analysis' tables and notes",
    f"{TRAINING_DIR}/{FIGURES_DIR}": "the analysis' figures",
    INFERENCE_DIR: "the inference analysis (when asked for)",
    f"{INFERENCE_DIR}/{SUMMARY_JSON}": "per-run reconstruction errors and AUROC",
    f"{INFERENCE_DIR}/{FIGURES_DIR}": "error distributions and ROC curves",
    REPORT_HTML: "the executed sweep report as one offline HTML page: no script, images embedded",
    REPORT_PDF: "the sweep report printed by Chromium (--pdf)",
    REPORT_MARKDOWN: "the executed sweep report as Markdown",
    SWEEP_REPORT_NOTEBOOK: "the executed report template, outputs and all",
}

_MAX_NAME_CHARS = 64
_MAX_ATTEMPTS = 64


def sanitize_run_name(run_name: str) -> str:
    """Keep [A-Za-z0-9_.-]; other runs of characters become '-'; empty or dot-only names become 'run'."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(run_name)).strip("-.")
    return cleaned[:_MAX_NAME_CHARS] or "run"


def create_run_dir(output_root: str | Path, run_name: str) -> tuple[Path, str]:
    """Create `<output_root>/runs/<run_id>/` with its `facts/` and `logs/` folders.

    Args:
        output_root: the outputs folder (created if missing).
        run_name: a human name for the run; characters outside [A-Za-z0-9_.-] are replaced.

    Returns:
        (run_dir, run_id).

    Raises:
        FactsError: the runs folder cannot be created, or no free id was found after many tries.
    """
    runs_root = Path(output_root) / RUNS_DIR
    try:
        runs_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FactsError(f"cannot create the runs folder {runs_root}: {exc}") from exc
    name = sanitize_run_name(run_name)
    for _ in range(_MAX_ATTEMPTS):
        run_id = f"run_{time.strftime('%Y%m%d-%H%M%S')}_{name}_{secrets.token_hex(2)}"
        run_dir = runs_root / run_id
        try:
            os.mkdir(run_dir)
        except FileExistsError:
            continue
        except OSError as exc:
            raise FactsError(f"cannot create the run directory {run_dir}: {exc}") from exc
        (run_dir / FACTS_DIR).mkdir()
        (run_dir / LOGS_DIR).mkdir()
        return run_dir, run_id
    raise FactsError(
        f"no free run id under {runs_root} for name {name!r} after {_MAX_ATTEMPTS} tries; "
        "is something creating directories there in a loop?"
    )

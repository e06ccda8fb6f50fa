"""A run from config to report: the training loop, then the run's report, the way users, sweeps and the CLI run it.

`thesis_lib.train.fit` is the loop alone and knows nothing of reports; this module sits above
both and composes them, so every run still ends with its report (`report.enabled`) while the
loop's package imports nothing from `reports`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping, Sequence, Union

from .config import AUTO_RESUME, Config, load_config
from .errors import ReportError
from .train import RunResult, fit

__all__ = ["train", "render_run_report_for"]


def train(
    config: Union[Config, Mapping, str, Path, None] = None,
    overrides: Union[Sequence[str], Mapping, None] = None,
    *,
    dashboard: Union[str, object, None] = "auto",
) -> RunResult:
    """Train a model and leave a complete run directory at `<output_root>/runs/<run_id>/`, report included.

    Takes what `thesis_lib.train.fit` takes (a Config, a nested dict, a YAML path or None; dotted
    overrides; the dashboard) and returns its RunResult. When the run ends, however it ends, and
    `report.enabled` is true, rank 0 renders `<run_dir>/report/` from the run directory; a report
    that fails is recorded in the run's facts (on_incident) and log, never raised.

    `trainer.resume_from="auto"` continues the newest unfinished run (CRASHED, or STOPPED by a
    signal) with the same run_name and config (`thesis_lib.facts.resume`) under output_root, else
    starts a new one; the run's log says which and why, and names the FAILED runs it passed by.

    Raises:
        ConfigError, DataError, ModelError, CheckpointError: bad input, before anything is written.
        RunLockedError: the run to resume is being written by a live process (with "auto": the
            newest unfinished run of this config); nothing was written.
        Any unexpected exception during training is recorded (on_exception, status FAILED,
        checkpoints kept, report rendered) and then re-raised. A NaN/inf loss does not raise:
        the run ends FAILED.
    """
    cfg = load_config(config, overrides)
    finish = functools.partial(render_run_report_for, pdf=cfg.report.pdf) if cfg.report.enabled else None
    resolve_resume = None
    if cfg.trainer.resume_from == AUTO_RESUME:  # the run to continue is found by reading the runs (facts)
        from .facts.resume import find_run_to_resume as resolve_resume
    return fit(cfg, dashboard=dashboard, finish=finish, resolve_resume=resolve_resume)


def render_run_report_for(run_dir: Path, *, pdf: bool = False) -> None:
    """Render report/ for the run in this process: HTML and Markdown (and the PDF when `pdf`), or
    Markdown alone where the HTML page's Markdown engine (mistune) is missing.

    Raises:
        ReportError: the report could not be rendered (the message names the run and the step).
            `fit` records it as an on_incident of part "report" after on_train_end; the run's
            status and model.pt are already written and stay as they are.
    """
    from .reports import render_run_report

    try:
        paths = render_run_report(run_dir, pdf=pdf)
        print(f"report: {paths.get('pdf') or paths.get('html') or paths.get('markdown')}")
        return
    except ImportError as exc:
        missing = exc.name or str(exc)
    except ReportError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever broke, the run records it as its report's failure
        raise ReportError(f"report not rendered for {run_dir}: {type(exc).__name__}: {exc}") from exc
    # A bare image without mistune: the Markdown report alone.
    from .reports import write_run_report_markdown

    try:
        paths = write_run_report_markdown(run_dir)
    except Exception as exc:  # noqa: BLE001
        raise ReportError(f"report not rendered for {run_dir} (Markdown only, {missing} missing): "
                          f"{type(exc).__name__}: {exc}") from exc
    print(f"report (Markdown only, {missing} missing): {paths.get('markdown')}")

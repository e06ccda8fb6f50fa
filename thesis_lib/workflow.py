"""A run from config to report: the training loop, then the run's report, the way users, sweeps and the CLI run it.

`thesis_lib.train.fit` is the loop alone and knows nothing of reports; this module sits above
both and composes them, so every run still ends with its report (`report.enabled`) while the
loop's package imports nothing from `reports`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence, Union

from .config import Config, load_config
from .train import RunResult, fit

__all__ = ["train", "render_report_fail_soft"]


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
    that fails is logged in the run's log, never raised.

    Raises:
        ConfigError, DataError, ModelError, CheckpointError: bad input, before anything is written.
        Any unexpected exception during training is recorded (on_exception, status FAILED,
        checkpoints kept, report rendered) and then re-raised. A NaN/inf loss does not raise:
        the run ends FAILED.
    """
    cfg = load_config(config, overrides)
    return fit(cfg, dashboard=dashboard, finish=render_report_fail_soft if cfg.report.enabled else None)


def render_report_fail_soft(run_dir: Path) -> None:
    """Render report/ for the run; a failure is printed (and so logged), never raised."""
    try:
        from .reports import render_run_report

        paths = render_run_report(run_dir)
        print(f"report: {paths.get('html') or paths.get('markdown')}")
    except ImportError as exc:
        # Machines without papermill/nbconvert (a bare GPU image): the Markdown report alone.
        try:
            from .reports import write_run_report_markdown

            paths = write_run_report_markdown(run_dir)
            print(f"report (Markdown only, {exc.name or exc} missing): {paths.get('markdown')}")
        except Exception as inner:  # noqa: BLE001 - fail-soft by contract
            print(f"warning: report not rendered for {run_dir}: {type(inner).__name__}: {inner}")
    except Exception as exc:  # noqa: BLE001 - a report failure must never fail the run
        print(f"warning: report not rendered for {run_dir}: {type(exc).__name__}: {exc}")

"""The run report rendered when train() ends: on by default, and never able to fail the run."""

from __future__ import annotations

from pathlib import Path

__all__ = ["render_report_fail_soft"]


def render_report_fail_soft(run_dir: Path) -> None:
    """Render report/ for the run; a failure is printed (and so logged), never raised."""
    try:
        from ..reports import render_run_report

        paths = render_run_report(run_dir)
        print(f"report: {paths.get('html') or paths.get('markdown')}")
    except ImportError as exc:
        # Machines without papermill/nbconvert (a bare GPU image): the Markdown report alone.
        try:
            from ..reports import write_run_report_markdown

            paths = write_run_report_markdown(run_dir)
            print(f"report (Markdown only, {exc.name or exc} missing): {paths.get('markdown')}")
        except Exception as inner:  # noqa: BLE001 - fail-soft by contract
            print(f"warning: report not rendered for {run_dir}: {type(inner).__name__}: {inner}")
    except Exception as exc:  # noqa: BLE001 - a report failure must never fail the run
        print(f"warning: report not rendered for {run_dir}: {type(exc).__name__}: {exc}")

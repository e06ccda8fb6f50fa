"""Which dashboard a run gets: `make_dashboard` resolves "auto" to a widget, a terminal view or text.

A widget needs a Jupyter kernel with a live frontend and ipywidgets; a terminal view needs stdout
to be a TTY curses can drive; anything else (papermill, nbmake, a pipe, THESIS_LIB_HEADLESS set)
gets one plain line per epoch. A kind that cannot work here falls back to text with one warning.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable, Optional, Union

from ..errors import ConfigError
from .base import DASHBOARD_METHODS, Dashboard, DashboardWarning, SafeDashboard, ipython_kernel_shell
from .text import TextDashboard

__all__ = ["KINDS", "HEADLESS_ENV", "detect_dashboard_kind", "make_dashboard"]

KINDS = ("auto", "widget", "terminal", "text")
HEADLESS_ENV = "THESIS_LIB_HEADLESS"


def _kernel_has_frontend(shell) -> bool:
    """Whether someone is looking at this kernel's output live.

    nbclient (and so papermill, nbmake and `nbconvert --execute`) sends every execute_request with
    allow_stdin=False, because nobody can answer input(); JupyterLab, Notebook 7, VS Code and Colab
    send True. Measured: papermill 2.7 and nbmake 1.5 kernels see False (and no JPY_SESSION_NAME);
    a jupyter_client session like a frontend's sees True.
    """
    return bool(getattr(shell.kernel, "_allow_stdin", True))


def _widgets_importable() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as missing
        return False
    return True


def _is_terminal(stream) -> bool:
    """stdout is a TTY whose TERM curses can drive."""
    try:
        tty = bool(stream.isatty())
    except Exception:  # noqa: BLE001
        return False
    term = os.environ.get("TERM", "")
    return tty and term not in ("", "dumb")


def _headless() -> bool:
    return os.environ.get(HEADLESS_ENV, "").strip().lower() not in ("", "0", "false", "no")


def detect_dashboard_kind(stream=None) -> str:
    """What "auto" resolves to here: "widget", "terminal" or "text".

    widget: a Jupyter kernel with a live frontend and ipywidgets installed; terminal: stdout is a
    TTY (TERM set, not "dumb"); text otherwise, and always when THESIS_LIB_HEADLESS is set.
    """
    if _headless():
        return "text"
    shell = ipython_kernel_shell()
    if shell is not None:
        return "widget" if _kernel_has_frontend(shell) and _widgets_importable() else "text"
    return "terminal" if _is_terminal(sys.stdout if stream is None else stream) else "text"


def _build(kind: str, update_interval_ms: int) -> Dashboard:
    """Construct a dashboard of `kind`, falling back to text (with one warning) when it cannot work here."""
    if kind == "widget" and not _widgets_importable():
        warnings.warn("dashboard='widget' needs ipywidgets (pip install ipywidgets); using text",
                      DashboardWarning, stacklevel=3)
        kind = "text"
    if kind == "terminal" and not _is_terminal(sys.stdout):
        warnings.warn("dashboard='terminal' needs stdout to be a terminal (TERM set, not 'dumb'); using text",
                      DashboardWarning, stacklevel=3)
        kind = "text"
    try:
        if kind == "widget":
            from .widget import WidgetDashboard

            return WidgetDashboard(update_interval_ms=update_interval_ms)
        if kind == "terminal":
            from .terminal import TerminalDashboard

            return TerminalDashboard(update_interval_ms=update_interval_ms)
    except Exception as exc:  # noqa: BLE001 - degrade, never fail the run
        warnings.warn(f"the {kind} dashboard could not be created ({type(exc).__name__}: {exc}); using text",
                      DashboardWarning, stacklevel=3)
    return TextDashboard()


def make_dashboard(kind: Union[str, Dashboard, None] = "auto", *, update_interval_ms: int = 250,
                   on_disable: Optional[Callable[[], None]] = None) -> Optional[SafeDashboard]:
    """The dashboard `train(dashboard=...)` asked for, wrapped so that it never stops training.

    Args:
        kind: "auto" (widget in a Jupyter kernel with a live frontend, terminal on a TTY, else
            text), "widget", "terminal", "text", None (no dashboard), or a Dashboard object.
        update_interval_ms: the most often a dashboard redraws and polls its UI.
        on_disable: called if the dashboard fails and switches itself off.

    Returns:
        A SafeDashboard, or None for kind=None.

    Raises:
        ConfigError: `kind` is an unknown name or an object without the Dashboard methods.
    """
    if kind is None:
        return None
    if isinstance(kind, SafeDashboard):
        return kind
    if isinstance(kind, str):
        if kind not in KINDS:
            raise ConfigError(f"dashboard must be one of {', '.join(map(repr, KINDS))}, None or a Dashboard "
                              f"object; got {kind!r}")
        resolved = detect_dashboard_kind() if kind == "auto" else kind
        return SafeDashboard(_build(resolved, update_interval_ms), on_disable)
    missing = [name for name in DASHBOARD_METHODS if not callable(getattr(kind, name, None))]
    if missing:
        raise ConfigError(f"dashboard object {type(kind).__name__} lacks the Dashboard methods {', '.join(missing)}")
    return SafeDashboard(kind, on_disable)

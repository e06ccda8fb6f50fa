"""Live training dashboards: a notebook widget, a full-screen terminal view, and a headless mode.

`train(cfg, dashboard="auto")` picks one with `make_dashboard`; every dashboard draws from a
`DashboardState` and is wrapped so that its errors never stop training.
"""

from .base import (
    Dashboard,
    DashboardWarning,
    LiveDashboard,
    SafeDashboard,
    detect_dashboard_kind,
    make_dashboard,
)
from .state import DashboardState, format_duration
from .text import TextDashboard

__all__ = [
    "Dashboard",
    "DashboardWarning",
    "DashboardState",
    "LiveDashboard",
    "SafeDashboard",
    "TextDashboard",
    "detect_dashboard_kind",
    "format_duration",
    "make_dashboard",
]

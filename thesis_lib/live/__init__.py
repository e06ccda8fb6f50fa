"""Live training dashboards: a notebook widget, a full-screen terminal view, and a headless mode.

`train(cfg, dashboard="auto")` picks one with `make_dashboard`; every dashboard draws from a
`DashboardState` and is wrapped so that its errors never stop training.
"""

from .base import Dashboard, DashboardWarning, LiveDashboard
from .choose import detect_dashboard_kind, make_dashboard
from .state import DashboardState

__all__ = ["Dashboard", "LiveDashboard", "DashboardState", "DashboardWarning", "make_dashboard", "detect_dashboard_kind"]

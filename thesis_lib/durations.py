"""Durations as people read them: compact on a progress line ("3m05s"), spelled out in a report ("3 min 05 s")."""

from __future__ import annotations

import math
from typing import Optional

__all__ = ["format_duration", "describe_duration"]


def format_duration(seconds: Optional[float]) -> str:
    """Seconds as "1h02m", "3m05s" or "12s"; "--" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def describe_duration(seconds: Optional[float]) -> str:
    """'42.0 s', '3 min 05 s' or '2 h 03 min (2.05 h)'; 'n/a' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min ({seconds / 3600:.2f} h)"

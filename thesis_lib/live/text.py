"""The headless dashboard, and the static picture of a dashboard (HTML with inline SVG charts).

Headless (papermill, nbmake, CI, a pipe) the loop's own one line per epoch is the progress
display: this dashboard adds nothing per step. When the run ends inside a Jupyter kernel it
displays the final dashboard as HTML, so an executed notebook and its HTML export keep a picture
of it. The widget dashboard draws its chart and its final picture with the same functions.
"""

from __future__ import annotations

import html
from typing import Iterable, Optional, Sequence

from .base import LiveDashboard, ipython_kernel_shell
from .state import DashboardState, Point

__all__ = ["TextDashboard", "display_summary", "header_text", "loss_chart_svg", "small_charts_html", "sparkline_svg",
           "stats_table_html", "summary_html", "summary_text"]

TRAIN_COLOR, SMOOTH_COLOR, VAL_COLOR = "#9ecae1", "#1f77b4", "#ff7f0e"
FONT = "font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"


class TextDashboard(LiveDashboard):
    """Keeps the numbers, prints nothing per step; leaves the final dashboard as HTML in a notebook."""

    owns_console = False

    def control(self) -> str:
        # Nothing to poll headless, and no way for a user to pause.
        return "run"

    def _leave_picture(self) -> None:
        display_summary(self.state)


def display_summary(state: DashboardState) -> bool:
    """Display the final dashboard in the notebook (HTML, plain text fallback); False outside a kernel."""
    if ipython_kernel_shell() is None:
        return False
    from IPython.display import display

    display({"text/html": summary_html(state), "text/plain": summary_text(state)}, raw=True)
    return True


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    """Map `value` from [low, high] to [start, end]."""
    return start + (value - low) / (high - low) * (end - start) if high > low else (start + end) / 2


def _range(values: Iterable[float]) -> tuple[float, float]:
    """min and max padded by 5 %; a flat series gets a visible band around it."""
    values = list(values)
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or (abs(high) * 0.1 or 1.0)
    return low - pad, high + pad


def _polyline(points: Sequence[Point], x_range, y_range, box, color: str, width: float, opacity: float = 1.0) -> str:
    left, top, right, bottom = box
    (x_low, x_high), (y_low, y_high) = x_range, y_range
    # Inlined scaling: this runs for every point at every redraw, the widget's main cost.
    sx = (right - left) / (x_high - x_low) if x_high > x_low else 0.0
    sy = (top - bottom) / (y_high - y_low) if y_high > y_low else 0.0
    coords = " ".join([f"{left + (x - x_low) * sx:.1f},{bottom + (y - y_low) * sy:.1f}" for x, y in points])
    return (f'<polyline fill="none" stroke="{color}" stroke-width="{width}" stroke-opacity="{opacity}" '
            f'points="{coords}"/>')


def loss_chart_svg(state: DashboardState, width: int = 560, height: int = 200) -> str:
    """The loss chart: train loss per sync window (light), its EMA (dark), val loss per epoch (orange).

    Auto-scaled to the points in the bounded histories; an SVG string, cheap to rebuild.
    """
    raw, smooth = list(state.train_raw), list(state.train_smooth)
    x_low = min((p[0] for p in raw), default=None)
    val = [p for p in state.val_loss if x_low is None or p[0] >= x_low]
    shown = raw + smooth + val
    if not shown:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
                f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12" fill="#888" '
                f'style="{FONT}">waiting for the first loss reading</text></svg>')
    x_range = (min(p[0] for p in shown), max(p[0] for p in shown))
    if x_range[0] == x_range[1]:
        x_range = (x_range[0] - 0.5, x_range[1] + 0.5)
    y_range = _range(p[1] for p in shown)
    box = (52, 18, width - 10, height - 22)
    left, top, right, bottom = box
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" style="{FONT}">',
             f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#ddd"/>']
    for fraction in (0.0, 0.5, 1.0):
        value = y_range[0] + fraction * (y_range[1] - y_range[0])
        y = _scale(value, *y_range, bottom, top)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10" fill="#555">'
                     f'{value:.3g}</text>')
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="10" fill="#555">epoch {x_range[0]:.2f}</text>'
                 f'<text x="{right}" y="{height - 6}" text-anchor="end" font-size="10" fill="#555">'
                 f'epoch {x_range[1]:.2f}</text>')
    if len(raw) > 1:
        parts.append(_polyline(raw, x_range, y_range, box, TRAIN_COLOR, 1, 0.8))
    if len(smooth) > 1:
        parts.append(_polyline(smooth, x_range, y_range, box, SMOOTH_COLOR, 2))
    if len(val) > 1:
        parts.append(_polyline(val, x_range, y_range, box, VAL_COLOR, 2))
    for x, y in val:
        parts.append(f'<circle cx="{_scale(x, *x_range, left, right):.1f}" cy="{_scale(y, *y_range, bottom, top):.1f}" '
                     f'r="3" fill="{VAL_COLOR}"/>')
    legend = [("train", TRAIN_COLOR), ("train (smoothed)", SMOOTH_COLOR), ("val", VAL_COLOR)]
    x = left + 4
    for label, color in legend:
        parts.append(f'<rect x="{x}" y="4" width="10" height="3" fill="{color}"/>'
                     f'<text x="{x + 14}" y="10" font-size="10" fill="#333">{label}</text>')
        x += 14 + 6 * len(label) + 12
    parts.append("</svg>")
    return "".join(parts)


def sparkline_svg(points: Sequence[Point], label: str, color: str = SMOOTH_COLOR, width: int = 180,
                  height: int = 56) -> str:
    """A small per-epoch chart (gradient norm, accuracy, perplexity) with its label and last value."""
    points = list(points)
    if not points:
        return ""
    x_range = (points[0][0], points[-1][0]) if len(points) > 1 else (points[0][0] - 0.5, points[0][0] + 0.5)
    y_range = _range(p[1] for p in points)
    box = (4, 16, width - 4, height - 4)
    body = _polyline(points, x_range, y_range, box, color, 1.5) if len(points) > 1 else ""
    last_x, last_y = points[-1]
    dot = (f'<circle cx="{_scale(last_x, *x_range, box[0], box[2]):.1f}" '
           f'cy="{_scale(last_y, *y_range, box[3], box[1]):.1f}" r="2.5" fill="{color}"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" style="{FONT}">'
            f'<text x="4" y="11" font-size="10" fill="#333">{html.escape(label)}: {last_y:.4g}</text>'
            f'{body}{dot}</svg>')


def small_charts_html(state: DashboardState) -> str:
    """Per-epoch charts beside the loss: gradient norm and every validation metric."""
    charts = [sparkline_svg(list(state.grad_norms), "grad norm", "#2ca02c")]
    charts += [sparkline_svg(list(points), f"val {name[len('metric_'):]}", "#9467bd")
               for name, points in sorted(state.val_metrics.items())]
    return "".join(f'<div style="display:inline-block;margin-right:8px">{c}</div>' for c in charts if c)


def stats_table_html(rows: Sequence[tuple[str, str]]) -> str:
    """The stats panel as a two-column HTML table."""
    cells = "".join(f'<tr><td style="padding:1px 10px 1px 0;color:#555">{html.escape(label)}</td>'
                    f'<td style="padding:1px 0;text-align:right;font-variant-numeric:tabular-nums">'
                    f'{html.escape(value)}</td></tr>' for label, value in rows)
    return f'<table style="border-collapse:collapse;font-size:12px;{FONT}">{cells}</table>'


def header_text(state: DashboardState) -> str:
    """"run_id · task model · device — STATUS (reason)"."""
    info = state.info
    status = state.status.upper() + (f" ({state.stop_reason})" if state.stop_reason else "")
    parts = [info.get("run_id", "run"), " ".join(str(info[k]) for k in ("task", "model") if info.get(k)),
             str(info.get("device", ""))]
    return " · ".join(p for p in parts if p) + f" — {status}"


def summary_html(state: DashboardState) -> str:
    """The final dashboard as static HTML: header, loss chart, per-epoch charts, stats, run directory."""
    epochs = state.summary.get("epochs_completed", state.epoch)
    run_dir = state.summary.get("run_dir") or state.info.get("run_dir", "")
    return (f'<div class="thesis-lib-dashboard-summary" style="{FONT};border:1px solid #ddd;border-radius:4px;'
            f'padding:8px;max-width:900px">'
            f'<div style="font-weight:600;font-size:13px;margin-bottom:4px">{html.escape(header_text(state))}</div>'
            f'<div style="font-size:12px;color:#555;margin-bottom:6px">epochs completed: {epochs} of '
            f'{state.epochs} · {html.escape(str(run_dir))}</div>'
            f'<div style="display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start">'
            f'<div>{loss_chart_svg(state)}<div>{small_charts_html(state)}</div></div>'
            f'{stats_table_html(state.stats())}</div></div>')


def summary_text(state: DashboardState) -> str:
    """The final dashboard in a few plain lines (the notebook's text/plain fallback, the terminal's goodbye)."""
    lines = [header_text(state)]
    stats = [f"{label} {value}" for label, value in state.stats() if value != "--"]
    lines += ["  " + "   ".join(stats[i:i + 4]) for i in range(0, len(stats), 4)]
    run_dir: Optional[str] = state.summary.get("run_dir") or state.info.get("run_dir")
    if run_dir:
        lines.append(f"  run directory: {run_dir}")
    return "\n".join(lines)

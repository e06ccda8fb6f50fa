"""The sweep figures' log axes: tick labels that can be read, none drawn over another, on narrow and wide ranges."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from matplotlib.figure import Figure

from thesis_lib.reports.sweep_plots import (
    FigureStyle,
    category_colors,
    new_figure,
    plain_number,
    plot_pareto,
    plot_run_curves,
    save_figure,
)

CATEGORIES = ["identity", "vq", "identity", "vq", "fsq", "fsq"]
# (name, x values, y values, y on a log scale too, figure width in inches or None for the style's)
CASES = [
    ("narrow", [0.9, 0.95, 1.02, 1.1, 1.2, 1.3], [0.5, 0.4, 0.45, 0.3, 0.33, 0.2], False, None),
    ("wide", [1.0, 10.0, 120.0, 900.0, 5000.0, 1e4], [1e-3, 5e-3, 0.02, 0.3, 0.9, 2.0], True, None),
    ("under_a_decade", [1.5, 2.2, 3.1, 4.4, 6.3, 9.0], [0.5, 0.4, 0.45, 0.3, 0.33, 0.2], False, None),
    ("decade_and_a_bit", [2.0, 3.0, 5.0, 8.0, 13.0, 30.0], [1e-3, 5e-3, 0.02, 0.3, 0.9, 2.0], True, 3.0),
    ("many_decades_narrow_figure", [1e-6, 1e-3, 1.0, 1e3, 1e6, 1e9], [0.9, 1.0, 1.1, 1.2, 1.25, 1.3], True, 3.5),
]


def visible_labels(axis) -> list:
    """(text, window extent) of the tick labels, major and minor, drawn with text inside the axis's view."""
    lo, hi = sorted(axis.get_view_interval())
    labels = []
    for minor in (False, True):
        locs = axis.get_minorticklocs() if minor else axis.get_majorticklocs()
        for loc, label in zip(locs, axis.get_ticklabels(minor=minor)):
            if label.get_visible() and label.get_text().strip() and lo * (1 - 1e-9) <= loc <= hi * (1 + 1e-9):
                labels.append((label.get_text(), label.get_window_extent()))
    return labels


def assert_readable(fig: Figure, ax) -> dict:
    """Draw on the Agg canvas; every log axis shows two labels or more and no two overlap. Returns the texts."""
    fig.canvas.draw()
    shown = {}
    for axis in (ax.xaxis, ax.yaxis):
        labels = visible_labels(axis)
        texts = [text for text, _ in labels]
        if axis.get_scale() == "log":
            assert len(labels) >= 2, (axis.axis_name, texts)
            assert not any("\\times" in t or "$" in t for t in texts), texts  # plain numbers, not mathtext powers
        for i, (text_a, box_a) in enumerate(labels):
            for text_b, box_b in labels[i + 1:]:
                assert not box_a.overlaps(box_b), f"{axis.axis_name} labels {text_a!r} and {text_b!r} overlap"
        shown[axis.axis_name] = texts
    return shown


def pareto(x, y, log_y, width, *, log_after: bool):
    """A compression Pareto figure as compare_tokenizers draws it (log scale set after plotting) or through log_x."""
    fig, (ax,) = new_figure(FigureStyle(), width=width)
    plot_pareto(ax, x, y, CATEGORIES, category_colors(CATEGORIES), xlabel="compression (input bits / latent bits)",
                ylabel="best val mse", maximize_x=True, legend_title="tokenizer",
                log_x=not log_after, log_y=log_y and not log_after)
    if log_after:
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
    ax.set_title("Error vs compression: non-dominated runs ringed")
    return fig, ax


@pytest.mark.parametrize("name, x, y, log_y, width", CASES, ids=[c[0] for c in CASES])
def test_pareto_saved_by_an_analysis_has_readable_log_ticks(tmp_path, name, x, y, log_y, width):
    fig, ax = pareto(x, y, log_y, width, log_after=True)  # the analysis switches to log after plot_pareto
    path = save_figure(fig, tmp_path, name, FigureStyle())
    assert path.name == f"figure-{name}.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig.set_dpi(FigureStyle().dpi)  # check at the resolution it was saved at
    shown = assert_readable(fig, ax)
    if name == "narrow":
        assert shown["x"][0] == "0.9" and "1" in shown["x"] and len(shown["x"]) >= 3
    if name == "wide":
        assert shown["x"] == ["1", "10", "100", "1,000", "10,000"]


@pytest.mark.parametrize("name, x, y, log_y, width", CASES, ids=[c[0] for c in CASES])
def test_pareto_with_log_axes_asked_for_is_readable_without_saving(name, x, y, log_y, width):
    fig, ax = pareto(x, y, log_y, width, log_after=False)
    assert ax.get_xscale() == "log" and ax.get_yscale() == ("log" if log_y else "linear")
    assert_readable(fig, ax)


def test_log_curves_have_plain_labels():
    fig, (ax,) = new_figure(FigureStyle())
    epochs = np.arange(10)
    curves = [("a", epochs, 3.0 * 0.5 ** epochs), ("b", epochs, 2.0 * 0.6 ** epochs)]
    plot_run_curves(ax, curves, category_colors(["a", "b"]), xlabel="epoch", ylabel="val loss", log_y=True)
    assert ax.get_yscale() == "log"
    shown = assert_readable(fig, ax)
    assert all(text[0].isdigit() for text in shown["y"]), shown["y"]


def test_plain_numbers():
    assert [plain_number(v) for v in (0.001, 0.05, 1.1000000000000001, 1.0, 12345.0, 1e6, 2.5e-7, 0.0)] == [
        "0.001", "0.05", "1.1", "1", "12,345", "1e6", "2.5e-7", "0"]


def test_report_figures_never_touch_pyplot(tmp_path):
    """Drawn and saved in a fresh interpreter: pyplot is never imported, so a notebook's own figures are left alone."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from thesis_lib.reports.sweep_plots import FigureStyle, new_figure, plot_pareto, save_figure
        from thesis_lib.reports import telemetry_plot  # noqa: F401 (the run report's figures: imported, no pyplot)
        fig, (ax,) = new_figure(FigureStyle())
        plot_pareto(ax, [1, 10, 100], [0.3, 0.2, 0.1], ["a", "b", "c"], {{}}, xlabel="x", ylabel="y", log_x=True)
        save_figure(fig, Path({str(tmp_path)!r}), "pareto", FigureStyle())
        print("matplotlib.pyplot" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"

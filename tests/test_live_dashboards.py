"""make_dashboard, the safe wrapper, the text and widget dashboards, and the loop's Stop."""

import queue
import re
import time
import warnings
from pathlib import Path

import pytest

from thesis_lib.data import make_synthetic_events
from thesis_lib.errors import ConfigError
from thesis_lib.facts import load_runs, read_events
from thesis_lib.live import DashboardWarning, detect_dashboard_kind, make_dashboard
from thesis_lib.live.base import SafeDashboard
from thesis_lib.live.text import TextDashboard
from thesis_lib import train

TINY_MODEL = {"encoder": "mlp", "bottleneck": "vq", "latent_dim": 8, "hidden_dim": 32, "num_layers": 1,
              "token_embed_dim": 4, "vq": {"codebook_size": 16, "code_dim": 4}}
INFO = {"run_id": "run_w", "run_dir": "/tmp/run_w", "task": "classifier", "model": "mlp", "device": "cpu",
        "epochs": 3, "start_epoch": 0, "steps_per_epoch": 10, "params": {"total": 5, "trainable": 5}}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class CountingPoller:
    """Stands in for the kernel poller: counts polls and runs a scripted action at a given poll."""

    def __init__(self, actions=None):
        self.calls = 0
        self.actions = actions or {}

    def __call__(self):
        self.calls += 1
        action = self.actions.get(self.calls)
        if action is not None:
            action()


class FakeTTY:
    def isatty(self):
        return True


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "events.h5"
    make_synthetic_events(path, n_events=900, seed=0, n_tokens=8)
    return path


def _config(events, tmp_path, epochs=2):
    return {"output_root": str(tmp_path / "outputs"), "run_name": "live",
            "data": {"path": str(events), "batch_size": 64}, "model": dict(TINY_MODEL), "trainer": {"epochs": epochs, "seed": 1, "sync_every_n_steps": 2, "test": False},
            "report": {"enabled": False}, "logging": {"update_interval_ms": 10}}


# -- choosing a dashboard ------------------------------------------------------------------
def test_auto_is_text_without_a_tty_or_kernel():
    dashboard = make_dashboard("auto")
    assert isinstance(dashboard, SafeDashboard) and isinstance(dashboard.inner, TextDashboard)
    assert dashboard.owns_console is False
    assert make_dashboard(None) is None


def test_detection_rules(monkeypatch):
    monkeypatch.delenv("THESIS_LIB_HEADLESS", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert detect_dashboard_kind(FakeTTY()) == "terminal"
    monkeypatch.setenv("TERM", "dumb")
    assert detect_dashboard_kind(FakeTTY()) == "text"
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("THESIS_LIB_HEADLESS", "1")
    assert detect_dashboard_kind(FakeTTY()) == "text"


def test_terminal_without_a_tty_degrades_to_text_with_one_warning():
    with pytest.warns(DashboardWarning, match="needs stdout to be a terminal"):
        dashboard = make_dashboard("terminal")
    assert isinstance(dashboard.inner, TextDashboard)


def test_bad_dashboard_arguments_name_what_is_allowed():
    with pytest.raises(ConfigError, match=r"must be one of 'auto', 'widget', 'terminal', 'text'.*got 'fancy'"):
        make_dashboard("fancy")
    with pytest.raises(ConfigError, match="dashboard object object lacks the Dashboard methods on_start"):
        make_dashboard(object())


# -- the safe wrapper ----------------------------------------------------------------------
class BrokenDashboard:
    owns_console = True

    def __init__(self, control_answer="stop"):
        self.calls, self.closed, self.control_answer = [], 0, control_answer

    def on_start(self, info):
        self.calls.append("on_start")

    def on_sync(self, *args):
        self.calls.append("on_sync")
        raise RuntimeError("chart exploded")

    def on_epoch_end(self, *args):
        self.calls.append("on_epoch_end")

    def control(self):
        self.calls.append("control")
        return self.control_answer

    def on_end(self, *args):
        self.calls.append("on_end")

    def close(self):
        self.closed += 1


def test_safe_wrapper_swallows_an_error_with_one_warning_and_disables():
    inner, disabled = BrokenDashboard(), []
    dashboard = make_dashboard(inner, on_disable=lambda: disabled.append(True))
    dashboard.on_start({})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            dashboard.on_sync(0, 1, 10, {"loss": 1.0}, 10, 0.1, None)
        assert dashboard.control() == "run"
        dashboard.on_end("COMPLETED", "max_epochs", {})
        dashboard.close()
    messages = [str(w.message) for w in caught if issubclass(w.category, DashboardWarning)]
    assert messages == ["the BrokenDashboard dashboard failed in on_sync (RuntimeError: chart exploded); "
                        "it is switched off and training goes on"]
    assert inner.calls == ["on_start", "on_sync"]  # nothing reached it after the failure
    assert inner.closed == 1 and disabled == [True] and dashboard.owns_console is False


def test_text_dashboard_prints_nothing_per_step(capsys):
    dashboard = make_dashboard("text", update_interval_ms=0)
    dashboard.on_start(INFO)
    for step in range(1, 200):
        dashboard.on_sync(0, step, 200, {"loss": 1.0 / step}, step * 8, 0.1, None)
        assert dashboard.control() == "run"
    dashboard.on_epoch_end(0, {"loss": 0.1}, {"loss": 0.2}, 0.1, 0.5, 100.0, {}, 0.2, True)
    dashboard.on_end("COMPLETED", "max_epochs", {"best_epoch": 0, "best_val_loss": 0.2})
    dashboard.close()
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert len(dashboard.inner.state.train_raw) == 199  # it kept the numbers for the final picture


# -- the widget, outside a frontend ---------------------------------------------------------
def _widget(poller, clock=None, sleeps=None):
    from thesis_lib.live.widget import WidgetDashboard

    return WidgetDashboard(update_interval_ms=250, poller=poller, display=False, clock=clock or FakeClock(),
                           sleep=(sleeps.append if sleeps is not None else lambda s: None))


def test_widget_shows_progress_stats_and_chart():
    clock = FakeClock()
    dashboard = _widget(CountingPoller(), clock)
    dashboard.on_start(INFO)
    for step in (2, 4, 6):
        clock.now += 1.0
        dashboard.on_sync(0, step, 10, {"loss": 1.0 / step, "metric_accuracy": 0.5 + step / 100}, step * 32, 2e-3, None)
    clock.now += 1.0
    dashboard.control()
    assert dashboard.step_bar.value == pytest.approx(0.6)
    assert dashboard.epoch_bar.value == pytest.approx(0.2)
    assert "step 6 / 10 of epoch 0 (1/3)" in dashboard.step_label.value
    assert "run_w" in dashboard.header.value and "RUNNING" in dashboard.header.value
    points = re.findall(r'points="([^"]*)"', dashboard.chart.value)
    assert [len(p.split()) for p in points] == [3, 3]  # train raw and smoothed, no val yet
    dashboard.on_epoch_end(0, {"loss": 0.2, "metric_accuracy": 0.6}, {"loss": 0.25, "metric_accuracy": 0.625}, 2e-3,
                           0.75, 512.0, {}, 0.25, True)
    stats = dashboard.stats.value
    for text in ("0.2500 (epoch 0)", "0.6250 val", "0.7500", "512", "2.00e-03"):
        assert text in stats
    assert "grad norm: 0.75" in dashboard.small_charts.value
    assert dashboard.epoch_bar.value == pytest.approx(1 / 3)


def test_widget_buttons_set_stop_and_pause():
    dashboard = _widget(CountingPoller())
    dashboard.on_start(INFO)
    dashboard.pause_button.click()
    assert dashboard.state.paused and dashboard.pause_button.description == "Resume"
    dashboard.pause_button.click()
    assert not dashboard.state.paused and dashboard.pause_button.description == "Pause"
    dashboard.stop_button.click()
    assert dashboard.state.stop_requested and dashboard.stop_button.disabled
    assert dashboard.control() == "stop"


def test_control_is_cheap_until_a_poll_is_due():
    clock = FakeClock()
    poller = CountingPoller()
    dashboard = _widget(poller, clock)
    dashboard.on_start(INFO)
    renders = dashboard.renders
    assert all(dashboard.control() == "run" for _ in range(1000))
    assert poller.calls == 1 and dashboard.renders == renders  # the first call polls; then nothing is due
    clock.now += 0.251
    dashboard.control()
    assert poller.calls == 2
    assert dashboard.state.step == 1001  # control() calls move the step bar between syncs


def test_pause_blocks_control_until_resumed():
    sleeps = []
    holder = {}
    poller = CountingPoller({1: lambda: holder["d"].pause_button.click(), 4: lambda: holder["d"].pause_button.click()})
    dashboard = holder["d"] = _widget(poller, sleeps=sleeps)
    dashboard.on_start(INFO)
    assert dashboard.control() == "run"  # returned only after the second click
    assert poller.calls == 4 and sleeps == [0.1, 0.1, 0.1]
    assert not dashboard.state.paused


def test_a_pause_seen_at_epoch_end_holds_the_next_step():
    clock, sleeps, holder = FakeClock(), [], {}
    # Poll 2 is on_epoch_end's (the click arrived during validation); poll 4 is the Resume.
    poller = CountingPoller({2: lambda: holder["d"].pause_button.click(), 4: lambda: holder["d"].pause_button.click()})
    dashboard = holder["d"] = _widget(poller, clock, sleeps=sleeps)
    dashboard.on_start(INFO)
    assert dashboard.control() == "run"  # the first call polls; the next poll is 0.25 s away
    dashboard.on_epoch_end(0, {"loss": 0.1}, {"loss": 0.2}, 0.1, 0.5, 100.0, {}, 0.2, True)
    assert dashboard.state.paused and dashboard.pause_button.description == "Resume"
    assert dashboard.control() == "run"  # blocked until Resume, though no poll was due by the clock
    assert poller.calls == 4 and sleeps and not dashboard.state.paused


def test_stop_while_paused_ends_the_wait():
    holder = {}
    poller = CountingPoller({1: lambda: holder["d"].pause_button.click(), 3: lambda: holder["d"].stop_button.click()})
    dashboard = holder["d"] = _widget(poller)
    dashboard.on_start(INFO)
    assert dashboard.control() == "stop"
    assert "STOPPING" in dashboard.header.value


# -- with the real loop ---------------------------------------------------------------------
class StopAfter:
    """A dashboard whose user presses Stop after `n` steps."""

    owns_console = False

    def __init__(self, n):
        self.n, self.controls, self.syncs, self.ended = n, 0, [], None

    def on_start(self, info):
        self.info = info

    def on_sync(self, epoch, batch, steps_per_epoch, metrics, samples, lr, gpu):
        self.syncs.append((epoch, batch, steps_per_epoch, round(metrics["loss"], 6), samples))

    def on_epoch_end(self, *args):
        pass

    def control(self):
        self.controls += 1
        return "stop" if self.controls >= self.n else "run"

    def on_end(self, status, stop_reason, summary):
        self.ended = (status, stop_reason, summary)

    def close(self):
        pass


def test_stop_from_a_dashboard_ends_the_run_stopped_with_checkpoints(events, tmp_path):
    dashboard = StopAfter(14)
    result = train(_config(events, tmp_path, epochs=50), dashboard=dashboard)
    assert (result.status, result.stop_reason) == ("STOPPED", "stopped_by_user")
    steps_per_epoch = dashboard.info["steps_per_epoch"]
    assert dashboard.controls == 14 and result.epochs_completed == 14 // steps_per_epoch
    assert dashboard.ended[0:2] == ("STOPPED", "stopped_by_user")
    assert dashboard.syncs[0][:3] == (0, 2, steps_per_epoch)
    run = Path(result.run_dir)
    assert (run / "last.pt").is_file() and (run / "best_val.pt").is_file()
    assert read_events(run)[-1]["moment"] == "on_train_end"
    runs_df, _, _ = load_runs(run_dirs=[str(run)])
    assert runs_df.loc[0, "status"] == "STOPPED"


def test_a_failing_dashboard_does_not_stop_training(events, tmp_path):
    with pytest.warns(DashboardWarning, match="failed in on_sync"):
        result = train(_config(events, tmp_path), dashboard=BrokenDashboard(control_answer="run"))
    assert result.status == "COMPLETED" and result.epochs_completed == 2


def test_widget_dashboard_runs_with_the_loop_outside_a_frontend(events, tmp_path, capsys):
    result = train(_config(events, tmp_path), dashboard="widget")
    assert result.status == "COMPLETED"
    out = capsys.readouterr().out
    epoch_line = re.compile(r"epoch .*2/2.*train \d")
    assert not epoch_line.search(out)  # the widget owns the console: epoch lines go to the log only
    assert epoch_line.search((Path(result.run_dir) / "logs" / "stdout.log").read_text())


# -- in a real kernel: a frontend's click reaches the dashboard while the cell trains ----------
KERNEL_CELL = """
from thesis_lib import train
result = train({config!r}, dashboard="widget")
print("RESULT", result.status, result.stop_reason, result.epochs_completed)
"""


@pytest.mark.slow
def test_stop_button_click_stops_training_in_a_real_kernel(events, tmp_path):
    pytest.importorskip("jupyter_client")
    from jupyter_client.manager import start_new_kernel

    config = _config(events, tmp_path, epochs=200)
    config["logging"]["update_interval_ms"] = 50
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(Path(__file__).resolve().parents[1]))
    try:
        msg_id = kc.execute(KERNEL_CELL.format(config=config))  # allow_stdin=True, as JupyterLab sends
        stop_id, picture, output, clicked = None, None, "", False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "RESULT" not in output:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "comm_open" and content["data"]["state"].get("description") == "Stop":
                stop_id = content["comm_id"]
            elif kind == "comm_msg" and stop_id and not clicked and "of epoch 1 (" in str(content["data"]):
                # the step label is in the second epoch (epoch 0 has ended): the widget is live; press Stop
                kc.session.send(kc.shell_channel.socket, kc.session.msg(
                    "comm_msg", {"comm_id": stop_id, "data": {"method": "custom", "content": {"event": "click"}}}))
                clicked = True
            elif kind == "update_display_data":
                picture = content["data"]
            elif kind == "stream" and msg["parent_header"].get("msg_id") == msg_id:
                output += content["text"]
        assert clicked, f"the dashboard never reached epoch 1; output: {output[-2000:]}"
        match = re.search(r"RESULT (\w+) (\w+) (\d+)", output)
        assert match and match.group(1, 2) == ("STOPPED", "stopped_by_user"), output[-2000:]
        assert 1 <= int(match.group(3)) < 200
        # the live widget was replaced by its static picture (what a saved notebook keeps)
        assert picture is not None and "STOPPED" in picture["text/html"] and "<svg" in picture["text/html"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.slow
def test_headless_notebook_keeps_a_static_picture_of_the_dashboard(events, tmp_path):
    """papermill (nbclient) runs with dashboard="auto": text mode, and the final dashboard stays as HTML."""
    papermill = pytest.importorskip("papermill")
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(
        "from thesis_lib import train\n"
        f"result = train({_config(events, tmp_path)!r})\n"
        "print('RESULT', result.status)")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source, executed = tmp_path / "headless.ipynb", tmp_path / "headless_out.ipynb"
    nbformat.write(notebook, source)
    papermill.execute_notebook(str(source), str(executed), kernel_name="python3", progress_bar=False,
                               cwd=str(Path(__file__).resolve().parents[1]))
    outputs = nbformat.read(executed, as_version=4).cells[0].outputs
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "RESULT COMPLETED" in text and re.search(r"epoch .*2/2.*train \d", text)  # text mode: epoch lines
    assert "\r" not in text and "widget-view" not in str(outputs)
    pictures = [o for o in outputs if o.output_type == "display_data" and "text/html" in o.data]
    assert len(pictures) == 1
    html = pictures[0].data["text/html"]
    assert "thesis-lib-dashboard-summary" in html and "COMPLETED" in html and "<polyline" in html
    assert "COMPLETED" in pictures[0].data["text/plain"]

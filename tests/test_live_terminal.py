"""The full-screen terminal dashboard, driven in a real terminal (tmux): q stops, the terminal comes back."""

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from thesis_lib.data import make_synthetic_events
from thesis_lib.facts import load_runs, read_events
from thesis_lib.live.terminal import bar, column_graph, sparkline

REPO = Path(__file__).resolve().parents[1]
TMUX = shutil.which("tmux")
# After the program: its exit code, then the tty modes curses changes ("echo icanon" when restored).
AFTER = "echo EXITCODE=$?; echo MODES $(stty -a | tr ' ;' '\\n\\n' | grep -x -e echo -e icanon -e -echo -e -icanon | sort); sleep 30"


def test_bar_and_sparkline_drawing():
    assert bar(0.5, 10) == "█████·····"
    assert bar(0.55, 10) == "█████▌····"
    assert bar(0.5, 10, unicode=False) == "#####....."
    assert sparkline([3, 2, 1, 2, 3], 5) == "█▄▁▄█"
    assert sparkline(list(range(100)), 10) == "▁▁▂▃▄▄▅▆▇█"  # resampled to the width


def test_column_graph_marks_val_points_and_labels_the_range():
    lines = column_graph([(0.5, 2.0), (1.0, 1.0)], [(1.0, 1.5)], width=19, height=4)
    assert len(lines) == 4 and all(len(line) == 19 for line in lines)
    assert lines == ["       2│█████     ",  # the first half of the columns is the first point (2.0),
                     "        │█████    o",  # val 1.5 at the last column, half-way up
                     "        │█████     ",
                     "       1│█████▁▁▁▁▁"]  # the minimum keeps a visible sliver


class Tmux:
    """A private tmux server (its own socket), so the test never touches anyone's sessions."""

    def __init__(self, name: str):
        self.base = [TMUX, "-L", name]

    def __call__(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=10).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "live")

    def wait_for(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.3)
        raise AssertionError(f"the screen never showed {pattern!r} within {timeout_s} s; it shows:\n{screen}")


@pytest.mark.slow
@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")
def test_q_stops_the_run_and_restores_the_terminal(tmp_path):
    data = make_synthetic_events(tmp_path / "events.h5", n_events=900, seed=0, n_tokens=8)
    config = {
        "output_root": str(tmp_path / "out"), "run_name": "tmux", "data": {"path": str(data), "batch_size": 32},
        "model": {"encoder": "mlp", "bottleneck": "vq", "latent_dim": 8, "hidden_dim": 32, "num_layers": 1,
                  "token_embed_dim": 4, "vq": {"codebook_size": 16, "code_dim": 4}},
        "trainer": {"epochs": 500, "seed": 1, "sync_every_n_steps": 2, "test": False},
        "report": {"enabled": False}, "logging": {"update_interval_ms": 100},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    train = f"{shlex.quote(sys.executable)} -m thesis_lib.cli train --config {shlex.quote(str(tmp_path / 'cfg.yaml'))}"
    command = f"cd {shlex.quote(str(REPO))} && env -u THESIS_LIB_HEADLESS {train}; {AFTER}"
    tmux = Tmux(f"thesis-live-{tmp_path.name}")
    try:
        tmux("new-session", "-d", "-s", "live", "-x", "120", "-y", "40", command)
        # the dashboard is up and at least one epoch has ended (a val loss is shown)
        screen = tmux.wait_for(r"val loss\s+\d", timeout_s=90)
        assert "q: stop   space: pause/resume" in screen and re.search(r"epochs .*/500", screen)
        assert tmux("display", "-p", "-t", "live", "#{alternate_on}").strip() == "1"
        tmux("send-keys", "-t", "live", " ")
        tmux.wait_for("PAUSED: space resumes", timeout_s=10)
        tmux("send-keys", "-t", "live", "q")
        screen = tmux.wait_for(r"MODES .*", timeout_s=60)
        assert "EXITCODE=0" in screen and "MODES echo icanon" in screen
        assert "STOPPED (stopped_by_user)" in screen  # the summary the dashboard leaves behind
        assert "q: stop" not in screen and "│" not in screen  # no curses leftovers
        assert tmux("display", "-p", "-t", "live", "#{alternate_on}").strip() == "0"
    finally:
        tmux("kill-server")
    runs_df, _, order = load_runs(sweep_dir=str(tmp_path / "out"))
    assert runs_df.loc[0, "status"] == "STOPPED"
    run = Path(order[0])
    end = [e for e in read_events(run) if e["moment"] == "on_train_end"][0]
    assert end["stop_reason"] == "stopped_by_user" and 1 <= end["epochs_completed"] < 500
    assert (run / "last.pt").is_file() and (run / "best_val.pt").is_file()


CRASHING = """
from thesis_lib.live import make_dashboard
dashboard = make_dashboard("terminal", update_interval_ms=10)
try:
    dashboard.on_start({"run_id": "crash", "epochs": 3, "steps_per_epoch": 10})
    dashboard.on_sync(0, 5, 10, {"loss": 1.0}, 50, 0.1, None)
    raise RuntimeError("boom in the middle of training")
finally:
    dashboard.close()
"""


@pytest.mark.slow
@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")
def test_the_terminal_is_restored_when_training_raises(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASHING)
    command = (f"cd {shlex.quote(str(REPO))} && env -u THESIS_LIB_HEADLESS {shlex.quote(sys.executable)} "
               f"{shlex.quote(str(script))}; {AFTER}")
    tmux = Tmux(f"thesis-live-{tmp_path.name}")
    try:
        tmux("new-session", "-d", "-s", "live", "-x", "100", "-y", "30", command)
        screen = tmux.wait_for(r"MODES .*", timeout_s=60)
        assert "RuntimeError: boom in the middle of training" in screen  # the traceback is readable
        assert "EXITCODE=1" in screen and "MODES echo icanon" in screen
        assert "q: stop" not in screen and "│" not in screen
        assert tmux("display", "-p", "-t", "live", "#{alternate_on}").strip() == "0"
    finally:
        tmux("kill-server")

"""DashboardState: bounded histories, EMA smoothing, ETA, pause/stop flags, throughput."""

import pytest

from thesis_lib.durations import format_duration
from thesis_lib.live.state import DashboardState


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


INFO = {"run_id": "run_x", "run_dir": "/tmp/run_x", "task": "autoencoder", "model": "mlp/vq", "device": "cpu",
        "epochs": 4, "start_epoch": 0, "steps_per_epoch": 10, "params": {"total": 10, "trainable": 10}}


def _state(**kwargs) -> tuple[DashboardState, FakeClock]:
    clock = FakeClock()
    state = DashboardState(clock=clock, **kwargs)
    state.start(INFO)
    return state, clock


def test_sync_turns_running_means_into_window_losses():
    state, _ = _state(smoothing=0.0)
    state.sync(0, 2, 10, {"loss": 4.0}, samples=20, lr=1e-3, gpu=None)
    state.sync(0, 4, 10, {"loss": 3.0}, samples=40, lr=1e-3, gpu=None)  # window mean: (120 - 80) / 20 = 2
    state.sync(1, 2, 10, {"loss": 1.5}, samples=20, lr=1e-3, gpu=None)  # a new epoch restarts the window
    assert [round(y, 6) for _, y in state.train_raw] == [4.0, 2.0, 1.5]
    assert [x for x, _ in state.train_raw] == [0.2, 0.4, 1.2]
    assert state.current_loss() == 1.5 and state.step == 2 and state.samples == 20


def test_histories_are_bounded():
    state, _ = _state(max_history=5)
    for i in range(1, 21):
        state.sync(0, i, 100, {"loss": float(i)}, samples=i * 10, lr=0.1, gpu=None)
    for epoch in range(8):
        state.epoch_end(epoch, {"loss": 1.0}, {"loss": 2.0, "metric_accuracy": 0.5}, 0.1, 0.3, 100.0, 2.0, False)
    assert len(state.train_raw) == len(state.train_smooth) == 5
    assert len(state.val_loss) == len(state.grad_norms) == len(state.val_metrics["metric_accuracy"]) == 5
    assert state.val_loss[0][0] == 4.0 and state.val_loss[-1][0] == 8.0  # the oldest were dropped


def test_ema_smoothing_values():
    state, _ = _state(smoothing=0.5)
    losses = [4.0, 2.0, 2.0, 0.0]
    samples = 0
    total = 0.0
    for i, loss in enumerate(losses, start=1):
        samples += 10
        total += loss * 10
        state.sync(0, i, 10, {"loss": total / samples}, samples=samples, lr=0.1, gpu=None)
    # seeded with the first value: 4, then 0.5 * prev + 0.5 * new
    assert [y for _, y in state.train_smooth] == pytest.approx([4.0, 3.0, 2.5, 1.25])
    assert state.smoothed_loss() == pytest.approx(1.25)


def test_non_finite_loss_is_not_plotted():
    state, _ = _state()
    state.sync(0, 1, 10, {"loss": float("nan")}, samples=10, lr=0.1, gpu=None)
    assert not state.train_raw and state.step == 1


def test_eta_from_steps_done_and_elapsed_time():
    state, clock = _state()
    assert state.eta_s() is None  # nothing done yet
    clock.now += 10.0
    state.sync(0, 5, 10, {"loss": 1.0}, samples=50, lr=0.1, gpu=None)
    # 5 of 40 steps in 10 s -> 35 steps left at 2 s/step
    assert state.eta_s() == pytest.approx(70.0)
    assert state.epoch_eta_s() == pytest.approx(10.0)
    clock.now += 10.0
    state.epoch_end(0, {"loss": 1.0}, {"loss": 1.1}, 0.1, None, 5.0, 1.1, True)
    assert state.epoch == 1 and state.step == 0
    assert state.eta_s() == pytest.approx(60.0)  # 10 of 40 in 20 s
    assert state.epoch_fraction() == pytest.approx(0.25)


def test_eta_of_a_resumed_run_counts_only_this_sessions_steps():
    clock = FakeClock()
    state = DashboardState(clock=clock)
    state.start({**INFO, "start_epoch": 2})
    clock.now += 4.0
    state.sync(2, 4, 10, {"loss": 1.0}, samples=40, lr=0.1, gpu=None)
    # 4 of (4 - 2) * 10 = 20 steps in 4 s
    assert state.eta_s() == pytest.approx(16.0)
    assert state.epoch_fraction() == pytest.approx(2.4 / 4)


def test_paused_time_does_not_count_towards_the_rate():
    state, clock = _state()
    clock.now += 10.0
    state.sync(0, 5, 10, {"loss": 1.0}, samples=50, lr=0.1, gpu=None)
    state.toggle_pause()
    assert state.paused and state.status == "paused"
    clock.now += 1000.0
    assert state.eta_s() == pytest.approx(70.0)
    state.toggle_pause()
    assert not state.paused and state.status == "running"
    assert state.active_elapsed_s() == pytest.approx(10.0)
    assert state.eta_s() == pytest.approx(70.0)


def test_stop_request_wins_over_pause():
    state, _ = _state()
    state.set_paused(True)
    state.request_stop()
    assert state.stop_requested and not state.paused and state.status == "stopping"
    state.toggle_pause()  # pausing a stopping run does nothing
    assert not state.paused and state.status == "stopping"


def test_throughput_is_live_then_the_epochs_figure():
    state, clock = _state()
    assert state.samples_per_s() is None
    clock.now += 2.0
    state.sync(0, 5, 10, {"loss": 1.0}, samples=500, lr=0.1, gpu=None)
    assert state.samples_per_s() == pytest.approx(250.0)
    state.epoch_end(0, {"loss": 1.0}, {"loss": 1.0}, 0.1, None, 321.0, 1.0, True)
    assert state.samples_per_s() == pytest.approx(321.0)  # until the next epoch's first sync


def test_best_epoch_and_end_summary():
    state, clock = _state()
    state.epoch_end(0, {"loss": 2.0}, {"loss": 1.5}, 0.1, 0.5, 100.0, 1.5, True)
    state.epoch_end(1, {"loss": 1.0}, {"loss": 1.7}, 0.1, 0.4, 100.0, 1.5, False)
    assert state.best_epoch == 0 and state.best_val_loss == 1.5
    clock.now += 30.0
    state.end("STOPPED", "stopped_by_user", {"best_epoch": 0, "best_val_loss": 1.5, "epochs_completed": 2})
    clock.now += 500.0
    assert state.status == "STOPPED" and state.active_elapsed_s() == pytest.approx(30.0)  # frozen at the end


def test_stats_rows_show_the_numbers():
    state, _ = _state()
    gpu = {"util_pct": 87.0, "power_w": 250.4, "mem_used_mb": 2048.0, "mem_total_mb": 81920.0, "temp_c": 61.0}
    state.sync(0, 5, 10, {"loss": 0.5, "metric_accuracy": 0.75}, samples=50, lr=3e-4, gpu=gpu)
    state.epoch_end(0, {"loss": 0.5, "metric_accuracy": 0.75}, {"loss": 0.625, "metric_accuracy": 0.8}, 3e-4, 1.25,
                    400.0, 0.625, True)
    rows = dict(state.stats())
    assert rows["train loss"] == "0.5000" and rows["val loss"] == "0.6250"
    assert rows["best val"] == "0.6250 (epoch 0)"  # epochs count from 0, as in the facts
    assert rows["accuracy"] == "0.7500 / 0.8000 val"
    assert rows["grad norm"] == "1.2500" and rows["lr"] == "3.00e-04" and rows["samples/s"] == "400"
    assert rows["GPU util"] == "87 %" and rows["GPU power"] == "250 W"
    assert rows["VRAM"] == "2.0 / 80.0 GiB" and rows["GPU temp"] == "61 °C"


def test_stats_without_gpu_have_no_gpu_rows():
    state, _ = _state()
    assert not any(label.startswith("GPU") or label == "VRAM" for label, _ in state.stats())


@pytest.mark.parametrize("seconds, text", [(None, "--"), (float("inf"), "--"), (12.4, "12s"), (185, "3m05s"),
                                           (3725, "1h02m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="max_history must be >= 1, got 0"):
        DashboardState(max_history=0)
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\), got 1.0"):
        DashboardState(smoothing=1.0)

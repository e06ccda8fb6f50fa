"""Bad data is refused where it enters, and a metric over zero samples is absent, never 0.0.

Every fault is written into a real HDF5 file (write_events for a clean file, then h5py to spoil
it, as a file from another tool could be) and met through make_loaders, a loader or fit.
"""

import re
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from thesis_lib.data import EventLoader, make_loaders, write_events
from thesis_lib.errors import DataError
from thesis_lib.train import fit
from thesis_lib.train.epoch import evaluate, train_epoch
from thesis_lib.train.optim import Precision
from thesis_lib.train.sync_points import SyncPoints

T = 4
TOKEN_TYPES = ("pad", "jet", "bjet", "muon")
LABEL_NAMES = ("a", "b", "c")
TINY_MODEL = {"encoder": "mlp", "bottleneck": "vq", "latent_dim": 8, "hidden_dim": 32, "num_layers": 1,
              "token_embed_dim": 4, "vq": {"codebook_size": 16, "code_dim": 4}}


def make_split(n, seed=0):
    """Row i holds 1 + i % T valid tokens, then padding (id 0)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, len(TOKEN_TYPES), size=(n, T))
    ids[np.arange(T)[None, :] >= (1 + np.arange(n) % T)[:, None]] = 0
    return {"tokens_id": ids, "tokens_cont": rng.normal(size=(n, T, 4)).astype(np.float32),
            "globals": rng.normal(size=(n, 2)).astype(np.float32), "labels": rng.integers(0, len(LABEL_NAMES), n)}


def write_file(tmp_path, sizes=(64, 48, 24), spoil=None):
    """A clean layout-1 file (16-row chunks), then `spoil(h5py.File)` writes the fault into it."""
    splits = {s: make_split(n, seed=i) for i, (s, n) in enumerate(zip(("train", "val", "test"), sizes))}
    path = write_events(tmp_path / "events.h5", splits, token_types=TOKEN_TYPES, label_names=LABEL_NAMES,
                        chunk_rows=16)
    if spoil is not None:
        with h5py.File(path, "r+") as f:
            spoil(f)
    return path


def data_cfg(path, **more):
    return SimpleNamespace(path=str(path), batch_size=8, **more)


def run_cfg(path, tmp_path, **model):
    return {"output_root": str(tmp_path / "outputs"), "run_name": "t",
            "data": {"path": str(path), "batch_size": 16}, "model": {**TINY_MODEL, **model},
            "trainer": {"epochs": 1, "seed": 3}, "report": {"enabled": False}}


def bad_rows_message(path, split, dataset, count, first, lo, hi):
    """The pattern of a bad-data DataError: file, split, dataset, count, scanned rows, first row."""
    return (re.escape(f"{path}: split {split}, dataset {dataset}: {count} bad row{'s' if count != 1 else ''} "
                      f"among rows [{lo}, {hi})") + r".*" + re.escape(f"; the first is row {first}: "))


# -- empty splits: refused before anything is written --------------------------------------------

def test_empty_train_split_is_refused_before_any_run_directory(tmp_path):
    path = write_file(tmp_path, sizes=(0, 48, 24))
    with pytest.raises(DataError, match=re.escape(f"{path}: split train has no rows")):
        fit(run_cfg(path, tmp_path))
    assert not (tmp_path / "outputs").exists()


def test_empty_val_split_is_refused_before_any_run_directory(tmp_path):
    path = write_file(tmp_path, sizes=(64, 0, 24))
    with pytest.raises(DataError, match=re.escape(f"{path}: split val has no rows")):
        fit(run_cfg(path, tmp_path))
    assert not (tmp_path / "outputs").exists()


def test_a_train_split_smaller_than_the_shards_is_refused(tmp_path):
    path = write_file(tmp_path, sizes=(1, 48, 24))
    assert make_loaders(data_cfg(path), device="cpu", seed=0)[1].split_sizes["train"] == 1
    with pytest.raises(DataError, match=re.escape(f"{path}: split train has 1 rows but training runs on 2 processes")):
        make_loaders(data_cfg(path), device="cpu", seed=0, shard=1, num_shards=2)
    # streamed, whole blocks are shared out: one 64-row block leaves the second shard nothing to train on
    path = write_file(tmp_path, sizes=(64, 48, 24))
    streamed = data_cfg(path, loader="stream", block_rows=16)  # 4 blocks: 2 per shard, 4 batches of 8
    assert len(make_loaders(streamed, device="cpu", seed=0, num_shards=2)[0]["train"]) == 4
    with pytest.raises(DataError, match=re.escape(f"{path}: split train has 64 rows in blocks of 64, too few blocks "
                                                  f"for 2 processes x 1 workers")):
        make_loaders(data_cfg(path, loader="stream", block_rows=64), device="cpu", seed=0, num_shards=2)


# -- non-finite values ---------------------------------------------------------------------------

def test_nan_in_train_features_is_refused_before_training(tmp_path):
    def spoil(f):
        cont = f["train/tokens_cont"]
        cont[5, 0, 1] = np.nan  # row 5: 2 valid tokens
        cont[17, 1, 2] = np.nan  # row 17: 2 valid tokens
        cont[2, 3, 0] = np.nan  # row 2 holds 3 valid tokens: token 3 is padding, zeroed, not bad data
        cont[1, 3, 0] = np.inf  # padding too
    path = write_file(tmp_path, spoil=spoil)
    with pytest.raises(DataError, match=bad_rows_message(path, "train", "/train/tokens_cont", 2, 5, 0, 64)) as err:
        fit(run_cfg(path, tmp_path))
    assert "non-finite value nan" in str(err.value)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_nan_in_val_features_is_refused_in_memory_and_streamed(tmp_path, mode):
    def spoil(f):
        f["val/tokens_cont"][20, 0, 3] = np.nan
        f["val/tokens_cont"][27, 2, 0] = np.nan  # row 27 holds 4 valid tokens
        f["val/tokens_cont"][40, 0, 0] = -np.inf
    path = write_file(tmp_path, spoil=spoil)
    if mode == "memory":  # the whole split is read when the loaders are made: all 3 bad rows counted
        with pytest.raises(DataError, match=bad_rows_message(path, "val", "/val/tokens_cont", 3, 20, 0, 48)):
            make_loaders(data_cfg(path, loader=mode), device="cpu", seed=0)
        return
    loaders, _ = make_loaders(data_cfg(path, loader=mode, block_rows=16), device="cpu", seed=0)
    assert loaders["val"].mode == "stream"  # made without reading val: its blocks are checked as they are read
    # block [0, 16) is clean; block [16, 32) is refused as it is read, with its 2 bad rows (row 40 lies in
    # block [32, 48), not read yet), before any batch of it is handed out
    with pytest.raises(DataError, match=bad_rows_message(path, "val", "/val/tokens_cont", 2, 20, 16, 32)) as err:
        list(loaders["val"])
    assert "the block being streamed" in str(err.value) and "non-finite value nan" in str(err.value)


def test_inf_in_globals_is_refused(tmp_path):
    def spoil(f):
        f["train/globals"][7, 1] = np.inf
        f["train/globals"][9, 0] = np.nan
        f["train/globals"][60, 0] = -np.inf
    path = write_file(tmp_path, spoil=spoil)
    with pytest.raises(DataError, match=bad_rows_message(path, "train", "/train/globals", 3, 7, 0, 64)) as err:
        make_loaders(data_cfg(path), device="cpu", seed=0)
    assert "non-finite value inf" in str(err.value)


def test_nan_in_a_legacy_file_names_its_flat_dataset(tmp_path):
    n, t = 12, 3
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "legacy.h5", "w") as f:
        for split in ("train", "val"):
            ids = rng.integers(1, 4, size=(n, t)).astype(np.float64)
            x = np.concatenate([ids, rng.normal(size=(n, 2)), rng.normal(size=(n, 4 * t))], axis=1)
            if split == "val":
                x[4, t] = np.nan  # MET of row 4
            f[f"X_{split}"] = x
            f[f"Y_{split}"] = rng.integers(0, 2, size=n).astype(np.float64)
    path = tmp_path / "legacy.h5"
    with pytest.raises(DataError, match=bad_rows_message(path, "val", "/X_val (globals columns)", 1, 4, 0, 12)):
        make_loaders(data_cfg(path), device="cpu", seed=0)


# -- ids and labels out of range ------------------------------------------------------------------

def test_token_id_outside_the_vocabulary_is_refused_before_training(tmp_path):
    def spoil(f):
        f["train/tokens_id"][3, 0] = 999
        f["train/tokens_id"][50, 1] = 4  # == len(token_types): one past the end
    path = write_file(tmp_path, spoil=spoil)
    with pytest.raises(DataError, match=bad_rows_message(path, "train", "/train/tokens_id", 2, 3, 0, 64)) as err:
        fit(run_cfg(path, tmp_path))
    assert "token id 999 is outside the vocabulary" in str(err.value) and "[0, 4)" in str(err.value)
    assert not (tmp_path / "outputs").exists()


def test_label_outside_the_label_names_is_refused_before_training(tmp_path):
    def spoil(f):
        f["val/labels"][11] = 42
    path = write_file(tmp_path, spoil=spoil)
    with pytest.raises(DataError, match=bad_rows_message(path, "val", "/val/labels", 1, 11, 0, 48)) as err:
        fit(run_cfg(path, tmp_path, task="classifier"))
    assert "label 42 is outside the label names" in str(err.value) and "a, b, c" in str(err.value)
    assert not (tmp_path / "outputs").exists()


# -- no metric over zero samples -------------------------------------------------------------------

class _Model(torch.nn.Module):
    """The smallest model the epoch functions drive: a mean squared error of one weight."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def loss_and_metrics(self, batch):
        loss = ((batch["globals"] * self.w) ** 2).mean()
        return {"loss": loss, "metric_scale": self.w.detach()}


def test_evaluate_over_zero_samples_has_no_loss(tmp_path):
    path = write_file(tmp_path, sizes=(64, 48, 0))
    empty = EventLoader(path, "test", batch_size=8)
    cpu = torch.device("cpu")
    stats = evaluate(_Model(), empty, Precision("fp32", cpu), device=cpu, names=("metric_scale",))
    assert stats.metrics == {} and "loss" not in stats.metrics
    assert stats.samples == 0 and stats.throughput is None
    full = evaluate(_Model(), EventLoader(path, "val", batch_size=8), Precision("fp32", cpu), device=cpu,
                    names=("metric_scale",))
    assert set(full.metrics) == {"loss", "metric_scale"} and full.samples == 48 and full.throughput > 0


def test_train_epoch_over_zero_samples_has_no_loss(tmp_path):
    path = write_file(tmp_path, sizes=(64, 48, 0))
    model, cpu = _Model(), torch.device("cpu")
    stats = train_epoch(model, EventLoader(path, "test", batch_size=8), torch.optim.SGD(model.parameters(), lr=0.1),
                        Precision("fp32", cpu), SyncPoints(4), device=cpu, names=("metric_scale",))
    assert stats.metrics == {} and stats.samples == 0 and stats.throughput is None


def test_an_empty_test_split_is_a_skipped_test_pass_with_no_number(tmp_path):
    """Today's main recorded a test loss of 0.0 over 0 samples; a loss over no sample was never measured."""
    import json

    from thesis_lib import load_runs

    path = write_file(tmp_path, sizes=(64, 48, 0))
    result = fit(run_cfg(path, tmp_path), dashboard=None)
    assert result.status == "COMPLETED" and result.test_metrics == {}
    events = [json.loads(line) for line in (result.run_dir / "facts" / "events.jsonl").read_text().splitlines()]
    (test,) = [e for e in events if e["moment"] == "on_test_end"]
    assert "metrics" not in test and test["samples"] == 0 and "no samples" in test["skipped"]
    runs_df, _, _ = load_runs(run_dirs=[str(result.run_dir)])
    assert not any(c.startswith("test.loss") for c in runs_df.columns)
    assert "no samples" in runs_df.iloc[0]["test.skipped"]

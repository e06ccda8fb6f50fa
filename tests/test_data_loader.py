"""EventLoader modes, normalization, (seed, epoch) determinism, workers and make_loaders."""

import json
from collections import Counter
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from thesis_lib.data import DataMeta, EventLoader, make_loaders
from thesis_lib.data.normalization import Normalization, compute_normalization
from thesis_lib.data import write_events
from thesis_lib.errors import ConfigError, DataError


def make_split(n, t=6, seed=0, offset=0):
    """Arrays whose label is the global row number, so every row can be recognised in a batch."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 4, size=(n, t))
    ids[np.arange(t)[None, :] >= rng.integers(1, t + 1, size=n)[:, None]] = 0
    cont = rng.normal(loc=[50.0, 30.0, 0.0, 0.0], scale=[20.0, 10.0, 1.5, 1.8], size=(n, t, 4)).astype(np.float32)
    cont[..., 3] = 7.0  # a constant feature: its std must fall back to 1, not divide by zero
    return {"tokens_id": ids, "tokens_cont": cont, "globals": rng.normal(size=(n, 2)).astype(np.float32) * 5 + 3,
            "labels": np.arange(offset, offset + n)}


@pytest.fixture(scope="module")
def event_path(tmp_path_factory):
    splits = {"train": make_split(300, seed=1), "val": make_split(70, seed=2, offset=300),
              "test": make_split(50, seed=3, offset=370)}
    return write_events(tmp_path_factory.mktemp("data") / "ev.h5", splits, chunk_rows=16)


def raw_split(path, split):
    with h5py.File(path) as f:
        return {k: f[split][k][()] for k in ("tokens_id", "tokens_cont", "globals", "labels")}


def labels_of(loader):
    return [b["labels"].tolist() for b in loader]


def test_normalization_matches_numpy_on_valid_tokens(event_path):
    raw = raw_split(event_path, "train")
    valid = raw["tokens_cont"][raw["tokens_id"] != 0].astype(np.float64)
    norm = compute_normalization(event_path, "train", block_rows=7)  # many blocks: exercises the merge
    np.testing.assert_allclose(norm.cont_mean, valid.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(norm.cont_std[:3], valid.std(axis=0)[:3], rtol=1e-6)
    assert norm.cont_std[3] == 1.0 and norm.cont_mean[3] == pytest.approx(7.0)
    np.testing.assert_allclose(norm.globals_mean, raw["globals"].astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(norm.globals_std, raw["globals"].astype(np.float64).std(axis=0), rtol=1e-6)
    capped = compute_normalization(event_path, "train", max_rows=50)
    np.testing.assert_allclose(capped.globals_mean, raw["globals"][:50].astype(np.float64).mean(axis=0), rtol=1e-6)


def test_normalization_dict_round_trip_and_errors():
    norm = Normalization((1.0, 2.0), (3.0, 4.0), (5.0,), (6.0,))
    assert Normalization.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    with pytest.raises(DataError, match=r"lacks keys \['globals_std'\]"):
        Normalization.from_dict({"cont_mean": [0], "cont_std": [1], "globals_mean": [0]})
    with pytest.raises(DataError, match=r"cont_mean has 2 values but cont_std has 1"):
        Normalization.from_dict({"cont_mean": [0, 1], "cont_std": [1], "globals_mean": [0], "globals_std": [1]})


def test_memory_batches_are_normalized_with_padding_zeroed(event_path):
    norm = compute_normalization(event_path)
    loader = EventLoader(event_path, "val", batch_size=32, normalization=norm)
    assert (loader.mode, loader.num_rows, len(loader)) == ("memory", 70, 3)
    batches = list(loader)
    assert [len(b["labels"]) for b in batches] == [32, 32, 6]
    raw = raw_split(event_path, "val")
    cont = torch.cat([b["tokens_cont"] for b in batches]).numpy()
    expected = (raw["tokens_cont"] - np.float32(norm.cont_mean)) / np.float32(norm.cont_std)
    expected[raw["tokens_id"] == 0] = 0.0
    np.testing.assert_allclose(cont, expected, rtol=1e-5, atol=1e-6)
    assert torch.cat([b["labels"] for b in batches]).tolist() == list(range(300, 370))
    glob = torch.cat([b["globals"] for b in batches]).numpy()
    np.testing.assert_allclose(glob, (raw["globals"] - np.float32(norm.globals_mean)) / np.float32(norm.globals_std),
                               rtol=1e-5, atol=1e-6)
    assert {k: v.dtype for k, v in batches[0].items()} == {"tokens_id": torch.int64, "tokens_cont": torch.float32,
                                                           "globals": torch.float32, "labels": torch.int64}


def test_default_normalization_comes_from_train(event_path):
    loader = EventLoader(event_path, "test", batch_size=8)
    assert loader.normalization == compute_normalization(event_path, "train")


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_every_row_once_per_epoch_and_same_multiset_in_both_modes(event_path, mode):
    loader = EventLoader(event_path, "train", batch_size=25, shuffle=True, seed=3, mode=mode, block_rows=32,
                         buffer_blocks=2)
    assert loader.mode == mode
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = labels_of(loader)
        assert len(batches) == len(loader) == 12
        rows = [r for b in batches for r in b]
        assert Counter(rows) == Counter(range(300))
        assert rows != list(range(300))
    rows_by_mode = {}
    for m in ("memory", "stream"):
        other = EventLoader(event_path, "train", batch_size=25, shuffle=True, seed=3, mode=m, block_rows=32)
        rows_by_mode[m] = sorted(r for b in labels_of(other) for r in b)
    assert rows_by_mode["memory"] == rows_by_mode["stream"]


def test_unshuffled_stream_matches_memory_order(event_path):
    memory = EventLoader(event_path, "val", batch_size=16, mode="memory")
    stream = EventLoader(event_path, "val", batch_size=16, mode="stream", block_rows=16)
    for a, b in zip(memory, stream, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_order_is_a_function_of_seed_and_epoch(event_path, mode):
    def order(seed, epoch):
        loader = EventLoader(event_path, "train", batch_size=40, shuffle=True, seed=seed, mode=mode, block_rows=32)
        loader.set_epoch(epoch)
        return labels_of(loader)

    assert order(5, 2) == order(5, 2)  # a fresh loader (a resumed run) sees the same batches
    assert order(5, 2) != order(5, 3)
    assert order(5, 2) != order(6, 2)
    loader = EventLoader(event_path, "train", batch_size=40, shuffle=True, seed=5, mode=mode, block_rows=32)
    loader.set_epoch(2)
    assert labels_of(loader) == labels_of(loader)


def test_stream_batches_are_full_until_the_last_and_drop_last(event_path):
    loader = EventLoader(event_path, "train", batch_size=40, shuffle=True, mode="stream", block_rows=48,
                         buffer_blocks=1)
    assert [len(b) for b in labels_of(loader)] == [40] * 7 + [20]
    dropped = EventLoader(event_path, "train", batch_size=40, shuffle=True, mode="stream", block_rows=48,
                          drop_last=True)
    assert len(dropped) == 7 and [len(b) for b in labels_of(dropped)] == [40] * 7


def test_auto_mode_follows_the_memory_budget_and_max_rows_caps(event_path):
    assert EventLoader(event_path, "train", batch_size=8).mode == "memory"
    small = EventLoader(event_path, "train", batch_size=8, memory_budget_mb=0.01)
    assert small.mode == "stream" and small.block_rows % 16 == 0
    capped = EventLoader(event_path, "train", batch_size=8, max_rows=20, mode="stream")
    assert capped.num_rows == 20 and sorted(r for b in labels_of(capped) for r in b) == list(range(20))


def test_stream_workers_see_every_row_exactly_once(event_path):
    loader = EventLoader(event_path, "train", batch_size=16, shuffle=True, seed=1, mode="stream", block_rows=32,
                         num_workers=2)
    loader.event_file.read_block("train", 0, 1)  # the parent holds an open handle before the workers fork
    loader.set_epoch(4)
    batches = labels_of(loader)
    assert len(batches) == len(loader)
    assert Counter(r for b in batches for r in b) == Counter(range(300))
    assert labels_of(loader) == batches


def test_loader_rejects_bad_settings(event_path):
    with pytest.raises(ConfigError, match=r"batch_size=0; expected an integer >= 1"):
        EventLoader(event_path, "train", batch_size=0)
    with pytest.raises(ConfigError, match=r"mode='fast'; expected one of \['auto', 'memory', 'stream'\]"):
        EventLoader(event_path, "train", batch_size=8, mode="fast")
    with pytest.raises(DataError, match=r"normalization has 1 token features and 1 globals; expected 4 and 2"):
        EventLoader(event_path, "train", batch_size=8, normalization=Normalization((0.0,), (1.0,), (0.0,), (1.0,)))


def test_legacy_file_loads_like_a_layout_one_file(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, size=(30, 2)).astype(np.float64)
    with h5py.File(tmp_path / "legacy.h5", "w") as f:
        for split in ("train", "val"):
            f[f"X_{split}"] = np.concatenate([ids, rng.normal(size=(30, 2 + 8))], axis=1)
        f["Y_train"], f["y_val"] = np.arange(30), np.arange(30)
    loaders, meta = make_loaders(SimpleNamespace(path=tmp_path / "legacy.h5", batch_size=10), device="cpu", seed=0)
    assert meta.layout == "legacy" and meta.n_tokens == 2 and meta.n_classes == 30
    batch = next(iter(loaders["val"]))
    assert torch.all(batch["tokens_cont"][batch["tokens_id"] == 0] == 0)


def test_make_loaders_builds_every_split_and_the_meta(event_path):
    cfg = SimpleNamespace(path=str(event_path), batch_size=64, eval_batch_size=0, loader="auto", memory_budget_mb=2048,
                          device_budget_mb=4096, block_rows=0, num_workers=0, max_events=100)
    loaders, meta = make_loaders(cfg, device="cpu", seed=9)
    assert set(loaders) == {"train", "val", "test"}
    assert loaders["train"].shuffle and not loaders["val"].shuffle and not loaders["test"].shuffle
    assert [loaders[s].batch_size for s in ("train", "val")] == [64, 64]
    assert meta.split_sizes == {"train": 100, "val": 70, "test": 50}
    assert (meta.n_tokens, meta.cont_dim, meta.globals_dim, meta.n_token_types) == (6, 4, 2, 4)
    assert meta.normalization == compute_normalization(event_path, max_rows=100)
    assert DataMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    cfg.eval_batch_size = 200
    assert make_loaders(cfg, device="cpu", seed=9)[0]["val"].batch_size == 200


def test_make_loaders_needs_train_and_val(tmp_path):
    path = write_events(tmp_path / "ev.h5", {"train": make_split(10)})
    with pytest.raises(DataError, match=r"splits \['val'\] not found; training needs train and val"):
        make_loaders(SimpleNamespace(path=path, batch_size=4), device="cpu", seed=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mode_keeps_the_split_on_the_gpu(event_path):
    loader = EventLoader(event_path, "train", batch_size=64, shuffle=True, device="cuda")
    assert loader.mode == "device" and loader._tensors["tokens_cont"].is_cuda
    batches = list(loader)
    assert all(b["labels"].is_cuda for b in batches)
    cpu = EventLoader(event_path, "train", batch_size=64, shuffle=True, device="cpu")
    assert [b["labels"].cpu().tolist() for b in batches] == labels_of(cpu)
    streamed = EventLoader(event_path, "train", batch_size=64, shuffle=True, device="cuda", mode="stream")
    assert all(b["tokens_cont"].is_cuda for b in streamed)
    assert EventLoader(event_path, "train", batch_size=64, device="cuda", device_budget_mb=0.001).mode == "memory"


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_an_empty_split_yields_no_batches(tmp_path, mode):
    path = write_events(tmp_path / "ev.h5", {"train": make_split(10), "val": make_split(0)})
    loader = EventLoader(path, "val", batch_size=4, shuffle=True, mode=mode)
    assert loader.num_rows == 0 and len(loader) == 0 and list(loader) == []

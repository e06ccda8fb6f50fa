"""The HDF5 event layout: writer, layout-1 reader, legacy flat reader, and their error messages."""

import os
import pickle

import h5py
import numpy as np
import pytest

from thesis_lib.data import EventFile, write_events
from thesis_lib.errors import DataError


def make_split(n, t=5, c=4, g=2, seed=0, n_types=4, n_classes=3):
    """Random layout-1 arrays with a padded tail in every event."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, n_types, size=(n, t))
    lengths = rng.integers(1, t + 1, size=n)
    ids[np.arange(t)[None, :] >= lengths[:, None]] = 0
    return {"tokens_id": ids, "tokens_cont": rng.normal(size=(n, t, c)).astype(np.float32),
            "globals": rng.normal(size=(n, g)).astype(np.float32), "labels": rng.integers(0, n_classes, n)}


@pytest.fixture
def splits():
    return {"train": make_split(40, seed=1), "val": make_split(12, seed=2), "test": make_split(9, seed=3)}


def test_round_trip_keeps_values_attrs_and_chunking(tmp_path, splits):
    path = write_events(tmp_path / "ev.h5", splits, token_types=("pad", "jet", "bjet", "muon"),
                        label_names=("a", "b", "c"), chunk_rows=16)
    ef = EventFile(path)
    assert ef.layout == "tokens" and ef.splits == ("train", "val", "test")
    assert (ef.n_tokens, ef.cont_dim, ef.globals_dim) == (5, 4, 2)
    assert (ef.n_token_types, ef.n_classes) == (4, 3)
    assert ef.cont_features == ("E", "pT", "eta", "phi") and ef.globals_features == ("MET", "MET_phi")
    assert ef.label_names == ("a", "b", "c") and ef.token_types[0] == "pad"
    assert [ef.num_rows(s) for s in ef.splits] == [40, 12, 9]
    assert ef.chunk_rows("train") == 16 and ef.chunk_rows("test") == 9
    block = ef.read_block("train", 10, 30)
    assert {k: v.dtype for k, v in block.items()} == {"tokens_id": np.int64, "tokens_cont": np.float32,
                                                      "globals": np.float32, "labels": np.int64}
    for key in block:
        np.testing.assert_array_equal(block[key], splits["train"][key][10:30])
    with h5py.File(path) as f:
        assert f.attrs["layout_version"] == 1
        assert f["train/tokens_cont"].chunks == (16, 5, 4) and f["train/tokens_cont"].compression is None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_default_names_cover_the_largest_id_and_label(tmp_path):
    path = write_events(tmp_path / "ev.h5", {"train": make_split(20, n_types=3, n_classes=2)})
    ef = EventFile(path)
    assert ef.token_types == ("pad", "type_1", "type_2") and ef.label_names == ("class_0", "class_1")


def test_writer_names_split_dataset_expected_and_found_shape(tmp_path, splits):
    splits["val"]["tokens_cont"] = np.zeros((12, 6, 4), np.float32)
    with pytest.raises(DataError, match=r"split 'val' dataset 'tokens_cont' has shape \[12, 6, 4\]; "
                                        r"expected \[N, T, C\] with N=12 .*T=5 \(from train tokens_id\), C=4"):
        write_events(tmp_path / "ev.h5", splits)
    assert not (tmp_path / "ev.h5").exists()


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(labels=np.zeros(39, np.int64)), r"'labels' has shape \[39\]; expected \[N\] with N=40"),
    (lambda s: s.update(globals=np.zeros((40, 3), np.float32)), r"'globals' has shape \[40, 3\]; expected \[N, G\]"),
    (lambda s: s.update(tokens_id=s["tokens_id"].astype(np.float32)),
     r"'tokens_id' has dtype float32; expected an integer"),
    (lambda s: s.pop("globals"), r"missing \['globals'\]"),
    (lambda s: s["tokens_cont"].__setitem__((0, 0, 0), np.nan), r"'tokens_cont' holds 1 non-finite values"),
    (lambda s: s["labels"].__setitem__(0, -1), r"'labels' holds negative value -1"),
])
def test_writer_rejects_bad_arrays(tmp_path, change, message):
    split = make_split(40)
    change(split)
    with pytest.raises(DataError, match=message):
        write_events(tmp_path / "ev.h5", {"train": split})


def test_writer_rejects_unknown_split_and_ids_beyond_the_names(tmp_path):
    with pytest.raises(DataError, match=r"unknown split 'training'; expected one of \['train', 'val', 'test'\]"):
        write_events(tmp_path / "a.h5", {"training": make_split(4)})
    with pytest.raises(DataError, match=r"tokens_id holds value 3 but only 2 names"):
        write_events(tmp_path / "b.h5", {"train": make_split(30)}, token_types=("pad", "jet"))


def test_rewrite_replaces_the_file_atomically(tmp_path, splits):
    path = write_events(tmp_path / "ev.h5", splits)
    write_events(path, {"train": make_split(7)})
    assert EventFile(path).splits == ("train",) and EventFile(path).num_rows("train") == 7


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(DataError, match=f"event file not found: {tmp_path / 'nope.h5'}"):
        EventFile(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match=r"text.h5: cannot open as HDF5"):
        EventFile(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["stuff"] = np.zeros(3)
    with pytest.raises(DataError, match=r"no known event layout; .*found \['stuff'\]"):
        EventFile(tmp_path / "other.h5")


def test_missing_dataset_names_file_and_dataset_path(tmp_path, splits):
    path = write_events(tmp_path / "ev.h5", splits)
    with h5py.File(path, "a") as f:
        del f["val/globals"]
    with pytest.raises(DataError, match=rf"{path}: dataset /val/globals not found; a layout 1 split group holds "
                                        r"tokens_id \[N, T\]"):
        EventFile(path)


def test_missing_split_is_named_when_read(tmp_path):
    path = write_events(tmp_path / "ev.h5", {"train": make_split(5)})
    with pytest.raises(DataError, match=r"split /test not found; this tokens file has splits \['train'\]"):
        EventFile(path).read_block("test", 0, 1)


def test_wrong_token_count_names_the_reference_dataset(tmp_path, splits):
    path = write_events(tmp_path / "ev.h5", splits)
    with h5py.File(path, "a") as f:
        del f["val/tokens_cont"]
        f["val/tokens_cont"] = np.zeros((12, 7, 4), np.float32)
    with pytest.raises(DataError, match=r"dataset /val/tokens_cont has shape \[12, 7, 4\]; expected \[N, T, C\] with "
                                        r"N=12 \(from /val/tokens_id\), T=5 \(from /train/tokens_id\), "
                                        r"C=4 \(from root attribute cont_features\)"):
        EventFile(path)


def test_row_count_mismatch_within_a_split(tmp_path, splits):
    path = write_events(tmp_path / "ev.h5", splits)
    with h5py.File(path, "a") as f:
        del f["test/labels"]
        f["test/labels"] = np.zeros(8, np.int64)
    with pytest.raises(DataError, match=r"/test/labels has shape \[8\]; expected \[N\] with N=9 "
                                        r"\(from /test/tokens_id\)"):
        EventFile(path)


def test_newer_layout_version_is_refused_by_number(tmp_path, splits):
    path = write_events(tmp_path / "ev.h5", splits)
    with h5py.File(path, "a") as f:
        f.attrs["layout_version"] = 2
    with pytest.raises(DataError, match=r"layout_version 2 is newer than this thesis-lib reads \(up to 1\)"):
        EventFile(path)


def test_read_block_range_is_checked(tmp_path, splits):
    ef = EventFile(write_events(tmp_path / "ev.h5", splits))
    with pytest.raises(DataError, match=r"rows \[5, 50\) of split val out of range; expected 0 <= start <= stop <= 12"):
        ef.read_block("val", 5, 50)


def write_legacy(path, t=3, label_case=("Y", "y", "y"), sizes=(6, 4, 3)):
    """A flat legacy file written by hand; returns the per-split parts it was built from."""
    rng = np.random.default_rng(7)
    parts = {}
    with h5py.File(path, "w") as f:
        for split, n, case in zip(("train", "val", "test"), sizes, label_case):
            ids = rng.integers(0, 5, size=(n, t))
            glob = rng.normal(size=(n, 2))
            cont = rng.normal(size=(n, t, 4))
            labels = rng.integers(0, 4, size=n)
            # token-major: ids, then MET and MET_phi, then E, pT, eta, phi of token 0, token 1, ...
            f[f"X_{split}"] = np.concatenate([ids.astype(np.float64), glob, cont.reshape(n, 4 * t)], axis=1)
            f[f"{case}_{split}"] = labels.astype(np.float64)
            parts[split] = {"tokens_id": ids, "globals": glob, "tokens_cont": cont, "labels": labels}
    return parts


def test_legacy_layout_reconstructs_every_column(tmp_path):
    parts = write_legacy(tmp_path / "legacy.h5")
    ef = EventFile(tmp_path / "legacy.h5")
    assert (ef.layout, ef.n_tokens, ef.cont_dim, ef.globals_dim) == ("legacy", 3, 4, 2)
    assert ef.globals_features == ("MET", "MET_phi") and ef.cont_features == ("E", "pT", "eta", "phi")
    all_ids = np.concatenate([p["tokens_id"].ravel() for p in parts.values()])
    all_labels = np.concatenate([p["labels"] for p in parts.values()])
    assert ef.n_token_types == all_ids.max() + 1 and ef.n_classes == all_labels.max() + 1
    assert ef.token_types[0] == "pad" and len(ef.label_names) == ef.n_classes
    assert ef.chunk_rows("train") is None
    for split, part in parts.items():
        block = ef.read_block(split, 0, ef.num_rows(split))
        np.testing.assert_array_equal(block["tokens_id"], part["tokens_id"])
        np.testing.assert_array_equal(block["labels"], part["labels"])
        np.testing.assert_allclose(block["globals"], part["globals"], rtol=1e-6)
        np.testing.assert_allclose(block["tokens_cont"], part["tokens_cont"], rtol=1e-6)
        assert block["tokens_id"].dtype == np.int64 and block["tokens_cont"].dtype == np.float32


def test_legacy_accepts_either_label_case(tmp_path):
    write_legacy(tmp_path / "legacy.h5", label_case=("y", "Y", "Y"))
    assert EventFile(tmp_path / "legacy.h5").num_rows("val") == 4


def test_legacy_wrong_width_states_the_rule(tmp_path):
    with h5py.File(tmp_path / "legacy.h5", "w") as f:
        f["X_train"] = np.zeros((4, 20))
        f["Y_train"] = np.zeros(4)
    with pytest.raises(DataError, match=r"legacy dataset /X_train has shape \[4, 20\] \(width 20\); expected \[N, W\] "
                                        r"with W = T \+ 2 \+ 4T = 5T \+ 2"):
        EventFile(tmp_path / "legacy.h5")


def test_legacy_missing_labels_names_both_spellings(tmp_path):
    with h5py.File(tmp_path / "legacy.h5", "w") as f:
        f["X_train"] = np.zeros((4, 17))
    with pytest.raises(DataError, match=r"labels for legacy split train not found; expected dataset /Y_train or "
                                        r"/y_train with shape \[N\] where N=4"):
        EventFile(tmp_path / "legacy.h5")


def test_pickle_drops_the_handle_and_a_new_pid_reopens(tmp_path, splits, monkeypatch):
    ef = EventFile(write_events(tmp_path / "ev.h5", splits))
    ef.read_block("train", 0, 2)
    first = ef._file
    clone = pickle.loads(pickle.dumps(ef))
    assert clone._file is None
    np.testing.assert_array_equal(clone.read_block("val", 0, 3)["labels"], splits["val"]["labels"][:3])
    pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: pid + 1)
    ef.read_block("train", 0, 2)
    assert ef._file is not first and ef._pid == pid + 1
    with EventFile(ef.path) as scoped:
        scoped.read_block("test", 0, 1)
    assert scoped._file is None

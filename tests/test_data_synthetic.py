"""Synthetic events: deterministic, in layout 1, and with processes that differ like real ones."""

import time

import numpy as np
import pytest

from thesis_lib.data import EventFile, make_synthetic_events
from thesis_lib.data.synthetic import ELECTRON, MUON, SM_PROCESSES, TOKEN_TYPES
from thesis_lib.errors import ConfigError


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = make_synthetic_events(tmp_path_factory.mktemp("syn") / "ev.h5", n_events=6000, seed=11,
                                 anomaly_fraction=0.1)
    ef = EventFile(path)
    return ef, {s: ef.read_block(s, 0, ef.num_rows(s)) for s in ef.splits}


def test_layout_splits_and_names(events):
    ef, blocks = events
    assert ef.layout == "tokens" and ef.splits == ("train", "val", "test")
    assert [ef.num_rows(s) for s in ef.splits] == [4200, 900, 900]
    assert ef.token_types == TOKEN_TYPES and ef.label_names == SM_PROCESSES + ("bsm_resonance",)
    assert (ef.n_tokens, ef.cont_dim, ef.globals_dim) == (20, 4, 2)
    assert ef.globals_features == ("MET", "MET_phi") and ef.chunk_rows("train") == 1024
    ids, cont = blocks["train"]["tokens_id"], blocks["train"]["tokens_cont"]
    pt = cont[..., 1]
    assert np.all(np.diff(pt, axis=1)[ids[:, 1:] != 0] <= 0)  # sorted by pT, descending
    assert np.all(cont[ids == 0] == 0) and np.all((ids > 0).sum(axis=1) >= 1)
    valid = ids != 0
    np.testing.assert_allclose(cont[..., 0][valid], (pt * np.cosh(cont[..., 2]))[valid], rtol=1e-5)  # massless
    assert np.all(np.abs(cont[..., 3]) <= np.pi + 1e-6)


def test_anomalies_only_in_test(events):
    _, blocks = events
    assert blocks["train"]["labels"].max() == 3 and blocks["val"]["labels"].max() == 3
    assert np.count_nonzero(blocks["test"]["labels"] == 4) == 90


def test_same_seed_same_events_other_seed_other_events(tmp_path):
    a = make_synthetic_events(tmp_path / "a.h5", n_events=500, seed=3)
    b = make_synthetic_events(tmp_path / "b.h5", n_events=500, seed=3)
    c = make_synthetic_events(tmp_path / "c.h5", n_events=500, seed=4)
    blocks = [EventFile(p).read_block("val", 0, 75) for p in (a, b, c)]
    for key in blocks[0]:
        np.testing.assert_array_equal(blocks[0][key], blocks[1][key])
    assert not np.array_equal(blocks[0]["tokens_cont"], blocks[2]["tokens_cont"])
    assert EventFile(a).label_names == SM_PROCESSES


def test_processes_are_distinguishable(events):
    _, blocks = events
    ids, glob, labels = blocks["train"]["tokens_id"], blocks["train"]["globals"], blocks["train"]["labels"]
    n_leptons = ((ids == ELECTRON) | (ids == MUON)).sum(axis=1)
    n_bjets = (ids == TOKEN_TYPES.index("bjet")).sum(axis=1)
    stats = {name: (n_leptons[labels == i].mean(), glob[labels == i, 0].mean(), (ids[labels == i] > 0).sum(1).mean(),
                    n_bjets[labels == i].mean())
             for i, name in enumerate(SM_PROCESSES)}
    assert stats["z_ll"][0] == 2.0 and stats["w_jets"][0] == 1.0 and stats["qcd_multijet"][0] < 0.2
    assert stats["w_jets"][1] > 2 * stats["qcd_multijet"][1]  # the neutrino is MET
    assert stats["ttbar"][1] > 2 * stats["z_ll"][1]
    assert stats["qcd_multijet"][2] > 2 * stats["w_jets"][2]  # many soft jets
    assert stats["ttbar"][3] == 2.0 and stats["qcd_multijet"][3] < 0.5


def test_dilepton_mass_of_z_events_peaks_at_91(events):
    _, blocks = events
    block = blocks["train"]
    z = block["labels"] == SM_PROCESSES.index("z_ll")
    ids, cont = block["tokens_id"][z], block["tokens_cont"][z]
    is_lepton = (ids == ELECTRON) | (ids == MUON)
    first_two = np.argsort(~is_lepton, axis=1, kind="stable")[:, :2]
    pt, eta, phi = (np.take_along_axis(cont[..., k], first_two, axis=1) for k in (1, 2, 3))
    mass = np.sqrt(2 * pt[:, 0] * pt[:, 1] * (np.cosh(eta[:, 0] - eta[:, 1]) - np.cos(phi[:, 0] - phi[:, 1])))
    assert 89.0 < np.median(mass) < 93.0
    assert np.mean(np.abs(mass - 91.19) < 6.0) > 0.8
    flavours = np.take_along_axis(ids, first_two, axis=1)
    assert np.all(flavours[:, 0] == flavours[:, 1])  # same-flavour pair


def test_generation_is_fast_and_arguments_are_checked(tmp_path):
    start = time.perf_counter()
    make_synthetic_events(tmp_path / "big.h5", n_events=20_000, seed=0)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(ConfigError, match=r"split_fractions=\[0.5, 0.5, 0.5\]; expected 3 non-negative fractions"):
        make_synthetic_events(tmp_path / "x.h5", split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match=r"anomaly_fraction=1.5; expected a fraction in \[0, 1\]"):
        make_synthetic_events(tmp_path / "x.h5", anomaly_fraction=1.5)

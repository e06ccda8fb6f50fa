"""Synthetic collider-like events: several processes with distinct kinematics, written in layout 1.

Each event is a list of reconstructed objects (jets, b-jets, electrons, muons, photons) with
massless four-momenta, sorted by pT and padded to n_tokens, plus the missing transverse
momentum. The processes differ the way real ones do, so that labels and anomalies mean something:

- qcd_multijet: many soft jets from a steep power-law spectrum, rare non-prompt leptons,
  MET from resolution only.
- w_jets: a W boson decaying to a lepton and a neutrino (the neutrino is MET, so the lepton and
  MET show the Jacobian peak near 40 GeV), plus recoil jets.
- ttbar: two b-jets and two W bosons, each decaying to two jets or to a lepton and a neutrino.
- z_ll: a Z boson decaying to two same-flavour leptons (dilepton mass peaks at 91 GeV).
- bsm_resonance (only with anomaly_fraction > 0, only in the test split): a 600 GeV resonance
  decaying to two b-jets, the anomaly for an autoencoder trained on the Standard-Model splits.

Globals are ("MET", "MET_phi"), matching the seed's legacy layout. Everything is vectorized numpy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .h5 import write_events

__all__ = ["TOKEN_TYPES", "SM_PROCESSES", "ANOMALY_PROCESS", "PROCESS_FRACTIONS", "make_synthetic_events"]

TOKEN_TYPES = ("pad", "jet", "bjet", "electron", "muon", "photon")
JET, BJET, ELECTRON, MUON, PHOTON = range(1, 6)
SM_PROCESSES = ("qcd_multijet", "w_jets", "ttbar", "z_ll")
ANOMALY_PROCESS = "bsm_resonance"
PROCESS_FRACTIONS = (0.4, 0.25, 0.2, 0.15)  # of the Standard-Model events, in SM_PROCESSES order
_PT_MAX = 3000.0  # GeV: keeps the heavy power-law tail finite


class _Objects:
    """Objects of all events accumulated as flat columns, plus each event's MET vector."""

    def __init__(self, n_events: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.columns: list[tuple[np.ndarray, ...]] = []
        self.met_x, self.met_y = np.zeros(n_events), np.zeros(n_events)

    def add(self, events: np.ndarray, types, pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> None:
        """Append objects (one per entry of `events`) of the given type(s)."""
        types = np.broadcast_to(np.asarray(types, dtype=np.int64), events.shape)
        self.columns.append((events, types, pt, eta, phi))

    def add_spectrum(self, events: np.ndarray, counts: np.ndarray, types, pt_min: float, alpha: float,
                     eta_width: float) -> None:
        """counts[i] objects in events[i] with power-law pT above pt_min and gaussian eta."""
        ev = np.repeat(events, counts)
        n = len(ev)
        pt = np.minimum(pt_min * (1.0 + self.rng.pareto(alpha, n)), _PT_MAX)
        eta = np.clip(self.rng.normal(0.0, eta_width, n), -4.5, 4.5)
        kinds = np.repeat(np.asarray(types), counts) if np.ndim(types) else types
        self.add(ev, kinds, pt, eta, self.rng.uniform(-np.pi, np.pi, n))

    def add_invisible(self, events: np.ndarray, pt: np.ndarray, phi: np.ndarray) -> None:
        """A neutrino: it only adds to the event's missing transverse momentum."""
        np.add.at(self.met_x, events, pt * np.cos(phi))
        np.add.at(self.met_y, events, pt * np.sin(phi))


def _two_body(rng: np.random.Generator, n: int, mass: float, width: float, pt_scale: float,
              rapidity_width: float) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """Decay n parents of the given mass into two massless daughters; (pt, eta, phi) of each."""
    m = np.maximum(rng.normal(mass, width, n), 1.0)
    pt = rng.exponential(pt_scale, n)
    y, phi = rng.normal(0.0, rapidity_width, n), rng.uniform(-np.pi, np.pi, n)
    mt = np.sqrt(m**2 + pt**2)
    energy = mt * np.cosh(y)
    beta = np.stack([pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y)]) / energy
    gamma = energy / m
    # Isotropic decay in the rest frame, then a Lorentz boost along beta.
    cos_t = rng.uniform(-1.0, 1.0, n)
    sin_t, phi_d = np.sqrt(1.0 - cos_t**2), rng.uniform(-np.pi, np.pi, n)
    q = (m / 2) * np.stack([sin_t * np.cos(phi_d), sin_t * np.sin(phi_d), cos_t])
    daughters = []
    for sign in (1.0, -1.0):
        p = sign * q
        coef = gamma**2 / (gamma + 1.0) * (beta * p).sum(axis=0) + gamma * (m / 2)
        lab = p + beta * coef
        d_pt = np.maximum(np.hypot(lab[0], lab[1]), 1e-3)
        daughters.append((d_pt, np.arcsinh(lab[2] / d_pt), np.arctan2(lab[1], lab[0])))
    return tuple(daughters)


def _leptonic_w(objs: _Objects, events: np.ndarray, pt_scale: float) -> None:
    """W -> lepton + neutrino in each of `events`: an electron or muon, and MET."""
    (l_pt, l_eta, l_phi), (nu_pt, _, nu_phi) = _two_body(objs.rng, len(events), 80.4, 2.1, pt_scale, 1.2)
    objs.add(events, objs.rng.choice([ELECTRON, MUON], len(events)), l_pt, l_eta, l_phi)
    objs.add_invisible(events, nu_pt, nu_phi)


def _hadronic_pair(objs: _Objects, events: np.ndarray, mass: float, width: float, pt_scale: float,
                   jet_type: int) -> None:
    """A resonance decaying to two jets of `jet_type` in each of `events`."""
    for d_pt, d_eta, d_phi in _two_body(objs.rng, len(events), mass, width, pt_scale, 1.2):
        objs.add(events, jet_type, d_pt, d_eta, d_phi)


def _generate_process(objs: _Objects, name: str, events: np.ndarray) -> None:
    """Add the objects and neutrinos of process `name` to `events`."""
    rng, n = objs.rng, len(events)
    if name == "qcd_multijet":
        objs.add_spectrum(events, 2 + rng.poisson(4.0, n), JET, 20.0, 3.2, 2.2)
        objs.add_spectrum(events, rng.poisson(0.25, n), BJET, 20.0, 3.2, 1.8)
        objs.add_spectrum(events, rng.poisson(0.1, n), PHOTON, 15.0, 3.5, 1.8)
        objs.add_spectrum(events, rng.poisson(0.05, n), rng.choice([ELECTRON, MUON], n), 10.0, 4.0, 1.5)
    elif name == "w_jets":
        _leptonic_w(objs, events, 15.0)
        objs.add_spectrum(events, rng.poisson(1.5, n), JET, 25.0, 3.0, 2.0)
    elif name == "ttbar":
        objs.add_spectrum(events, np.full(n, 2), BJET, 30.0, 2.2, 1.3)
        # Each W: leptonic with its branching fraction of about one third, otherwise two jets.
        for _ in range(2):
            leptonic = rng.random(n) < 1 / 3
            _leptonic_w(objs, events[leptonic], 60.0)
            _hadronic_pair(objs, events[~leptonic], 80.4, 2.1, 60.0, JET)
        objs.add_spectrum(events, rng.poisson(1.0, n), JET, 25.0, 2.8, 2.0)
    elif name == "z_ll":
        flavour = rng.choice([ELECTRON, MUON], n)
        for d_pt, d_eta, d_phi in _two_body(rng, n, 91.19, 2.5, 15.0, 1.2):
            objs.add(events, flavour, d_pt * rng.normal(1.0, 0.02, n), d_eta, d_phi)
        objs.add_spectrum(events, rng.poisson(1.0, n), JET, 25.0, 3.0, 2.0)
    elif name == ANOMALY_PROCESS:
        _hadronic_pair(objs, events, 600.0, 15.0, 50.0, BJET)
        objs.add_spectrum(events, rng.poisson(1.0, n), JET, 25.0, 3.0, 2.0)
    else:  # guarded by make_synthetic_events; a new process needs a branch here
        raise ConfigError(f"unknown synthetic process {name!r}; expected one of {SM_PROCESSES + (ANOMALY_PROCESS,)}")


def _assemble(objs: _Objects, n_events: int, n_tokens: int) -> dict[str, np.ndarray]:
    """Sort each event's objects by pT (descending), keep the first n_tokens, pad, add MET."""
    events, types, pt, eta, phi = (np.concatenate(c) for c in zip(*objs.columns))
    order = np.lexsort((-pt, events))
    events, types, pt, eta, phi = events[order], types[order], pt[order], eta[order], phi[order]
    counts = np.bincount(events, minlength=n_events)
    rank = np.arange(len(events)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = rank < n_tokens
    ev, rk = events[keep], rank[keep]
    tokens_id = np.zeros((n_events, n_tokens), np.int64)
    tokens_cont = np.zeros((n_events, n_tokens, 4), np.float32)
    tokens_id[ev, rk] = types[keep]
    tokens_cont[ev, rk] = np.stack([pt[keep] * np.cosh(eta[keep]), pt[keep], eta[keep], phi[keep]], axis=1)
    # Resolution: MET picks up noise growing with the hadronic activity (HT of all jets).
    is_jet = (types == JET) | (types == BJET)
    ht = np.bincount(events[is_jet], weights=pt[is_jet], minlength=n_events)
    sigma = 4.0 + 0.03 * ht
    met_x = objs.met_x + objs.rng.normal(0.0, 1.0, n_events) * sigma
    met_y = objs.met_y + objs.rng.normal(0.0, 1.0, n_events) * sigma
    met_globals = np.stack([np.hypot(met_x, met_y), np.arctan2(met_y, met_x)], axis=1).astype(np.float32)
    return {"tokens_id": tokens_id, "tokens_cont": tokens_cont, "globals": met_globals}


def make_synthetic_events(path: str | os.PathLike, n_events: int = 20_000, seed: int = 0, *, n_tokens: int = 20,
                          split_fractions: Sequence[float] = (0.7, 0.15, 0.15), anomaly_fraction: float = 0.0,
                          chunk_rows: int = 1024) -> Path:
    """Generate events from the processes described in this module and write them in layout 1.

    Args:
        path: destination .h5 file.
        n_events: total events over all splits.
        seed: the same seed gives the same file, byte for byte in its arrays.
        n_tokens: tokens per event (T); objects beyond it (lowest pT) are dropped.
        split_fractions: train, val, test fractions (sum to 1).
        anomaly_fraction: fraction of the test split replaced by bsm_resonance events (label 4);
            train and val stay Standard-Model only. With 0, label_names has the 4 SM processes.
        chunk_rows: HDF5 chunk length along N.

    Returns:
        The path written.

    Raises:
        ConfigError: a count or fraction is out of range.
    """
    fractions = tuple(float(f) for f in split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split_fractions={list(split_fractions)}; expected 3 non-negative fractions "
                          f"(train, val, test) summing to 1")
    if n_events < 1 or n_tokens < 1:
        raise ConfigError(f"n_events={n_events}, n_tokens={n_tokens}; expected both >= 1")
    if not 0.0 <= anomaly_fraction <= 1.0:
        raise ConfigError(f"anomaly_fraction={anomaly_fraction}; expected a fraction in [0, 1]")
    rng = np.random.default_rng(seed)
    n_train, n_val = round(fractions[0] * n_events), round(fractions[1] * n_events)
    n_train, n_val = min(n_train, n_events), min(n_val, n_events - min(n_train, n_events))
    labels = rng.choice(len(SM_PROCESSES), size=n_events, p=PROCESS_FRACTIONS)
    label_names = SM_PROCESSES
    if anomaly_fraction > 0:
        label_names = SM_PROCESSES + (ANOMALY_PROCESS,)
        test = np.arange(n_train + n_val, n_events)
        chosen = rng.choice(test, size=round(anomaly_fraction * len(test)), replace=False)
        labels[chosen] = len(SM_PROCESSES)
    objs = _Objects(n_events, rng)
    for index, name in enumerate(label_names):
        _generate_process(objs, name, np.flatnonzero(labels == index))
    arrays = _assemble(objs, n_events, n_tokens)
    arrays["labels"] = labels
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n_events)}
    splits = {s: {k: v[lo:hi] for k, v in arrays.items()} for s, (lo, hi) in bounds.items()}
    return write_events(path, splits, token_types=TOKEN_TYPES, label_names=label_names, chunk_rows=chunk_rows)

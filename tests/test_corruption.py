"""Corruption strategies: each changes the batch, keeps its invariants and is reproducible."""

from __future__ import annotations

import pytest
import torch

from thesis_lib.data.corruption import CORRUPTIONS, corrupt
from thesis_lib.errors import DataError

# Valid tokens per event (padding at the end, as the files store them); the last event is empty.
VALID_COUNTS = (8, 5, 3, 2, 1, 0)
T, C, G = 8, 4, 2


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch like the loader's: ids 1..5 at valid positions, z-scored-looking features, 0 at padding."""
    g = torch.Generator().manual_seed(seed)
    b = len(VALID_COUNTS)
    valid = torch.arange(T).expand(b, T) < torch.tensor(VALID_COUNTS).unsqueeze(1)
    ids = torch.randint(1, 6, (b, T), generator=g)
    ids[:, 0], ids[:, 1] = 1, 2  # two types in every event with two tokens: a swap can show
    tokens_id = torch.where(valid, ids, torch.zeros_like(ids))
    tokens_cont = torch.randn(b, T, C, generator=g) * valid.unsqueeze(-1)
    return {"tokens_id": tokens_id, "tokens_cont": tokens_cont, "globals": torch.randn(b, G, generator=g),
            "labels": torch.arange(b)}


def gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_changes_batch_and_keeps_invariants(name):
    batch = make_batch()
    before = {k: v.clone() for k, v in batch.items()}
    out = corrupt(batch, name, generator=gen())
    for key, value in batch.items():  # the input is untouched
        assert torch.equal(value, before[key]), f"{name} modified input {key}"
    assert out is not batch
    assert set(out) == set(batch)
    for key in batch:
        assert out[key].shape == batch[key].shape and out[key].dtype == batch[key].dtype, key
    padding = out["tokens_id"] == 0
    assert torch.all(out["tokens_cont"][padding] == 0), f"{name}: padding positions must keep cont 0"
    changed = any(not torch.equal(out[k], batch[k]) for k in ("tokens_id", "tokens_cont", "globals"))
    assert changed, f"{name} left the batch unchanged"
    assert torch.equal(out["labels"], batch["labels"])
    again = corrupt(batch, name, generator=gen())
    for key in out:
        assert torch.equal(out[key], again[key]), f"{name} is not reproducible from the generator ({key})"
    other = corrupt(batch, name, generator=gen(2))
    assert any(not torch.equal(out[k], other[k]) for k in out), f"{name} ignores the generator"


def test_additive_noise_touches_valid_features_only_with_scale_sigma():
    batch = make_batch()
    big = {k: v.repeat(200, *([1] * (v.dim() - 1))) for k, v in batch.items()}
    out = corrupt(big, "additive_noise", generator=gen(), sigma=0.5)
    valid = big["tokens_id"] != 0
    diff = out["tokens_cont"] - big["tokens_cont"]
    assert torch.all(diff[~valid] == 0)
    assert torch.all(diff[valid] != 0)
    assert abs(diff[valid].std().item() - 0.5) < 0.02
    assert torch.equal(out["tokens_id"], big["tokens_id"]) and torch.equal(out["globals"], big["globals"])


def _rows(x: torch.Tensor) -> list[tuple]:
    """Rows of a [n, C] tensor as sorted tuples (a multiset)."""
    return sorted(tuple(r) for r in x.tolist())


def test_token_permutation_moves_features_to_other_tokens_keeping_ids():
    batch = make_batch()
    out = corrupt(batch, "token_permutation", generator=gen())
    assert torch.equal(out["tokens_id"], batch["tokens_id"])
    for i, n in enumerate(VALID_COUNTS):
        assert _rows(out["tokens_cont"][i, :n]) == _rows(batch["tokens_cont"][i, :n])
        if n >= 2:  # a single cycle: no valid token keeps its own features
            same = (out["tokens_cont"][i, :n] == batch["tokens_cont"][i, :n]).all(dim=1)
            assert not same.any(), f"event {i}: token kept its features"
    moved = corrupt(batch, "token_permutation", generator=gen(), move_ids=True)
    for i, n in enumerate(VALID_COUNTS):
        pairs = torch.cat([batch["tokens_id"][i, :n, None].float(), batch["tokens_cont"][i, :n]], dim=1)
        moved_pairs = torch.cat([moved["tokens_id"][i, :n, None].float(), moved["tokens_cont"][i, :n]], dim=1)
        assert _rows(moved_pairs) == _rows(pairs), "move_ids must move whole tokens"
    assert not torch.equal(moved["tokens_id"], batch["tokens_id"])


def test_dropped_tokens_pads_a_fraction_and_keeps_the_rest():
    batch = make_batch()
    out = corrupt(batch, "dropped_tokens", generator=gen(), fraction=0.5)
    dropped = (batch["tokens_id"] != 0) & (out["tokens_id"] == 0)
    # round-half-to-even of 0.5 n, at least 1, and at least one token kept: n=8,5,3,2,1,0 -> 4,2,2,1,0,0
    assert dropped.sum(dim=1).tolist() == [4, 2, 2, 1, 0, 0]
    kept = out["tokens_id"] != 0
    assert torch.equal(out["tokens_id"][kept], batch["tokens_id"][kept])
    assert torch.equal(out["tokens_cont"][kept], batch["tokens_cont"][kept])
    assert torch.all(out["tokens_cont"][dropped] == 0)


def test_swapped_id_cont_moves_ids_keeping_features():
    batch = make_batch()
    out = corrupt(batch, "swapped_id_cont", generator=gen())
    assert torch.equal(out["tokens_cont"], batch["tokens_cont"])
    for i, n in enumerate(VALID_COUNTS):
        assert sorted(out["tokens_id"][i, :n].tolist()) == sorted(batch["tokens_id"][i, :n].tolist())
    assert not torch.equal(out["tokens_id"][3, :2], batch["tokens_id"][3, :2])  # ids 1, 2 must swap
    same_type = {**batch, "tokens_id": (batch["tokens_id"] != 0).long()}  # every token a jet
    assert torch.equal(corrupt(same_type, "swapped_id_cont", generator=gen())["tokens_id"], same_type["tokens_id"])


def test_scrambled_globals_gives_every_event_another_events_globals():
    batch = make_batch()
    out = corrupt(batch, "scrambled_globals", generator=gen())
    assert _rows(out["globals"]) == _rows(batch["globals"])
    assert not (out["globals"] == batch["globals"]).all(dim=1).any()
    single = {k: v[:1] for k, v in batch.items()}
    noisy = corrupt(single, "scrambled_globals", generator=gen(), sigma=2.0)
    assert noisy["globals"].shape == (1, G) and not torch.equal(noisy["globals"], single["globals"])
    assert torch.isfinite(noisy["globals"]).all()


def test_unknown_corruption_lists_allowed_names_and_nearest():
    with pytest.raises(DataError) as info:
        corrupt(make_batch(), "additive_nois", generator=gen())
    message = str(info.value)
    assert "unknown corruption 'additive_nois'" in message
    assert "allowed: additive_noise, token_permutation, dropped_tokens, swapped_id_cont, scrambled_globals" in message
    assert "did you mean 'additive_noise'" in message


def test_bad_parameters_and_batches_are_refused():
    with pytest.raises(DataError, match="takes no parameter 'sigmaa'; its parameters: sigma"):
        corrupt(make_batch(), "additive_noise", generator=gen(), sigmaa=1.0)
    with pytest.raises(DataError, match=r"fraction=1.5; expected a number in \(0.0, 1.0\)"):
        corrupt(make_batch(), "dropped_tokens", generator=gen(), fraction=1.5)
    with pytest.raises(DataError, match=r"batch lacks keys \['globals'\]"):
        corrupt({k: v for k, v in make_batch().items() if k != "globals"}, "scrambled_globals", generator=gen())

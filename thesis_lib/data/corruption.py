"""Corruptions of event batches: known anomalies for scoring an autoencoder's reconstruction error.

Each strategy takes a batch dict (``tokens_id`` [B, T] with 0 = padding, ``tokens_cont`` [B, T, C]
z-scored, ``globals`` [B, G], ``labels`` [B]) and returns a new dict: the input is never changed
in place, tensors a strategy does not touch are shared with it. Shapes, dtypes and the padding
convention (padding positions hold cont 0) are kept. Randomness comes only from the
``torch.Generator`` passed in (a CPU generator; draws are moved to the batch's device), so the
same generator state gives the same corrupted batch on any device.

Where a strategy permutes, it uses a random single cycle over the valid positions (a uniformly
random cyclic order), so every valid token receives another token's values and no event with
two or more valid tokens is left unchanged by chance.

Strategies (``CORRUPTIONS``):

- ``additive_noise``: gaussian noise of scale ``sigma`` (in z-score units) on the continuous
  features of valid tokens.
- ``token_permutation``: the continuous features move to other valid positions while the token
  ids stay in place. That breaks the pT ordering *and* the id/feature pairing, an anomaly for
  every model here. ``move_ids=True`` moves whole tokens instead (ids with their features): an
  ordering-only anomaly, which tells whether a model relies on the pT order at all.
- ``dropped_tokens``: a ``fraction`` of each event's valid tokens becomes padding (id 0, cont 0)
  in place; at least one token is dropped and at least one kept, so every event with two or
  more tokens changes and still has a reconstruction error to score.
- ``swapped_id_cont``: the token ids move to other valid positions while the continuous features
  stay (pT order kept, pairing broken). An event whose valid tokens all share one type cannot
  change this way and is returned as it was.
- ``scrambled_globals``: each event receives another event's globals (a cycle over the batch); a
  batch of one event gets gaussian noise of scale ``sigma`` instead. A score of the continuous
  features alone (MSE) sees this only through the encoder; a score with the globals term sees it
  directly (``run_inference(..., anomaly_score="total")``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch

from ..errors import DataError, did_you_mean

__all__ = [
    "CORRUPTIONS",
    "corrupt",
    "additive_noise",
    "token_permutation",
    "dropped_tokens",
    "swapped_id_cont",
    "scrambled_globals",
]

Batch = Mapping[str, torch.Tensor]
_REQUIRED_KEYS = ("tokens_id", "tokens_cont", "globals")


def _valid(batch: Batch) -> torch.Tensor:
    """Bool mask [B, T] of real (non-padding) tokens."""
    return batch["tokens_id"] != 0


def _random_cycle(valid: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Source index [B, T]: valid position p takes its value from the next valid position in a random
    cyclic order of the event's valid positions; padding positions map to themselves."""
    b, t = valid.shape
    keys = torch.rand((b, t), generator=generator).to(valid.device)
    # Padding sorts after every valid position (keys < 1), so order[:, :n] are the valid ones.
    keys = keys.masked_fill(~valid, 2.0)
    order = keys.argsort(dim=1)
    n = valid.sum(dim=1, keepdim=True)
    slot = torch.arange(t, device=valid.device).expand(b, t)
    next_slot = torch.where(slot < n, (slot + 1) % n.clamp(min=1), slot)
    source = torch.empty_like(order)
    source.scatter_(1, order, order.gather(1, next_slot))
    return source


def additive_noise(batch: Batch, *, generator: torch.Generator, sigma: float = 0.5) -> dict[str, torch.Tensor]:
    """Gaussian noise N(0, sigma^2) added to the continuous features of valid tokens."""
    cont = batch["tokens_cont"]
    noise = torch.randn(cont.shape, generator=generator).to(device=cont.device, dtype=cont.dtype)
    mask = _valid(batch).unsqueeze(-1).to(cont.dtype)
    return {**batch, "tokens_cont": cont + sigma * noise * mask}


def token_permutation(batch: Batch, *, generator: torch.Generator, move_ids: bool = False) -> dict[str, torch.Tensor]:
    """Continuous features cycled over the valid positions, ids kept (or moved too with move_ids)."""
    source = _random_cycle(_valid(batch), generator)
    cont = batch["tokens_cont"]
    out = {**batch, "tokens_cont": cont.gather(1, source.unsqueeze(-1).expand_as(cont))}
    if move_ids:
        out["tokens_id"] = batch["tokens_id"].gather(1, source)
    return out


def dropped_tokens(batch: Batch, *, generator: torch.Generator, fraction: float = 0.5) -> dict[str, torch.Tensor]:
    """round(fraction * n) of each event's n valid tokens (at least 1, at most n - 1) set to padding."""
    valid = _valid(batch)
    keys = torch.rand(valid.shape, generator=generator).to(valid.device).masked_fill(~valid, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)  # a random rank among the valid tokens, padding last
    n = valid.sum(dim=1, keepdim=True)
    k = torch.clamp(torch.round(n.to(torch.float32) * fraction).to(n.dtype), min=1)
    k = torch.minimum(k, (n - 1).clamp(min=0))
    drop = valid & (rank < k)
    return {
        **batch,
        "tokens_id": batch["tokens_id"].masked_fill(drop, 0),
        "tokens_cont": batch["tokens_cont"].masked_fill(drop.unsqueeze(-1), 0.0),
    }


def swapped_id_cont(batch: Batch, *, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Token ids cycled over the valid positions, continuous features kept: the id/feature pairs broken."""
    source = _random_cycle(_valid(batch), generator)
    return {**batch, "tokens_id": batch["tokens_id"].gather(1, source)}


def scrambled_globals(batch: Batch, *, generator: torch.Generator, sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """Each event gets another event's globals (a random cycle); a single event gets N(0, sigma^2) noise."""
    glob = batch["globals"]
    b = glob.shape[0]
    if b == 1:
        noise = torch.randn(glob.shape, generator=generator).to(device=glob.device, dtype=glob.dtype)
        return {**batch, "globals": sigma * noise}
    order = torch.randperm(b, generator=generator)
    source = torch.empty_like(order)
    source[order] = order.roll(-1)
    return {**batch, "globals": glob.index_select(0, source.to(glob.device))}


CORRUPTIONS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "additive_noise": additive_noise,
    "token_permutation": token_permutation,
    "dropped_tokens": dropped_tokens,
    "swapped_id_cont": swapped_id_cont,
    "scrambled_globals": scrambled_globals,
}

# Parameter ranges checked by `corrupt`: name -> open interval (low, high).
_RANGES = {"sigma": (0.0, float("inf")), "fraction": (0.0, 1.0)}


def corrupt(batch: Batch, name: str, *, generator: torch.Generator, **params) -> dict[str, torch.Tensor]:
    """Apply the corruption `name` to a batch.

    Args:
        batch: dict with tokens_id [B, T] (0 = padding), tokens_cont [B, T, C], globals [B, G]
            (labels and any other keys are passed through).
        name: a key of CORRUPTIONS.
        generator: a CPU torch.Generator; the only source of randomness.
        **params: the strategy's keyword parameters (sigma, fraction, move_ids).

    Returns:
        A new batch dict; the input batch and its tensors are left unchanged.

    Raises:
        DataError: an unknown name (the message lists the allowed names and the nearest match),
            a parameter the strategy does not take or out of its range, or a batch missing a key.
    """
    if name not in CORRUPTIONS:
        nearest = did_you_mean(name, CORRUPTIONS)
        hint = f"; did you mean {nearest!r}?" if nearest else ""
        raise DataError(f"unknown corruption {name!r}; allowed: {', '.join(CORRUPTIONS)}{hint}")
    strategy = CORRUPTIONS[name]
    accepted = [p for p in inspect.signature(strategy).parameters if p not in ("batch", "generator")]
    for key, value in params.items():
        if key not in accepted:
            raise DataError(f"corruption {name!r} takes no parameter {key!r}; "
                            f"its parameters: {', '.join(accepted) or 'none'}")
        if key in _RANGES:
            low, high = _RANGES[key]
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and low < value < high):
                raise DataError(f"corruption {name!r}: {key}={value!r}; expected a number in ({low}, {high})")
    missing = [k for k in _REQUIRED_KEYS if k not in batch]
    if missing:
        raise DataError(f"corruption {name!r}: batch lacks keys {missing}; expected {list(_REQUIRED_KEYS)}")
    return strategy(batch, generator=generator, **params)

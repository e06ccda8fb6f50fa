"""The "gnn" encoder: a dynamic-graph EdgeConv network over an event's particles -> [B, latent_dim].

This module owns the graph encoder: the k-nearest-neighbour graph of each event's valid tokens,
the EdgeConv block, and the masked pooling to one vector per event. It follows ParticleNet
(Qu & Gouskos 2020, arXiv:1902.08570): an event is an unordered set of particles, and EdgeConv
learns from each particle's local neighbourhood, h(x_i, x_j - x_i) averaged over its k nearest
neighbours, which makes the encoder invariant to the order of the tokens (unlike "mlp", which
reads slots, and "transformer", which adds a position per slot) while still seeing pairwise
structure that a per-token MLP and a pooled sum would miss. The graph is rebuilt before every
block ("dynamic"): the first in the (eta, phi) plane, later ones in the learned feature space.

Padding never reaches the output: padded tokens are never anyone's neighbour (distance +inf),
are left out of the pooling, and their input values are zeroed first. Slots a token cannot fill
with a real neighbour (events with fewer than k + 1 valid tokens, empty events) point back to
the token itself, so every row has k finite edges and no NaN appears. Everything is batched with
topk / gather on the device: no host sync and no data-dependent shape in forward. A tie in
distance at the k-th neighbour is resolved by topk's order, so two tokens at exactly the same
point could make the output depend on token order; with continuous features that does not occur.

The phi distance is periodic. Features arrive z-scored, so the raw phi scale is gone from the
batch; where the data meta carries its Normalization, the coordinate differences are scaled
back by the train-split std (the mean cancels in a difference) and delta-phi is wrapped to
[-pi, pi). Without a Normalization the z-scored eta and phi are used as they are, unwrapped.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from thesis_lib.errors import ModelError
from thesis_lib.models.encoders import check_batch, make_mlp
from thesis_lib.models.registry import register

__all__ = [
    "MAX_NEIGHBOURS",
    "AGGREGATIONS",
    "default_neighbours",
    "knn_coordinates",
    "knn_indices",
    "feature_distances",
    "EdgeConvBlock",
    "GNNEncoder",
    "build_gnn_encoder",
]

# ParticleNet uses k = 16; events with fewer tokens get k = T - 1 (every other token).
MAX_NEIGHBOURS = 16
AGGREGATIONS: tuple[str, ...] = ("mean", "max")


def default_neighbours(n_tokens: int) -> int:
    """k for events of n_tokens slots: min(16, T - 1), at least 1 (a lone token links to itself)."""
    return max(1, min(MAX_NEIGHBOURS, n_tokens - 1))


def knn_coordinates(meta: Any) -> tuple[Optional[tuple[int, int]], tuple[float, float], bool]:
    """Where the first graph is built: (eta, phi) columns, their raw-unit scale, and whether to wrap phi.

    Args:
        meta: the data meta; reads ``cont_features`` (names, matched case-insensitively to "eta"
            and "phi") and ``normalization`` (a Normalization or None), both optional.

    Returns:
        ``(columns, scale, wrap_phi)``: the column indices of eta and phi in tokens_cont (None when
        either name is missing: the first graph then uses all continuous features), the factors
        that turn z-scored differences into raw ones (the train-split stds; 1 without a
        Normalization) and True when delta-phi is in radians and can be wrapped to [-pi, pi).

    Raises:
        ModelError: the Normalization's length differs from meta.cont_features.
    """
    names = [str(name).lower() for name in (getattr(meta, "cont_features", None) or ())]
    if "eta" not in names or "phi" not in names:
        return None, (1.0, 1.0), False
    columns = (names.index("eta"), names.index("phi"))
    normalization = getattr(meta, "normalization", None)
    if normalization is None:
        return columns, (1.0, 1.0), False
    if len(normalization.cont_std) != len(names):
        raise ModelError(
            f"data meta normalization has {len(normalization.cont_std)} cont_std values but "
            f"cont_features has {len(names)} names ({', '.join(names)}); expected one std per feature"
        )
    return columns, (float(normalization.cont_std[columns[0]]), float(normalization.cont_std[columns[1]])), True


def knn_indices(distances: torch.Tensor, valid: torch.Tensor, k: int, self_loops: torch.Tensor) -> torch.Tensor:
    """Indices [B, T, k] of each token's k nearest valid other tokens; missing ones point to the token itself.

    `distances` is [B, T, T] (row i: distances from token i), `valid` [B, T] bool, `self_loops` the
    [T, T] bool identity. Padding and the token itself are at +inf, so topk takes them last, and
    any pick at +inf is replaced by the token's own index: no data-dependent shape, no sync.
    """
    blocked = self_loops | ~valid.unsqueeze(1)
    nearest, index = distances.masked_fill(blocked, math.inf).topk(k, dim=-1, largest=False)
    own = torch.arange(distances.shape[-1], device=index.device).view(1, -1, 1).expand_as(index)
    return torch.where(torch.isfinite(nearest), index, own)


class EdgeConvBlock(nn.Module):
    """One pre-norm EdgeConv block: h_i + aggregate_j MLP([x_i, x_j - x_i]) over the k neighbours, x = LayerNorm(h)."""

    def __init__(self, width: int, dropout: float, aggregation: str) -> None:
        super().__init__()
        # LayerNorm, not ParticleNet's BatchNorm: batch statistics would mix padded tokens in.
        self.norm = nn.LayerNorm(width)
        self.edge_mlp = make_mlp(2 * width, width, width, 1, dropout)
        self.aggregation = aggregation

    def forward(self, hidden: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, W], neighbours [B, T, k] (indices into T) -> [B, T, W]."""
        batch, tokens, k = neighbours.shape
        x = self.norm(hidden)
        flat = neighbours.reshape(batch, tokens * k, 1).expand(-1, -1, x.shape[-1])
        x_j = x.gather(1, flat).view(batch, tokens, k, -1)
        x_i = x.unsqueeze(2).expand_as(x_j)
        edges = self.edge_mlp(torch.cat([x_i, x_j - x_i], dim=-1))
        message = edges.mean(dim=2) if self.aggregation == "mean" else edges.amax(dim=2)
        return hidden + message


class GNNEncoder(nn.Module):
    """ParticleNet-style dynamic-graph EdgeConv encoder: batch dict -> latent [B, out_dim].

    Token type embedding (padding row zero) and continuous features are projected to hidden_dim,
    passed through `num_layers` EdgeConv blocks (each on a fresh kNN graph over valid tokens:
    the first in (eta, phi), later ones in feature space), normalised, pooled over valid tokens
    by mean and max, concatenated with the globals and mapped to `out_dim` by an MLP.

    Args:
        n_tokens: token slots per event (T).
        cont_dim: continuous features per token (C).
        globals_dim: event globals (G).
        n_token_types: token type vocabulary size, id 0 being padding.
        token_embed_dim: width of the token type embedding.
        hidden_dim: width of the node features, of every edge MLP and of the output MLP's hidden layer.
        num_layers: number of EdgeConv blocks.
        dropout: dropout in the edge MLPs and the output MLP.
        out_dim: latent width.
        k: neighbours per token; None gives ``default_neighbours(n_tokens)``.
        coord_columns: (eta, phi) column indices in tokens_cont for the first graph; None builds it
            from all continuous features.
        coord_scale: factors turning z-scored (eta, phi) differences into raw units.
        wrap_phi: wrap delta-phi (after scaling) to [-pi, pi).
        aggregation: "mean" (ParticleNet's) or "max" over the neighbours.

    Returns (forward):
        The latent [B, out_dim]; an event without tokens is described by its globals alone.

    Raises:
        ModelError: at construction, k is not in [1, n_tokens], a coordinate column is outside
            tokens_cont, or the aggregation is unknown; in forward, a batch key or shape is wrong.
    """

    def __init__(
        self,
        *,
        n_tokens: int,
        cont_dim: int,
        globals_dim: int,
        n_token_types: int,
        token_embed_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        out_dim: int,
        k: Optional[int] = None,
        coord_columns: Optional[Sequence[int]] = None,
        coord_scale: Sequence[float] = (1.0, 1.0),
        wrap_phi: bool = False,
        aggregation: str = "mean",
    ) -> None:
        super().__init__()
        self.k = default_neighbours(n_tokens) if k is None else int(k)
        if not 1 <= self.k <= n_tokens:
            raise ModelError(f"gnn encoder: k={self.k} neighbours; expected 1 <= k <= n_tokens={n_tokens}")
        if aggregation not in AGGREGATIONS:
            raise ModelError(f"gnn encoder: aggregation {aggregation!r}; allowed: {', '.join(AGGREGATIONS)}")
        if coord_columns is not None and not all(0 <= c < cont_dim for c in coord_columns):
            raise ModelError(
                f"gnn encoder: coord_columns {list(coord_columns)} outside tokens_cont's {cont_dim} features"
            )
        self.dims = (n_tokens, cont_dim, globals_dim)
        self.coord_columns = None if coord_columns is None else [int(c) for c in coord_columns]
        self.wrap_phi = bool(wrap_phi)
        # Geometry follows the data meta, not training: non-persistent, so state_dicts hold weights only.
        self.register_buffer("coord_scale", torch.tensor([float(s) for s in coord_scale]), persistent=False)
        self.register_buffer("self_loops", torch.eye(n_tokens, dtype=torch.bool), persistent=False)
        self.embed = nn.Embedding(n_token_types, token_embed_dim, padding_idx=0)
        self.project = nn.Linear(token_embed_dim + cont_dim, hidden_dim)
        self.blocks = nn.ModuleList(EdgeConvBlock(hidden_dim, dropout, aggregation) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.out = make_mlp(2 * hidden_dim + globals_dim, hidden_dim, out_dim, 1, dropout)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Latent [B, out_dim] of a batch dict (tokens_id, tokens_cont, globals)."""
        check_batch(batch, *self.dims)
        tokens_id = batch["tokens_id"]
        valid = tokens_id != 0
        # masked_fill, not a multiply: whatever sits at padding (even NaN) becomes 0.
        cont = batch["tokens_cont"].masked_fill(~valid.unsqueeze(-1), 0.0)
        embedded = self.embed(tokens_id)
        hidden = self.project(torch.cat([embedded, cont.to(embedded.dtype)], dim=-1))
        for index, block in enumerate(self.blocks):
            distances = self._first_distances(cont) if index == 0 else feature_distances(hidden)
            hidden = block(hidden, knn_indices(distances, valid, self.k, self.self_loops))
        pooled = _masked_mean_max(self.norm(hidden), valid)
        return self.out(torch.cat([pooled, batch["globals"].to(pooled.dtype)], dim=-1))

    def _first_distances(self, cont: torch.Tensor) -> torch.Tensor:
        """Squared distances [B, T, T] for the first graph: (eta, phi) in raw units where known, else all of cont."""
        if self.coord_columns is None:
            return feature_distances(cont)
        with torch.no_grad():
            coords = cont[..., self.coord_columns].float()
            delta = (coords.unsqueeze(1) - coords.unsqueeze(2)) * self.coord_scale  # [B, T(i), T(j), 2]
            d_eta, d_phi = delta.unbind(-1)
            if self.wrap_phi:
                d_phi = torch.remainder(d_phi + math.pi, 2 * math.pi) - math.pi
            return d_eta.square() + d_phi.square()


def feature_distances(features: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [B, T, T] between tokens' features, computed in float32."""
    # |a|^2 + |b|^2 - 2ab keeps memory at [B, T, T] (not [B, T, T, W]); autocast is off because a
    # bf16 matmul would blur the ranking. Not cdist: the ONNX exporter has no translation for it.
    with torch.no_grad(), torch.autocast(device_type=features.device.type, enabled=False):
        x = features.float()
        norms = x.square().sum(dim=-1)
        return (norms.unsqueeze(-1) + norms.unsqueeze(-2) - 2.0 * x @ x.transpose(-1, -2)).clamp(min=0.0)


def _masked_mean_max(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[mean, max] over valid tokens, [B, 2W]; both are 0 for an event without tokens."""
    mask = valid.unsqueeze(-1)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)
    mean = hidden.masked_fill(~mask, 0.0).sum(dim=1) / count
    peak = hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min).amax(dim=1)
    peak = torch.where(valid.any(dim=1, keepdim=True), peak, torch.zeros_like(peak))
    return torch.cat([mean, peak], dim=-1)


@register("encoder", "gnn")
def build_gnn_encoder(model_cfg: Any, meta: Any) -> GNNEncoder:
    """The "gnn" encoder: EdgeConv over kNN graphs of the tokens -> [B, latent_dim].

    Raises:
        ModelError: meta.normalization does not match meta.cont_features.
    """
    columns, scale, wrap_phi = knn_coordinates(meta)
    return GNNEncoder(
        n_tokens=meta.n_tokens,
        cont_dim=meta.cont_dim,
        globals_dim=meta.globals_dim,
        n_token_types=meta.n_token_types,
        token_embed_dim=model_cfg.token_embed_dim,
        hidden_dim=model_cfg.hidden_dim,
        num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout,
        out_dim=model_cfg.latent_dim,
        coord_columns=columns,
        coord_scale=scale,
        wrap_phi=wrap_phi,
    )

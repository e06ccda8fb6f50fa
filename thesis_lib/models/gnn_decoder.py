"""The "gnn" decoder: a latent [B, latent_dim] -> T token nodes -> EdgeConv message passing -> the event.

Registered as ``decoder`` "gnn"; it returns what the "mlp" decoder returns: ``cont`` [B, T, C],
``id_logits`` [B, T, V] (padding id 0 included) and ``globals`` [B, G].

How the graph comes from the latent. A decoder has no particles yet, so it has no coordinates to
build a graph in. It starts from T learned token queries (``slots`` [T, H], one per token slot)
and conditions each on the latent by FiLM: ``node_t = slot_t * (1 + gamma(z)) + beta(z)``, gamma
and beta from one small MLP of z. These are the initial node features [B, T, H]. Then
``num_layers`` EdgeConv blocks (the encoder's ``EdgeConvBlock``) let the nodes exchange
information; before each block the graph is rebuilt as the k nearest neighbours of every node in
the current node-feature space (``graph(nodes)`` -> neighbour indices [B, T, k], the encoder's
``feature_distances`` + ``knn_indices``), so it is dynamic as in the encoder's later blocks, and
learned: nodes that become alike exchange messages. k is the encoder's ``default_neighbours(T)``
(min(16, T - 1)): for events of up to 17 slots every node sees every other one, so the graph is
complete and message passing is a mean over all other tokens; beyond that it is a real kNN graph.
Per-node linear heads read the normalised node features for cont and id logits; the globals come
from an MLP reading z directly, as in "mlp" (so ``decoder.globals_head`` can be frozen alike).

What it is not: permutation-invariant in its output. The loss compares slot t with token t of the
event (no set matching), so the slot queries learn the data's slot order (the loaders' events are
pT-ordered); the graph adds interaction between the tokens of one event, not order freedom.
Every node is a real node: the decoder predicts padding (id 0) like any other type, so there is
no masking and no data-dependent shape; the neighbour search runs without gradient (topk) on the
device, with no host sync.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from thesis_lib.errors import ModelError
from thesis_lib.models.encoders import make_mlp
from thesis_lib.models.gnn import (
    AGGREGATIONS,
    EdgeConvBlock,
    default_neighbours,
    feature_distances,
    knn_indices,
)
from thesis_lib.models.registry import register

__all__ = ["GNNDecoder", "build_gnn_decoder"]


class GNNDecoder(nn.Module):
    """Latent -> FiLM-conditioned slot queries -> dynamic-kNN EdgeConv blocks -> per-node heads; globals from z.

    Args:
        latent_dim: width of z.
        hidden_dim: width of the node features, the edge MLPs and the conditioning / globals MLPs.
        num_layers: number of EdgeConv blocks (0: the heads read the conditioned slots directly).
        dropout: dropout in the edge, conditioning and globals MLPs.
        n_tokens: token slots per event (T).
        cont_dim: continuous features per token (C).
        globals_dim: event globals (G).
        n_token_types: token type vocabulary size (V), id 0 being padding.
        k: neighbours per node; None gives ``default_neighbours(n_tokens)``.
        aggregation: "mean" (the encoder's) or "max" over the neighbours.

    Returns (forward):
        {"cont": [B, T, C], "id_logits": [B, T, V], "globals": [B, G]}.

    Raises:
        ModelError: at construction, k is not in [1, n_tokens] or the aggregation is unknown.
    """

    def __init__(
        self,
        *,
        latent_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        n_tokens: int,
        cont_dim: int,
        globals_dim: int,
        n_token_types: int,
        k: int | None = None,
        aggregation: str = "mean",
    ) -> None:
        super().__init__()
        self.k = default_neighbours(n_tokens) if k is None else int(k)
        if not 1 <= self.k <= n_tokens:
            raise ModelError(f"gnn decoder: k={self.k} neighbours; expected 1 <= k <= n_tokens={n_tokens}")
        if aggregation not in AGGREGATIONS:
            raise ModelError(f"gnn decoder: aggregation {aggregation!r}; allowed: {', '.join(AGGREGATIONS)}")
        self.hidden_dim = hidden_dim
        # Unit-variance queries, like an nn.Embedding's rows: distinct from the start, so the first graph is not degenerate.
        self.slots = nn.Parameter(torch.randn(n_tokens, hidden_dim))
        self.condition = make_mlp(latent_dim, hidden_dim, 2 * hidden_dim, 1, dropout)
        self.register_buffer("self_loops", torch.eye(n_tokens, dtype=torch.bool), persistent=False)
        self.blocks = nn.ModuleList(EdgeConvBlock(hidden_dim, dropout, aggregation) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.cont_head = nn.Linear(hidden_dim, cont_dim)
        self.id_head = nn.Linear(hidden_dim, n_token_types)
        self.globals_head = make_mlp(latent_dim, hidden_dim, globals_dim, 1, dropout)

    def initial_nodes(self, z: torch.Tensor) -> torch.Tensor:
        """Node features [B, T, H]: each slot query FiLM-conditioned on z [B, latent_dim]."""
        gamma, beta = self.condition(z).unsqueeze(1).split(self.hidden_dim, dim=-1)  # each [B, 1, H]
        return self.slots * (1.0 + gamma) + beta

    def graph(self, nodes: torch.Tensor) -> torch.Tensor:
        """Neighbour indices [B, T, k]: each node's k nearest other nodes in feature space (no gradient)."""
        every_node = torch.ones(nodes.shape[:2], dtype=torch.bool, device=nodes.device)
        return knn_indices(feature_distances(nodes), every_node, self.k, self.self_loops)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"cont": [B, T, C], "id_logits": [B, T, V], "globals": [B, G]} from z [B, latent_dim]."""
        nodes = self.initial_nodes(z)
        for block in self.blocks:
            nodes = block(nodes, self.graph(nodes))  # the graph is rebuilt before every block
        nodes = self.norm(nodes)
        return {"cont": self.cont_head(nodes), "id_logits": self.id_head(nodes), "globals": self.globals_head(z)}


@register("decoder", "gnn")
def build_gnn_decoder(model_cfg: Any, meta: Any) -> GNNDecoder:
    """The "gnn" decoder for the event shape in meta: num_layers EdgeConv blocks of hidden_dim."""
    return GNNDecoder(
        latent_dim=model_cfg.latent_dim,
        hidden_dim=model_cfg.hidden_dim,
        num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout,
        n_tokens=meta.n_tokens,
        cont_dim=meta.cont_dim,
        globals_dim=meta.globals_dim,
        n_token_types=meta.n_token_types,
    )

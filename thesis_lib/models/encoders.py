"""Encoders: a batch of events -> a latent vector per event, [B, latent_dim].

Registered as ``encoder`` "mlp" (the whole event flattened into one vector) and "transformer"
(self-attention over the tokens, padding masked out). Both embed the token type with an
``nn.Embedding`` whose padding row (id 0) is fixed at zero, and append the event globals.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from thesis_lib.errors import ModelError
from thesis_lib.models.registry import register

__all__ = [
    "make_mlp",
    "check_batch",
    "attention_padding_mask",
    "MLPEncoder",
    "TransformerEncoder",
    "build_mlp_encoder",
    "build_transformer_encoder",
]


def make_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, dropout: float) -> nn.Sequential:
    """An MLP with `num_layers` hidden layers of `hidden_dim` (Linear, GELU, Dropout) and a linear output.

    Args:
        in_dim: input width.
        hidden_dim: width of every hidden layer.
        out_dim: output width; the output layer has no activation.
        num_layers: number of hidden layers; 0 gives a single linear map.
        dropout: dropout probability after each hidden activation.

    Returns:
        The MLP as an ``nn.Sequential``.
    """
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(width, hidden_dim), nn.GELU(), nn.Dropout(dropout)]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def check_batch(batch: Mapping[str, torch.Tensor], n_tokens: int, cont_dim: int, globals_dim: int) -> None:
    """Check the batch's keys and shapes against the dimensions the model was built for.

    Only Python shape arithmetic: no device read, so it is free in the training step.

    Raises:
        ModelError: a key is missing or a shape differs; the message names the key, the expected
            and the found shape.
    """
    expected = {
        "tokens_id": (n_tokens,),
        "tokens_cont": (n_tokens, cont_dim),
        "globals": (globals_dim,),
    }
    for key, tail in expected.items():
        if key not in batch:
            raise ModelError(f"batch has no key {key!r}; found keys {sorted(batch)}")
        found = tuple(batch[key].shape)
        if found[1:] != tail:
            shape = ", ".join(["B", *map(str, tail)])
            raise ModelError(f"batch[{key!r}] has shape {list(found)}; the model was built for [{shape}]")


def attention_padding_mask(tokens_id: torch.Tensor) -> torch.Tensor:
    """Key padding mask [B, T] for attention: True at padding, except position 0 of empty events.

    An event without tokens would mask every key, and attention over no keys is NaN in torch
    before 2.5 and in some fused CUDA kernels; unmasking one position keeps it finite. The mask is
    computed on the device, without a host sync.
    """
    padding = tokens_id == 0
    empty = padding.all(dim=1, keepdim=True)
    first = torch.zeros_like(padding)
    first[:, 0] = True
    return padding & ~(empty & first)


class MLPEncoder(nn.Module):
    """Flatten [token embedding, continuous features] over all T tokens, append globals, apply an MLP."""

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
    ) -> None:
        super().__init__()
        self.dims = (n_tokens, cont_dim, globals_dim)
        # padding_idx keeps the padding row at zero, so padding positions contribute nothing.
        self.embed = nn.Embedding(n_token_types, token_embed_dim, padding_idx=0)
        in_dim = n_tokens * (cont_dim + token_embed_dim) + globals_dim
        self.mlp = make_mlp(in_dim, hidden_dim, out_dim, num_layers, dropout)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Latent [B, out_dim] of a batch dict (tokens_id, tokens_cont, globals)."""
        check_batch(batch, *self.dims)
        tokens = torch.cat([self.embed(batch["tokens_id"]), batch["tokens_cont"]], dim=-1)
        flat = torch.cat([tokens.flatten(1), batch["globals"]], dim=-1)
        return self.mlp(flat)


class TransformerEncoder(nn.Module):
    """Self-attention over the tokens with padding masked out, masked mean pooling, globals, linear."""

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
        num_heads: int,
        dropout: float,
        out_dim: int,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads != 0:
            raise ModelError(
                f"model.hidden_dim={hidden_dim} must be divisible by model.num_heads={num_heads} "
                "for the transformer encoder"
            )
        self.dims = (n_tokens, cont_dim, globals_dim)
        self.embed = nn.Embedding(n_token_types, token_embed_dim, padding_idx=0)
        self.project = nn.Linear(token_embed_dim + cont_dim, hidden_dim)
        # Token slots are ordered (the decoder reconstructs slot by slot), so attention gets a
        # learned position signal; without it the pooled latent could not tell slots apart.
        self.position = nn.Parameter(torch.randn(n_tokens, hidden_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            hidden_dim,
            num_heads,
            dim_feedforward=2 * hidden_dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # norm_first rules out the nested-tensor fast path; saying so spares torch's warning.
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_dim)
        self.out = nn.Linear(hidden_dim + globals_dim, out_dim)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Latent [B, out_dim] of a batch dict (tokens_id, tokens_cont, globals)."""
        check_batch(batch, *self.dims)
        tokens_id = batch["tokens_id"]
        padding = tokens_id == 0
        tokens = torch.cat([self.embed(tokens_id), batch["tokens_cont"]], dim=-1)
        hidden = self.project(tokens) + self.position
        hidden = self.norm(self.layers(hidden, src_key_padding_mask=attention_padding_mask(tokens_id)))

        # Pool over real tokens only: an empty event pools to zeros and is described by its globals.
        weights = (~padding).to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.out(torch.cat([pooled, batch["globals"].to(pooled.dtype)], dim=-1))


def _shared_dims(model_cfg: Any, meta: Any) -> dict[str, int]:
    """Constructor arguments both encoders take from the data meta and the model config."""
    return dict(
        n_tokens=meta.n_tokens,
        cont_dim=meta.cont_dim,
        globals_dim=meta.globals_dim,
        n_token_types=meta.n_token_types,
        token_embed_dim=model_cfg.token_embed_dim,
        hidden_dim=model_cfg.hidden_dim,
        num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout,
    )


@register("encoder", "mlp")
def build_mlp_encoder(model_cfg: Any, meta: Any) -> MLPEncoder:
    """The "mlp" encoder: flattened event -> MLP -> [B, latent_dim]."""
    return MLPEncoder(**_shared_dims(model_cfg, meta), out_dim=model_cfg.latent_dim)


@register("encoder", "transformer")
def build_transformer_encoder(model_cfg: Any, meta: Any) -> TransformerEncoder:
    """The "transformer" encoder: masked self-attention over tokens -> [B, latent_dim]."""
    return TransformerEncoder(
        **_shared_dims(model_cfg, meta), num_heads=model_cfg.num_heads, out_dim=model_cfg.latent_dim
    )

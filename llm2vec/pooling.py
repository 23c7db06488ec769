"""Pooling: token states -> one vector per text.

Every mode reads two masks of shape (batch, seq):
- `attention_mask`: 1 for real tokens (instruction and text), 0 for padding;
- `embed_mask`: 1 for the tokens that make up the text itself (no instruction, no padding).
Both left and right padding work: positions are found from the masks, never assumed.

Pooling reads the last layer's states, or with `pooling_layers` the mean of the states of the layers
it names (`average_layers`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

POOLING_MODES = ("mean", "weighted_mean", "eos_token", "last_token", "bos_token", "latent_attention")


def check_pooling_mode(mode: str) -> str:
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling_mode {mode!r}: choose {', '.join(POOLING_MODES)}")
    return mode


def check_pooling_layers(layers, num_layers: int) -> list[int]:
    """The layers to pool as sorted numbers from 0 (the token embeddings) to `num_layers` (the last);
    `layers`: None (the last), a number, or a list of them, negative ones counted from the end (-1:
    the last)."""
    items = [num_layers] if layers is None else layers
    if isinstance(items, str) or not isinstance(items, Sequence):  # one layer (or a wrong value, refused below)
        items = [items]
    if not items or any(isinstance(i, bool) or not isinstance(i, int) or not -num_layers - 1 <= i <= num_layers
                        for i in items):
        raise ValueError(f"pooling_layers must name layers from 0 (the token embeddings) to {num_layers} (the "
                         f"decoder's last; -1 counts from the end), got {layers!r}")
    return sorted({i % (num_layers + 1) for i in items})


def final_norm(model: nn.Module) -> nn.Module:
    """The decoder's last normalisation (`norm` in Llama, Mistral, Qwen2, Gemma): the last layer's
    states have been through it, the other layers' states have not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps it
    norm = getattr(base, "norm", None)
    if not isinstance(norm, nn.Module):
        raise ValueError(f"pooling layers but the last needs the decoder's final norm (`norm`), which "
                         f"{type(base).__name__} lacks")
    return norm


def average_layers(hidden_states: Sequence[torch.Tensor], norm: nn.Module, layers: Sequence[int]) -> torch.Tensor:
    """The mean of the states of `layers` (`hidden_states`: the embeddings, then each layer's output,
    the last one normalised already), each put through the final norm as the last one was: raw, an
    intermediate layer's states are dominated by a few huge residual-stream dimensions (on `make
    run`'s Gemma-3-270M encoder, STS-B dev 80.70 at layer 13 raw against 81.94 normalised)."""
    last = len(hidden_states) - 1
    states = [hidden_states[i] if i == last else norm(hidden_states[i]) for i in layers]
    return torch.stack(states).mean(dim=0)


def mean_pool(hidden: torch.Tensor, embed_mask: torch.Tensor) -> torch.Tensor:
    weights = embed_mask.to(hidden.dtype)
    return _weighted_sum(hidden, weights / weights.sum(dim=1, keepdim=True).clamp(min=1))


def weighted_mean_pool(hidden: torch.Tensor, embed_mask: torch.Tensor) -> torch.Tensor:
    """SGPT's position-weighted mean: the k-th text token weighs k, so later tokens (which a causal
    model has let see more of the text) count more."""
    positions = embed_mask.cumsum(dim=1) * embed_mask
    weights = positions.to(hidden.dtype)
    return _weighted_sum(hidden, weights / weights.sum(dim=1, keepdim=True).clamp(min=1))


def last_token_pool(hidden: torch.Tensor, embed_mask: torch.Tensor) -> torch.Tensor:
    """The state of the last text token (for `eos_token`, the appended EOS is that token); zeros
    for a text without tokens."""
    seq = torch.arange(embed_mask.shape[1], device=embed_mask.device)
    last = (seq * embed_mask).argmax(dim=1)
    states = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return torch.where(embed_mask.bool().any(dim=1, keepdim=True), states, 0)


def bos_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The state of the first real token of the sequence; zeros for a sequence without tokens."""
    first = attention_mask.to(torch.long).argmax(dim=1)
    states = hidden[torch.arange(hidden.shape[0], device=hidden.device), first]
    return torch.where(attention_mask.bool().any(dim=1, keepdim=True), states, 0)


def _weighted_sum(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # Zero the unweighted states first: an inf or nan there (padding) would survive a weight of 0.
    hidden = hidden.masked_fill(weights.unsqueeze(-1) == 0, 0)
    return torch.einsum("bs,bsd->bd", weights, hidden)


class LatentAttention(nn.Module):
    """NV-Embed's latent-attention pooling: token states (queries) cross-attend to a trainable
    latent array (keys = values), go through an MLP, then are mean-pooled over the text tokens."""

    def __init__(self, hidden_size: int, num_latents: int = 512, num_heads: int = 8, mlp_ratio: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_size) * hidden_size**-0.5)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_ratio * hidden_size),
            nn.GELU(),
            nn.Linear(mlp_ratio * hidden_size, hidden_size),
        )

    def forward(self, hidden: torch.Tensor, embed_mask: torch.Tensor) -> torch.Tensor:
        latents = self.latents.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        attended, _ = self.attention(hidden, latents, latents, need_weights=False)
        return mean_pool(attended + self.mlp(attended), embed_mask)


class Pooling(nn.Module):
    """One module for every mode, so the encoder and the training stages pool identically."""

    def __init__(self, mode: str = "mean", hidden_size: int | None = None, **latent_kwargs):
        super().__init__()
        self.mode = check_pooling_mode(mode)
        self.latent = None
        if mode == "latent_attention":
            if hidden_size is None:
                raise ValueError("latent_attention pooling needs hidden_size")
            self.latent = LatentAttention(hidden_size, **latent_kwargs)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, embed_mask: torch.Tensor) -> torch.Tensor:
        if self.mode == "mean":
            return mean_pool(hidden, embed_mask)
        if self.mode == "weighted_mean":
            return weighted_mean_pool(hidden, embed_mask)
        if self.mode in ("eos_token", "last_token"):
            return last_token_pool(hidden, embed_mask)
        if self.mode == "bos_token":
            return bos_token_pool(hidden, attention_mask)
        return self.latent(hidden, embed_mask)

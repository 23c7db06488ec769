"""Pooling: every mode against a hand computation on small tensors, with left and right padding and
an instruction prefix; no mode reads padding (or, except bos_token, instruction) states."""

from __future__ import annotations

import math

import pytest
import torch

from llm2vec.pooling import POOLING_MODES, Pooling

HIDDEN = 4

# Two texts in one batch of length 6, as (instruction tokens, text tokens). Row 0: 1 instruction
# token and 3 text tokens; row 1: no instruction and 5 text tokens.
LAYOUT = [(1, 3), (0, 5)]
LENGTH = 6


def _batch(side: str):
    """hidden (2, 6, 4) with NaN padding states, the masks, and per row the list of real positions
    split into (instruction positions, text positions)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(len(LAYOUT), LENGTH, HIDDEN, generator=generator)
    attention_mask = torch.zeros(len(LAYOUT), LENGTH, dtype=torch.long)
    embed_mask = torch.zeros(len(LAYOUT), LENGTH, dtype=torch.long)
    positions = []
    for row, (n_instruction, n_text) in enumerate(LAYOUT):
        start = LENGTH - n_instruction - n_text if side == "left" else 0
        instruction = list(range(start, start + n_instruction))
        text = list(range(start + n_instruction, start + n_instruction + n_text))
        attention_mask[row, instruction + text] = 1
        embed_mask[row, text] = 1
        positions.append((instruction, text))
        padding = [p for p in range(LENGTH) if p not in instruction + text]
        hidden[row, padding] = float("nan")  # any use of a padding state, even times 0, would show
    return hidden, attention_mask, embed_mask, positions


def _by_hand(mode: str, hidden: torch.Tensor, positions) -> torch.Tensor:
    rows = []
    for row, (instruction, text) in enumerate(positions):
        states = [hidden[row, p] for p in text]
        if mode == "mean":
            rows.append(sum(states) / len(states))
        elif mode == "weighted_mean":  # the k-th text token (from 1) weighs k
            weights = [k + 1 for k in range(len(states))]
            rows.append(sum(w * s for w, s in zip(weights, states)) / sum(weights))
        elif mode in ("eos_token", "last_token"):
            rows.append(states[-1])
        elif mode == "bos_token":  # the first real token of the sequence, instruction or not
            rows.append(hidden[row, (instruction + text)[0]])
    return torch.stack(rows)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "eos_token", "last_token", "bos_token"])
def test_pooling_matches_hand_computation(mode, side):
    hidden, attention_mask, embed_mask, positions = _batch(side)
    pooled = Pooling(mode)(hidden, attention_mask, embed_mask)
    torch.testing.assert_close(pooled, _by_hand(mode, hidden, positions))


def test_weighted_mean_weights_by_hand():
    """One row, three text tokens with states 1, 2, 4: weights 1, 2, 3 give (1 + 4 + 12) / 6."""
    hidden = torch.tensor([[[1.0], [2.0], [4.0], [100.0]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert Pooling("weighted_mean")(hidden, mask, mask).item() == pytest.approx(17 / 6)
    assert Pooling("mean")(hidden, mask, mask).item() == pytest.approx(7 / 3)


def _latent_attention_by_hand(pooling: Pooling, hidden: torch.Tensor, positions) -> torch.Tensor:
    """NV-Embed latent attention written out: each text token's state queries the latents (keys =
    values) with the module's own projection weights, per head; + MLP; mean over text tokens."""
    attention = pooling.latent.attention
    heads = attention.num_heads
    head_dim = HIDDEN // heads
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
    latents = pooling.latent.latents
    keys = latents @ w_k.T + b_k
    values = latents @ w_v.T + b_v
    rows = []
    for row, (_, text) in enumerate(positions):
        outputs = []
        for p in text:
            query = hidden[row, p] @ w_q.T + b_q
            per_head = []
            for h in range(heads):
                part = slice(h * head_dim, (h + 1) * head_dim)
                scores = keys[:, part] @ query[part] / math.sqrt(head_dim)
                per_head.append(torch.softmax(scores, dim=0) @ values[:, part])
            attended = attention.out_proj(torch.cat(per_head))
            outputs.append(attended + pooling.latent.mlp(attended))
        rows.append(sum(outputs) / len(outputs))
    return torch.stack(rows)


@pytest.mark.parametrize("side", ["left", "right"])
def test_latent_attention_matches_hand_computation(side):
    torch.manual_seed(0)
    pooling = Pooling("latent_attention", hidden_size=HIDDEN, num_latents=5, num_heads=2).eval()
    hidden, attention_mask, embed_mask, positions = _batch(side)
    with torch.no_grad():
        pooled = pooling(hidden, attention_mask, embed_mask)
        expected = _latent_attention_by_hand(pooling, hidden, positions)
    torch.testing.assert_close(pooled, expected)


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_left_and_right_padding_pool_the_same(mode):
    torch.manual_seed(0)
    pooling = Pooling(mode, hidden_size=HIDDEN, num_heads=2) if mode == "latent_attention" else Pooling(mode)
    left, right = _batch("left"), _batch("right")
    # Same states at the real positions of both layouts.
    for row, ((left_inst, left_text), (right_inst, right_text)) in enumerate(zip(left[3], right[3])):
        left[0][row, left_inst + left_text] = right[0][row, right_inst + right_text]
    with torch.no_grad():
        torch.testing.assert_close(pooling(*left[:3]), pooling(*right[:3]))


def test_pooling_keeps_the_hidden_dtype():
    hidden, attention_mask, embed_mask, _ = _batch("right")
    for mode in ("mean", "weighted_mean", "last_token"):
        assert Pooling(mode)(hidden.bfloat16(), attention_mask, embed_mask).dtype == torch.bfloat16


def test_unknown_mode_names_it_and_the_choices():
    with pytest.raises(ValueError, match=r"unknown pooling_mode 'avg': choose mean, weighted_mean, .*latent_attention"):
        Pooling("avg")


def test_latent_attention_needs_hidden_size():
    with pytest.raises(ValueError, match="latent_attention pooling needs hidden_size"):
        Pooling("latent_attention")


def test_only_latent_attention_has_weights():
    for mode in POOLING_MODES:
        pooling = Pooling(mode, hidden_size=HIDDEN, num_heads=2) if mode == "latent_attention" else Pooling(mode)
        assert (sum(p.numel() for p in pooling.parameters()) > 0) == (mode == "latent_attention")

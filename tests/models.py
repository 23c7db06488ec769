"""Shared helpers for the core tests: the tiny decoders, the attention implementations this machine
can run, and padded batches built by hand (so the tests do not trust the code under test to pad)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from transformers.utils import is_flash_attn_2_available

from llm2vec.loading import TINY_ARCHITECTURES, load_decoder

# LLM2VEC_TEST_DEVICE=cuda runs the tiny-model tests on a GPU (fp32, as on the CPU): the same
# assertions for the CUDA kernels of every attention implementation.
TEST_DEVICE = os.environ.get("LLM2VEC_TEST_DEVICE", "cpu")
ARCHITECTURES = tuple(TINY_ARCHITECTURES)
SLIDING_ARCHITECTURES = tuple(a for a, extra in TINY_ARCHITECTURES.items() if extra.get("sliding_window"))

# transformers itself refuses these combinations; every other one must work.
UNSUPPORTED = {("gemma2", "sdpa"): "transformers has no sdpa for Gemma2 (attention logit softcapping)"}


def _flash_skip() -> str | None:
    if not torch.cuda.is_available():
        return "flash_attention_2 needs a CUDA GPU"
    if not is_flash_attn_2_available():
        return "flash_attention_2 needs the flash-attn package"
    return None


def _flex_skip() -> str | None:
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return "this torch has no flex_attention"
    return None


# eager and sdpa run everywhere. flex compiles its kernel (30-70 s on 2 CPU cores), so it runs
# with the slow tests; flash needs a GPU and flash-attn.
ATTENTION = [
    "eager",
    "sdpa",
    pytest.param("flex_attention", marks=[pytest.mark.slow, pytest.mark.skipif(_flex_skip() is not None, reason=str(_flex_skip()))]),
    pytest.param("flash_attention_2", marks=pytest.mark.skipif(_flash_skip() is not None, reason=str(_flash_skip()))),
]


def load_tiny(architecture: str, attention: str = "sdpa", with_lm_head: bool = False):
    """(model in eval mode, tokenizer) of `tiny-random-<architecture>` in fp32."""
    if (architecture, attention) in UNSUPPORTED:
        pytest.skip(UNSUPPORTED[architecture, attention])
    kwargs = {"attn_implementation": attention}
    if attention == "flash_attention_2":
        kwargs.update(dtype=torch.bfloat16, device_map="cuda")
    model, tokenizer = load_decoder(f"tiny-random-{architecture}", with_lm_head=with_lm_head, **kwargs)
    assert model.config._attn_implementation == attention
    if attention != "flash_attention_2":
        model.to(TEST_DEVICE)
    return model.eval(), tokenizer


def random_ids(lengths: list[int], seed: int = 0, vocab: int = 40000) -> list[torch.Tensor]:
    """One 1D tensor of ordinary token ids per length (ids >= 100 avoid special tokens)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(100, vocab, (n,), generator=generator) for n in lengths]


def pad_by_hand(sequences: list[torch.Tensor], side: str, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and position_ids (counting real tokens only) of a padded batch."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(length - len(sequence), length) if side == "left" else slice(0, len(sequence))
        ids[row, span] = sequence
        mask[row, span] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


def real_rows(padded: torch.Tensor, mask: torch.Tensor, row: int) -> torch.Tensor:
    """The states of row `row` at its real (non-padding) positions."""
    return padded[row][mask[row].bool()]


def hidden_states(model, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """Last hidden states of a bare decoder, without gradients, on the model's device, as fp32 CPU."""
    device = next(model.parameters()).device
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    with torch.no_grad():
        return model(input_ids=input_ids.to(device), **kwargs).last_hidden_state.float().cpu()

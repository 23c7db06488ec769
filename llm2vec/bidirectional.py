"""Turn causal attention off (and on again) for any transformers decoder.

One mechanism for every architecture that uses transformers' standard masking interface
(Llama, Mistral, Gemma 1-3, Qwen2/3, Phi3, ...), instead of a subclass per architecture:

1. A forward pre-hook on the decoder backbone replaces the 2D padding mask by a 4D *bidirectional*
   mask built with transformers' own `create_bidirectional_mask`, in whatever format the active
   attention implementation wants (additive float for eager, bool for sdpa, BlockMask for flex,
   2D for flash). The backbone's `create_causal_mask` / `create_sliding_window_causal_mask` return
   a 4D mask unchanged, so every layer type (full and sliding) gets full attention.
2. Every attention module gets `is_causal = False` (sdpa and flash fall back to `is_causal` when
   no mask is materialised: the bug behind the official library's causal fallback for unpadded
   batches) and `sliding_window = None` (flash applies the window itself).

The hook materialises the mask even without padding: a `None` mask would let the backbone build
its usual causal mask. Packed rows (`llm2vec.packing`) get a block-diagonal mask from
`block_diagonal_mask`, which the hook passes on like any prepared mask.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask, packed_sequence_mask_function

from llm2vec.packing import PACKABLE_ATTENTION

_STATE = "_llm2vec_bidirectional"


def backbone_of(model: nn.Module) -> nn.Module:
    """The decoder stack (`LlamaModel` inside `LlamaForCausalLM`, or the model itself)."""
    # A peft wrapper: look through it. PeftModel.forward calls `get_base_model()` directly, so a hook
    # on its `base_model` (the LoraModel) would never run.
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, "base_model", model)


def is_bidirectional(model: nn.Module) -> bool:
    return getattr(backbone_of(model), _STATE, None) is not None


def enable_bidirectional(model: nn.Module) -> nn.Module:
    """Make every attention layer of `model` attend to all (non-padding) tokens. Idempotent."""
    backbone = backbone_of(model)
    if getattr(backbone, _STATE, None) is not None:
        return model
    saved = []
    for module in backbone.modules():
        if hasattr(module, "is_causal") or hasattr(module, "sliding_window"):
            saved.append((module, getattr(module, "is_causal", None), getattr(module, "sliding_window", None)))
            if hasattr(module, "is_causal"):
                module.is_causal = False
            if hasattr(module, "sliding_window"):
                module.sliding_window = None
    handle = backbone.register_forward_pre_hook(_bidirectional_mask_hook, with_kwargs=True)
    setattr(backbone, _STATE, (handle, saved))
    return model


def disable_bidirectional(model: nn.Module) -> nn.Module:
    """Undo `enable_bidirectional`: the model is causal again, exactly as loaded."""
    backbone = backbone_of(model)
    state = getattr(backbone, _STATE, None)
    if state is None:
        return model
    handle, saved = state
    handle.remove()
    for module, is_causal, sliding_window in saved:
        if is_causal is not None:
            module.is_causal = is_causal
        if hasattr(module, "sliding_window"):
            module.sliding_window = sliding_window
    setattr(backbone, _STATE, None)
    return model


def _bidirectional_mask_hook(module: nn.Module, args: tuple, kwargs: dict):
    args = list(args)
    # The backbones' signature is (input_ids, attention_mask, ...): accept both call styles.
    if "attention_mask" in kwargs or len(args) < 2:
        padding_mask = kwargs.get("attention_mask")
    else:
        padding_mask = args[1]
    if padding_mask is not None and (not isinstance(padding_mask, torch.Tensor) or padding_mask.dim() != 2):
        return None  # an already prepared (4D, dict, BlockMask) mask is the caller's choice
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        embeds = _embeds_like(module, kwargs.get("input_ids", args[0] if args else None))
    mask = create_bidirectional_mask(
        config=module.config,
        inputs_embeds=embeds,
        attention_mask=padding_mask,
        allow_is_bidirectional_skip=False,
    )
    if mask is None:  # flash attention without padding: no mask, `is_causal=False` does the rest
        return None
    if "attention_mask" in kwargs or len(args) < 2:
        kwargs["attention_mask"] = mask
    else:
        args[1] = mask
    return tuple(args), kwargs


def block_diagonal_mask(model: nn.Module, input_ids: torch.Tensor, text_numbers: torch.Tensor):
    """The attention mask of packed rows (`llm2vec.packing`: `text_numbers` is 1, 2, ... per text, 0
    for padding): each text attends to all of itself and to nothing else. Padding is numbered as one
    more text, so no query is left without a key. A prepared mask: the hook passes it on unchanged."""
    backbone = backbone_of(model)
    implementation = backbone.config._attn_implementation
    if implementation not in PACKABLE_ATTENTION:
        raise ValueError(f"packed sequences need {', '.join(PACKABLE_ATTENTION)} attention, not {implementation}")
    segments = text_numbers.masked_fill(text_numbers == 0, int(text_numbers.max()) + 1)
    return create_bidirectional_mask(
        config=backbone.config,
        inputs_embeds=_embeds_like(backbone, input_ids),
        attention_mask=None,
        and_mask_function=packed_sequence_mask_function(segments),
        allow_is_bidirectional_skip=False,
    )


def _embeds_like(backbone: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """What the mask builders read of the input embeddings (shape, dtype, device), without embedding:
    a zero-stride view costs no memory."""
    weight = backbone.get_input_embeddings().weight
    embeds = torch.empty((), dtype=weight.dtype, device=weight.device).expand(*input_ids.shape, 1)
    if torch.is_autocast_enabled(weight.device.type):
        embeds = embeds.to(torch.get_autocast_dtype(weight.device.type))
    return embeds

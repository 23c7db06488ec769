"""Bidirectional attention, one mechanism for every decoder and attention implementation.

Bidirectional: the state of token i changes when a later token j > i changes. Causal (never
enabled, or disabled again): it does not. Padding never changes a real token's state, whether the
text is alone (batch of 1, no padding, no mask at all) or inside a left- or right-padded batch.
The official library fell back to causal attention for unpadded batches and stayed causal for
Qwen2 under sdpa; the first test catches both.
"""

from __future__ import annotations

import pytest
import torch
from models import (
    ARCHITECTURES,
    ATTENTION,
    SLIDING_ARCHITECTURES,
    hidden_states,
    load_tiny,
    pad_by_hand,
    random_ids,
    real_rows,
)
from peft import LoraConfig, get_peft_model

from llm2vec.bidirectional import backbone_of, disable_bidirectional, enable_bidirectional, is_bidirectional
from llm2vec.loading import load_decoder

FP32_ATOL = 1e-5


def _with_last_token_changed(ids: torch.Tensor) -> torch.Tensor:
    changed = ids.clone()
    changed[0, -1] = 7 if ids[0, -1] != 7 else 8
    return changed


def _per_position_change(model, ids: torch.Tensor, changed: torch.Tensor, **kwargs) -> torch.Tensor:
    """How much each position's state moves (max abs) when `ids` becomes `changed`."""
    return (hidden_states(model, ids, **kwargs) - hidden_states(model, changed, **kwargs))[0].abs().amax(dim=-1)


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_later_token_changes_earlier_states_only_when_bidirectional(architecture, attention):
    model, _ = load_tiny(architecture, attention)
    ids = random_ids([10])[0].unsqueeze(0)
    changed = _with_last_token_changed(ids)

    causal = _per_position_change(model, ids, changed)
    assert causal[:-1].max() == 0, "the causal model let an earlier token see a later one"

    enable_bidirectional(model)
    # An unpadded batch of 1, with no mask and with an all-ones mask: where the official library
    # silently stayed causal.
    for mask in (None, torch.ones_like(ids)):
        bidirectional = _per_position_change(model, ids, changed, attention_mask=mask)
        assert (bidirectional[:-1] > 1e-4).all(), f"earlier tokens did not see the last one (mask={mask})"

    disable_bidirectional(model)
    assert _per_position_change(model, ids, changed)[:-1].max() == 0, "disable_bidirectional left it bidirectional"


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("architecture", SLIDING_ARCHITECTURES)
def test_sliding_window_does_not_restrict_bidirectional_attention(architecture, attention):
    """The tiny models have sliding_window=4; their first layer is a sliding-window layer."""
    model, _ = load_tiny(architecture, attention)
    assert model.config.sliding_window == 4
    ids = random_ids([12])[0].unsqueeze(0)
    far = 10  # more than 4 positions after token 0

    def first_layer(input_ids):
        with torch.no_grad():
            output = model(input_ids=input_ids.to(model.device), output_hidden_states=True)
        return output.hidden_states[1][0].float().cpu()

    def change(position):
        changed = ids.clone()
        changed[0, position] = 7
        return changed

    # The window is real in the causal model: token 11 does not see token 0 after one layer...
    assert torch.equal(first_layer(ids)[11], first_layer(change(0))[11]), "the tiny model's window does not bite"
    enable_bidirectional(model)
    # ...but bidirectional attention sees across the whole text, both ways.
    assert (first_layer(ids)[0] - first_layer(change(far))[0]).abs().max() > 1e-4, "token 0 did not see token 10"
    assert (first_layer(ids)[11] - first_layer(change(0))[11]).abs().max() > 1e-4, "token 11 did not see token 0"


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_padding_never_changes_real_tokens(architecture, attention, bidirectional):
    model, _ = load_tiny(architecture, attention)
    if bidirectional:
        enable_bidirectional(model)
    texts = random_ids([9, 4, 12, 7], seed=1)
    alone = [hidden_states(model, t.unsqueeze(0))[0] for t in texts]  # no padding, no mask at all
    atol = FP32_ATOL if attention != "flash_attention_2" else 2e-2  # flash runs in bf16
    for side in ("left", "right"):
        batch = pad_by_hand(texts, side, pad_id=3)
        padded = hidden_states(model, **batch)
        for row, expected in enumerate(alone):
            got = real_rows(padded, batch["attention_mask"], row)
            torch.testing.assert_close(got, expected, atol=atol, rtol=atol, msg=lambda m: f"{side} padding, row {row}: {m}")


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_batch_without_padding_is_bidirectional(architecture):
    """Several texts of the same length: a mask of ones, and nothing for the hook to pad."""
    model, _ = load_tiny(architecture, "sdpa")
    enable_bidirectional(model)
    ids = torch.stack(random_ids([8, 8, 8], seed=2))
    changed = ids.clone()
    changed[:, -1] = 7
    moved = (hidden_states(model, ids, attention_mask=torch.ones_like(ids)) -
             hidden_states(model, changed, attention_mask=torch.ones_like(ids))).abs().amax(dim=-1)
    assert (moved[:, :-1] > 1e-4).all()


def test_enable_is_idempotent_and_disable_restores_the_loaded_model():
    model, _ = load_tiny("mistral", "sdpa")
    attention_modules = [m for m in backbone_of(model).modules() if hasattr(m, "is_causal")]
    before = [(m.is_causal, getattr(m, "sliding_window", None)) for m in attention_modules]
    ids = torch.stack(random_ids([6, 6], seed=3))
    causal = hidden_states(model, ids)

    enable_bidirectional(model)
    enable_bidirectional(model)  # a second call changes nothing, and one disable undoes both
    assert is_bidirectional(model)
    assert all(not m.is_causal and getattr(m, "sliding_window", None) is None for m in attention_modules)
    assert not torch.equal(hidden_states(model, ids), causal)

    disable_bidirectional(model)
    assert not is_bidirectional(model)
    assert [(m.is_causal, getattr(m, "sliding_window", None)) for m in attention_modules] == before
    assert torch.equal(hidden_states(model, ids), causal)


def test_causal_lm_and_peft_wrapped_models_become_bidirectional():
    """MNTP trains the *ForCausalLM model through a peft wrapper: both must be reachable."""
    model, _ = load_tiny("qwen2", "sdpa", with_lm_head=True)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert backbone_of(peft_model) is model.model
    ids = random_ids([8], seed=4)[0].unsqueeze(0)
    changed = _with_last_token_changed(ids)

    def first_logits(input_ids):
        with torch.no_grad():
            return peft_model(input_ids=input_ids.to(model.device)).logits[0, 0]

    assert torch.equal(first_logits(ids), first_logits(changed))
    enable_bidirectional(peft_model)
    assert is_bidirectional(model) and is_bidirectional(peft_model)
    assert (first_logits(ids) - first_logits(changed)).abs().max() > 1e-4


def test_keyword_and_positional_masks_are_both_replaced():
    """The hook must see the mask however the backbone is called (the LM head passes keywords)."""
    model, _ = load_tiny("llama", "eager")
    enable_bidirectional(model)
    ids = torch.stack(random_ids([6, 6], seed=5)).to(model.device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        positional = model(ids, mask).last_hidden_state
        keyword = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(positional, keyword, atol=0, rtol=0)
    changed = ids.clone()
    changed[:, -1] = 7
    with torch.no_grad():
        moved = model(changed, mask).last_hidden_state
    assert (positional[:, 0] - moved[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("architecture", ["llama", "gemma3_text"])
def test_bidirectional_under_bf16_autocast(architecture):
    """Lightning's bf16-mixed runs the fp32 model under autocast: the mask must follow."""
    model, _ = load_tiny(architecture, "eager")
    enable_bidirectional(model)
    texts = random_ids([9, 5], seed=6)
    batch = pad_by_hand(texts, "left", pad_id=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded = hidden_states(model, **batch)
        alone = hidden_states(model, texts[1].unsqueeze(0))[0]
        changed = texts[1].clone()
        changed[-1] = 7
        moved = hidden_states(model, changed.unsqueeze(0))[0]
    torch.testing.assert_close(real_rows(padded, batch["attention_mask"], 1), alone, atol=5e-2, rtol=5e-2)
    assert (alone[0] - moved[0]).abs().max() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_weights_bidirectional_and_padding_invariant(name, attention):
    model, tokenizer = load_decoder(name, attn_implementation=attention)
    model.eval()
    texts = ["A man is playing a large flute on the stage.", "A dog runs.", "Two women are sitting on a bench."]
    encoded = [torch.tensor(tokenizer(t)["input_ids"]) for t in texts]
    ids = encoded[0].unsqueeze(0)
    changed = _with_last_token_changed(ids)
    assert _per_position_change(model, ids, changed)[:-1].max() == 0

    enable_bidirectional(model)
    assert (_per_position_change(model, ids, changed)[:-1] > 1e-3).all()
    alone = [hidden_states(model, t.unsqueeze(0))[0] for t in encoded]
    for side in ("left", "right"):
        batch = pad_by_hand(encoded, side, pad_id=tokenizer.pad_token_id)
        padded = hidden_states(model, **batch)
        for row, expected in enumerate(alone):
            got = real_rows(padded, batch["attention_mask"], row)
            scale = expected.abs().max()
            torch.testing.assert_close(got / scale, expected / scale, atol=1e-4, rtol=0)

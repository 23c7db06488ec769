"""MNTP masking and the shifted loss, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llm2vec.loading import load_tokenizer, resolve_weights
from llm2vec.losses import masked_next_token_loss
from llm2vec.masking import IGNORE_INDEX, MNTPMasking, mask_token_id

MASK = 99


def test_all_mask_masks_every_eligible_token_and_labels_it():
    masking = MNTPMasking(MASK, vocab_size=100, mask_ratio=1.0, mask_strategy="all_mask", special_token_ids=(2,))
    input_ids = torch.tensor([[5, 6, 2, 7, 8, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0]])  # the last position is padding
    masked, labels = masking(input_ids, attention_mask)
    # position 0 (nothing precedes it), the special token 2 and padding are never masked
    assert masked.tolist() == [[5, MASK, 2, MASK, MASK, 0]]
    assert labels.tolist() == [[IGNORE_INDEX, 6, IGNORE_INDEX, 7, 8, IGNORE_INDEX]]


def test_mask_ratio_is_the_fraction_of_masked_tokens():
    masking = MNTPMasking(MASK, vocab_size=100, mask_ratio=0.2, mask_strategy="all_mask")
    input_ids = torch.randint(3, 90, (64, 257), generator=torch.Generator().manual_seed(0))
    _, labels = masking(input_ids, generator=torch.Generator().manual_seed(1))
    fraction = (labels[:, 1:] != IGNORE_INDEX).float().mean().item()
    assert abs(fraction - 0.2) < 0.01
    assert (labels[:, 0] == IGNORE_INDEX).all()


def test_bert_strategy_splits_masked_tokens_80_10_10():
    masking = MNTPMasking(MASK, vocab_size=1000, mask_ratio=0.5, mask_strategy="bert")
    input_ids = torch.randint(0, 1000, (64, 512), generator=torch.Generator().manual_seed(0))
    input_ids[input_ids == MASK] = 1
    masked, labels = masking(input_ids, generator=torch.Generator().manual_seed(1))
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], input_ids[selected])  # every selected token is predicted
    to_mask = (masked[selected] == MASK).float().mean().item()
    unchanged = (masked[selected] == input_ids[selected]).float().mean().item()
    assert abs(to_mask - 0.8) < 0.01
    assert abs(unchanged - (0.1 + 0.1 / 1000)) < 0.01  # kept, or replaced by chance with itself
    assert torch.equal(masked[~selected], input_ids[~selected])  # nothing else changes


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"mask_strategy": "random"}, "unknown mask_strategy 'random': choose bert, all_mask"),
        ({"mask_ratio": 1.5}, "mask_ratio 1.5 is out of range"),
        ({"mask_ratio": 0}, "mask_ratio 0 is out of range"),
    ],
)
def test_bad_values_fail_with_a_message_naming_them(arguments, message):
    with pytest.raises(ValueError, match=message):
        MNTPMasking(MASK, vocab_size=100, **arguments)


def test_mask_token_ids():
    tokenizer = load_tokenizer(resolve_weights("tiny-random-llama"))
    assert mask_token_id(tokenizer, "blank", 49152) == tokenizer.convert_tokens_to_ids("_")
    assert mask_token_id(tokenizer, "eos", 49152) == tokenizer.eos_token_id
    assert mask_token_id(tokenizer, "mask", 49152) == 49152  # a new embedding row
    with pytest.raises(ValueError, match="unknown mask_token_type 'unk': choose blank, eos, mask"):
        mask_token_id(tokenizer, "unk", 49152)


def test_the_loss_predicts_a_masked_token_from_the_position_before_it():
    # Three positions with 2-d states; the "LM head" maps them to 2 logits unchanged.
    hidden = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])  # tokens 1 and 2 are masked
    head = nn.Linear(2, 2, bias=False)
    nn.init.eye_(head.weight)
    loss = masked_next_token_loss(hidden, labels, head)
    # position 0 (logits [2, 0]) predicts token 1's label 1; position 1 (logits [0, 1]) predicts label 0
    first = -math.log(math.exp(0) / (math.exp(2) + math.exp(0)))
    second = -math.log(math.exp(0) / (math.exp(0) + math.exp(1)))
    expected = (first + second) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_the_loss_is_a_differentiable_zero_when_nothing_is_masked():
    hidden = torch.randn(1, 3, 2, requires_grad=True)
    loss = masked_next_token_loss(hidden, torch.full((1, 3), IGNORE_INDEX), nn.Linear(2, 2))
    loss.backward()
    assert loss.item() == 0.0 and hidden.grad is not None

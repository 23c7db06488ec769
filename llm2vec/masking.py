"""MNTP masking: pick tokens to hide, replace them, keep their ids as labels.

Masked next-token prediction (the paper's step 2) trains a bidirectional decoder to recover the
hidden tokens. The label of a masked token at position i is predicted from the output at position
i-1, the position a decoder's LM head was pretrained to emit token i from (see
`llm2vec.losses.masked_next_token_loss`). So position 0, which no position precedes, is never masked.
"""

from __future__ import annotations

import torch

MASK_TOKEN_TYPES = ("blank", "eos", "mask")
MASK_STRATEGIES = ("bert", "all_mask")
IGNORE_INDEX = -100  # label of the tokens that are not predicted (cross_entropy's ignore_index)


def check_mask_token_type(mask_token_type: str) -> str:
    if mask_token_type not in MASK_TOKEN_TYPES:
        raise ValueError(f"unknown mask_token_type {mask_token_type!r}: choose {', '.join(MASK_TOKEN_TYPES)}")
    return mask_token_type


def check_mask_strategy(mask_strategy: str) -> str:
    if mask_strategy not in MASK_STRATEGIES:
        raise ValueError(f"unknown mask_strategy {mask_strategy!r}: choose {', '.join(MASK_STRATEGIES)}")
    return mask_strategy


def check_mask_ratio(mask_ratio: float) -> float:
    if not 0 < mask_ratio <= 1:
        raise ValueError(f"mask_ratio {mask_ratio!r} is out of range: choose a fraction in (0, 1]")
    return mask_ratio


def mask_token_id(tokenizer, mask_token_type: str, vocab_size: int) -> int:
    """The id that replaces masked tokens. `blank` is the paper's "_", `eos` the EOS token, `mask` a
    new token: the next free row of an embedding matrix of `vocab_size` rows, which the caller adds
    (`resize_token_embeddings(vocab_size + 1)`). It never occurs in text, so the tokenizer needs no entry."""
    check_mask_token_type(mask_token_type)
    if mask_token_type == "mask":
        return vocab_size
    if mask_token_type == "eos":
        if tokenizer.eos_token_id is None:
            raise ValueError("mask_token_type 'eos': the tokenizer has no EOS token; choose blank or mask")
        return tokenizer.eos_token_id
    ids = tokenizer.encode("_", add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"mask_token_type 'blank': the tokenizer splits '_' into {ids}; choose eos or mask")
    return ids[0]


class MNTPMasking:
    """Mask each eligible token with probability `mask_ratio`.

    `bert`: of the masked tokens, 80% become the mask token, 10% a random token, 10% stay unchanged
    (all are predicted). `all_mask`: every masked token becomes the mask token (the paper's Mistral
    recipe). Eligible: real (attention_mask 1), not special (BOS/EOS/PAD), not the first position.
    """

    def __init__(
        self,
        mask_token_id: int,
        vocab_size: int,
        mask_ratio: float = 0.2,
        mask_strategy: str = "bert",
        special_token_ids: tuple[int, ...] = (),
    ):
        self.mask_token_id = mask_token_id
        self.vocab_size = vocab_size
        self.mask_ratio = check_mask_ratio(mask_ratio)
        self.mask_strategy = check_mask_strategy(mask_strategy)
        self.special_token_ids = tuple(sorted(set(special_token_ids)))

    def eligible(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        allowed = ~torch.isin(input_ids, torch.tensor(self.special_token_ids, device=input_ids.device))
        allowed[:, 0] = False
        if attention_mask is not None:
            allowed &= attention_mask.bool()
        return allowed

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input ids, labels): labels hold the original id at masked positions, -100 elsewhere."""
        device = input_ids.device
        draws = torch.rand(input_ids.shape, device=device, generator=generator)
        masked = (draws < self.mask_ratio) & self.eligible(input_ids, attention_mask)
        labels = torch.where(masked, input_ids, IGNORE_INDEX)
        if self.mask_strategy == "all_mask":
            return input_ids.masked_fill(masked, self.mask_token_id), labels
        # One more draw per token splits the masked ones 80 / 10 / 10.
        split = torch.rand(input_ids.shape, device=device, generator=generator)
        random_ids = torch.randint(self.vocab_size, input_ids.shape, device=device, generator=generator)
        output = torch.where(masked & (split < 0.8), self.mask_token_id, input_ids)
        output = torch.where(masked & (split >= 0.8) & (split < 0.9), random_ids, output)
        return output, labels

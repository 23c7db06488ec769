"""DiffCSE's conditional replaced-token detection (Chuang et al., 2022), an auxiliary loss for SimCSE.

A generator edits each sentence: a share of its text tokens is masked and each masked token replaced
by the generator's most likely token other than the mask token (DiffCSE's argmax; where it guesses
the original, nothing is replaced). A discriminator reads the edited sentence together with the
original sentence's embedding and tells, token by token, which ones were replaced. The task is
easier the more the embedding says about the original wording, so its gradient asks the embedding to
be sensitive to the edits that dropout views are not trained to notice. DiffCSE reports STS-B test
80.59 against unsupervised SimCSE's 76.85 on BERT-base, with weight 0.005 and masking ratio 0.3.

Both roles fall to the decoder SimCSE trains, so no second model is held. The generator is the
model SimCSE started from, its adapter disabled (`SimCSE` runs it without gradients or dropout):
after MNTP a masked-next-token predictor, whose output at position i-1 is read through the tied
input embeddings to predict token i. The discriminator is the trained encoder itself, with the
sentence embedding as one more input vector before the edited tokens; a linear map that starts at
zero puts it there, so training starts from the unconditioned task. DiffCSE's generator is a
separate DistilBERT and its discriminator a second BERT.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llm2vec.masking import MNTPMasking


class ReplacedTokenDetection(nn.Module):
    """The edit (`edit`) and the conditioned discriminator's loss (`loss`) for one encoder."""

    def __init__(self, hidden_size: int, mask_token_id: int, vocab_size: int, mask_ratio: float = 0.3,
                 special_token_ids: tuple[int, ...] = ()):
        super().__init__()
        # MNTP's masking says which tokens may be masked; every masked one becomes the mask token.
        self.masking = MNTPMasking(mask_token_id, vocab_size, mask_ratio, "all_mask", special_token_ids)
        self.condition = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.zeros_(self.condition.weight)
        self.head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def maskable(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, embed_mask: torch.Tensor) -> torch.Tensor:
        """MNTP's eligible tokens that are text (not instruction) with a real token before them, the
        position that predicts them (left padding precedes the first)."""
        allowed = self.masking.eligible(input_ids, attention_mask) & embed_mask.bool()
        allowed[:, 1:] &= attention_mask[:, :-1].bool()
        return allowed

    @torch.no_grad()
    def edit(self, features: dict[str, torch.Tensor], predict_states: Callable[[torch.Tensor], torch.Tensor],
             output_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(edited ids, replaced): masked tokens become the generator's argmax. `predict_states`
        maps masked input ids to the generator's last hidden states; `output_embeddings` is its
        (vocabulary, hidden) output matrix."""
        input_ids = features["input_ids"]
        masked = torch.rand(input_ids.shape, device=input_ids.device) < self.masking.mask_ratio
        masked &= self.maskable(input_ids, features["attention_mask"], features["embed_mask"])
        states = predict_states(input_ids.masked_fill(masked, self.masking.mask_token_id))
        predicting = masked[:, 1:]  # position i-1 predicts token i
        scores = states[:, :-1][predicting] @ output_embeddings.T.to(states.dtype)
        # Never the mask token itself: a bidirectional generator reads it in the next input and copies it.
        scores[:, self.masking.mask_token_id] = float("-inf")
        guesses = scores.argmax(dim=-1)
        edited = input_ids.clone()
        edited[:, 1:][predicting] = guesses
        return edited, edited != input_ids

    def loss(self, model: nn.Module, features: dict[str, torch.Tensor], edited: torch.Tensor, replaced: torch.Tensor,
             sentence_embeddings: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of the discriminator over the text tokens of the edited sentences,
        each row read after its sentence's (mapped) embedding."""
        tokens = model.get_input_embeddings()(edited)
        condition = self.condition(sentence_embeddings.to(self.condition.weight.dtype)).to(tokens.dtype)
        inputs = torch.cat([condition[:, None], tokens], dim=1)
        attention = F.pad(features["attention_mask"], (1, 0), value=1)
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        hidden = model(inputs_embeds=inputs, attention_mask=attention, position_ids=positions,
                       use_cache=False).last_hidden_state[:, 1:]
        scored = features["embed_mask"].bool()
        logits = self.head(hidden[scored].to(self.head.weight.dtype)).squeeze(-1)
        return F.binary_cross_entropy_with_logits(logits.float(), replaced[scored].float())

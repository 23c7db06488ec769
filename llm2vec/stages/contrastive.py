"""What the contrastive stages (SimCSE, supervised) share: an encoder with a fresh LoRA adapter, the
contrastive loss, and texts embedded exactly as at inference, packed where the encoder allows it."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from llm2vec.encoder import LLM2Vec
from llm2vec.losses import ContrastiveLoss
from llm2vec.stages.base import TrainingStage, add_lora


class ContrastiveStage(TrainingStage):
    pack_sequences = True  # padding-free batches where the encoder allows them (`embed`)

    def __init__(
        self,
        encoder: LLM2Vec,
        lora: dict,
        optimizer: Callable,
        scheduler: Callable | None = None,
        temperature: float = 0.05,
        gradient_checkpointing: bool = False,
        compile_layers: bool = False,
    ):
        super().__init__(optimizer, scheduler, compile_layers)
        encoder.model = add_lora(encoder.model, lora, gradient_checkpointing)
        self.encoder = encoder
        self.loss = ContrastiveLoss(temperature)

    def embed(self, items: Sequence[str | Sequence[str]]) -> torch.Tensor:
        """Pooled embeddings with gradients, tokenized and pooled exactly as at inference. Packed
        (`llm2vec.packing`) where the encoder allows it: the same embeddings without the padding's compute."""
        features = self.encoder.tokenize(items, pack=self.pack_sequences and self.encoder.can_pack)
        return self.encoder({name: tensor.to(self.device) for name, tensor in features.items()})

"""Supervised contrastive learning (the paper's supervised step): (query, positive, hard negative)
triples, the task instruction on queries only, in-batch and hard negatives, temperature 0.02."""

from __future__ import annotations

from typing import Callable

import torch

from llm2vec.encoder import LLM2Vec
from llm2vec.stages.contrastive import ContrastiveStage


class Supervised(ContrastiveStage):
    def __init__(self, encoder: LLM2Vec, lora: dict | None, optimizer: Callable, scheduler: Callable | None = None,
                 temperature: float = 0.02, **options):
        """ContrastiveStage's arguments; only the default temperature is the supervised step's own."""
        super().__init__(encoder, lora, optimizer, scheduler, temperature, **options)

    def embed_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ([instruction, query] pairs), positives and hard negatives (none: zero rows)."""
        queries = self.embed(batch["query"])
        documents = self.embed(batch["positive"] + (batch["negative"] or []))  # one pass for both
        return queries, documents[: len(queries)], documents[len(queries) :]

    def batch_loss(self, queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return self.loss(queries, positives, negatives if len(negatives) else None)

    def batch_size(self, batch: dict) -> int:
        return len(batch["query"])

"""Supervised contrastive learning (the paper's supervised step): (query, positive, hard negative)
triples, the task instruction on queries only, in-batch and hard negatives, temperature 0.02."""

from __future__ import annotations

from typing import Callable

import torch

from llm2vec.encoder import LLM2Vec
from llm2vec.stages.contrastive import ContrastiveStage


class Supervised(ContrastiveStage):
    def __init__(
        self,
        encoder: LLM2Vec,
        lora: dict,
        optimizer: Callable,
        scheduler: Callable | None = None,
        temperature: float = 0.02,
        gradient_checkpointing: bool = False,
        compile_layers: bool = False,
    ):
        super().__init__(encoder, lora, optimizer, scheduler, temperature, gradient_checkpointing, compile_layers)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        queries = self.embed(batch["query"])  # [instruction, query] pairs
        negatives = batch["negative"] or []
        documents = self.embed(batch["positive"] + negatives)  # one pass for positives and negatives
        positives, negatives = documents[: len(queries)], documents[len(queries) :]
        loss = self.loss(queries, positives, negatives if len(negatives) else None)
        self.log_step(loss, batch_size=len(queries))
        return loss

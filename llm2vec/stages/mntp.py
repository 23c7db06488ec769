"""Masked next-token prediction (the paper's step 2).

Tokens of packed text blocks are masked (`llm2vec.masking`), the bidirectional decoder with a LoRA
adapter reads the masked block, and the LM head predicts each masked token i from position i-1.
The adapter sits on the bare decoder stack, so the saved run directory is an LLM2Vec encoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from peft import PeftModel
from torch import nn

from llm2vec.bidirectional import backbone_of
from llm2vec.encoder import LLM2Vec, is_saved_encoder
from llm2vec.loading import load_decoder
from llm2vec.losses import masked_next_token_loss
from llm2vec.masking import MNTPMasking, check_mask_ratio, check_mask_strategy, check_mask_token_type, mask_token_id
from llm2vec.stages.base import TrainingStage, make_trainable, torch_dtype


class MNTP(TrainingStage):
    def __init__(
        self,
        model_name_or_path: str,
        lora: dict | None,
        optimizer: Callable,
        scheduler: Callable | None = None,
        mask_token_type: str = "blank",
        mask_ratio: float = 0.2,
        mask_strategy: str = "bert",
        pooling_mode: str = "mean",
        max_length: int = 512,
        enable_bidirectional: bool = True,
        gradient_checkpointing: bool = False,
        compile_layers: bool = False,
        dtype: str | None = "bfloat16",
        attn_implementation: str | None = "sdpa",
    ):
        super().__init__(optimizer, scheduler, compile_layers)
        check_mask_token_type(mask_token_type), check_mask_strategy(mask_strategy), check_mask_ratio(mask_ratio)
        if is_saved_encoder(model_name_or_path):
            raise ValueError(
                f"MNTP starts from a base model with its LM head, not a saved encoder ({model_name_or_path!r})"
            )
        causal_lm, tokenizer = load_decoder(
            model_name_or_path, with_lm_head=True, dtype=torch_dtype(dtype), attn_implementation=attn_implementation
        )
        self.vocab_size = causal_lm.get_input_embeddings().num_embeddings
        mask_id = mask_token_id(tokenizer, mask_token_type, self.vocab_size)
        self.adds_mask_token = mask_token_type == "mask"
        if self.adds_mask_token:
            add_mask_embedding(causal_lm)
        self.masking = MNTPMasking(mask_id, self.vocab_size, mask_ratio, mask_strategy, tokenizer.all_special_ids)
        self.lm_head = causal_lm.get_output_embeddings().requires_grad_(False)
        self.logit_softcap = getattr(causal_lm.config, "final_logit_softcapping", None)  # Gemma 2
        backbone = make_trainable(backbone_of(causal_lm), lora, gradient_checkpointing)
        self.encoder = LLM2Vec(
            backbone,
            tokenizer,
            pooling_mode=pooling_mode,
            max_length=max_length,
            enable_bidirectional=enable_bidirectional,
            base_model_name_or_path=model_name_or_path,
        )
        self.encoder.weights_trained = lora is None  # full fine-tuning: save writes the decoder's weights
        self.encoder.pooling.requires_grad_(False)  # MNTP does not pool

    def sharded_root(self) -> nn.Module:
        return self.encoder.model  # training_step calls the backbone itself (the frozen LM head stays whole)

    def token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        input_ids, labels = self.masking(batch["input_ids"], batch["attention_mask"])
        hidden = self.encoder.model(
            input_ids=input_ids, attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        loss = masked_next_token_loss(hidden, labels, self.token_logits)
        self.log_step(loss, batch_size=len(input_ids))
        return loss

    def save(self, path: str | Path) -> Path:
        if self.adds_mask_token:
            # The <mask> row exists for training only: drop it, so the encoder fits the original vocabulary.
            model = self.encoder.model
            decoder = model.get_base_model() if isinstance(model, PeftModel) else model
            decoder.resize_token_embeddings(self.vocab_size)
            self.adds_mask_token = False
        return super().save(path)


def add_mask_embedding(causal_lm: nn.Module) -> None:
    """One more embedding row (and LM head row) for the new <mask> token, set to the mean embedding."""
    rows = causal_lm.get_input_embeddings().num_embeddings
    causal_lm.resize_token_embeddings(rows + 1, mean_resizing=False)
    with torch.no_grad():
        for layer in {causal_lm.get_input_embeddings(), causal_lm.get_output_embeddings()}:
            layer.weight[rows] = layer.weight[:rows].mean(dim=0)

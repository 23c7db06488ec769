"""What the contrastive stages (SimCSE, supervised) share: an encoder with a fresh LoRA adapter (or
all its weights trainable: `lora: null`), the contrastive loss, texts embedded exactly as at inference
(packed where the encoder allows it), and optional gradient caching (`mini_batch_size`,
`llm2vec.gradient_cache`): a large batch's loss and gradients in a mini-batch's memory. The
optimisation stays Lightning's automatic one: the cached step returns one loss whose single backward
gives the whole batch's gradients."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy

from llm2vec.encoder import LLM2Vec
from llm2vec.gradient_cache import cached_loss, split_batch
from llm2vec.losses import ContrastiveLoss
from llm2vec.stages.base import TrainingStage, make_trainable


class ContrastiveStage(TrainingStage):
    """Subclasses say how a batch becomes embeddings (`embed_batch`) and those a loss (`batch_loss`)."""

    pack_sequences = True  # padding-free batches where the encoder allows them (`embed`)

    def __init__(
        self,
        encoder: LLM2Vec,
        lora: dict | None,
        optimizer: Callable,
        scheduler: Callable | None = None,
        temperature: float = 0.05,
        gradient_checkpointing: bool = False,
        compile_layers: bool = False,
        mini_batch_size: int | None = None,
        both_ways: bool = False,
        margin: float = 0.0,
        decoupled: bool = False,
    ):
        if mini_batch_size is not None and mini_batch_size < 1:
            raise ValueError(f"mini_batch_size {mini_batch_size!r} must be a positive number of examples, "
                             "or null (no gradient caching)")
        super().__init__(optimizer, scheduler, compile_layers)
        encoder.model = make_trainable(encoder.model, lora, gradient_checkpointing)
        encoder.weights_trained = lora is None  # full fine-tuning: save writes the decoder's weights
        self.encoder = encoder
        # both_ways: GTE's loss; margin: ArcCSE's angular margin on the positives; decoupled: DCL's
        # partition without the positive (llm2vec.losses)
        self.loss = ContrastiveLoss(temperature, both_ways, margin, decoupled)
        self.mini_batch_size = mini_batch_size  # examples embedded at once; null: the whole batch

    def embed(self, items: Sequence[str | Sequence[str]]) -> torch.Tensor:
        """Pooled embeddings with gradients, tokenized and pooled exactly as at inference. Packed
        (`llm2vec.packing`) where the encoder allows it: the same embeddings without the padding's compute."""
        return self.encoder(self.features(items))

    def features(self, items: Sequence[str | Sequence[str]]) -> dict[str, torch.Tensor]:
        """The texts tokenized as `embed` feeds them to the encoder, on this module's device."""
        features = self.encoder.tokenize(items, pack=self.pack_sequences and self.encoder.can_pack)
        return {name: tensor.to(self.device) for name, tensor in features.items()}

    def embed_batch(self, batch: Any) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def batch_loss(self, *embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        size = self.batch_size(batch)
        if self.mini_batch_size is None or size <= self.mini_batch_size:
            loss = self.batch_loss(*self.embed_batch(batch))
        else:
            loss = cached_loss(self.embed_batch, split_batch(batch, self.mini_batch_size), self.batch_loss,
                               self.trainable_weights())
        self.log_step(loss, batch_size=size)
        return loss

    def on_fit_start(self) -> None:
        # FSDP and DeepSpeed shard gradients in hooks of their own, which the cache's gradients computed
        # outside .grad would bypass: it is tested on one device and with DDP only.
        strategy = self.trainer.strategy
        tested = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy))
        tested = tested and not isinstance(strategy, DeepSpeedStrategy)  # a DDPStrategy subclass
        if self.mini_batch_size is not None and not tested:
            raise ValueError(
                f"mini_batch_size (gradient caching) works with one device or DDP, not {type(strategy).__name__}"
            )
        super().on_fit_start()

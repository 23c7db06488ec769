"""Unsupervised SimCSE (the paper's step 3): each sentence goes through the encoder twice with
different dropout; the two views of a sentence are positives, the other sentences negatives.

The encoder arrives with its earlier adapters merged (e.g. an MNTP run); a fresh LoRA adapter is
trained on top. Pooling is the encoder's own forward, so training pools exactly like inference.

The views' noise is `attention_dropout` (LLM2Vec's: 0.3 on the attention weights) and, with
`hidden_dropout`, BERT's dropout on each layer's attention and MLP outputs as well (SimCSE-BERT's
noise, 0.1), which decoders do not have. On Gemma-3-270M with Wiki1M, hidden dropout 0.1 lost about
a point of STS-B dev at one seed, beside attention dropout 0.3 or 0.1
(experiments/wikipedia_only.md, "Hidden dropout").

With `instruction`, the first view of every sentence carries it ([instruction, sentence]: attended
to, never pooled) and the second does not, so the loss asks for a text's embedding alike with and
without the instruction. Meant to spare an encoder the points an instruction at evaluation costs; on
SmolLM2 with Wiki1M it lost on both counts (README, "Wikipedia only").

With `word_repetition` (a rate, ESimCSE's 0.32), the second view repeats a few of its words
(`llm2vec.augmentation`), so the two views no longer share their length. Which words is drawn from
the run's seed, the step and the sentence: a batch embedded twice (gradient caching) gets the same
views, and a resumed run the same ones as before. On Gemma-3-270M with Wiki1M it tied SimCSE without
it over three seeds (experiments/wikipedia_only.md, "Three more levers").

With `queue_size`, the second views of the latest batches (up to that many, detached) join every
query's negatives: more negatives at no extra compute, a cross-batch memory (Wang et al., 2020, XBM)
in place of a larger batch. By default it holds the trained encoder's own recent embeddings, a few
steps old. The queue travels in checkpoints, so a resumed run sees the same negatives. On
Gemma-3-270M with Wiki1M, behind batches of 32, a queue of 32 tied over three seeds and one of 96
lost 0.25 dev at one seed (experiments/wikipedia_only.md, "A queue of earlier sentences").

With `momentum` (ESimCSE's 0.995; needs `queue_size`), a momentum encoder fills the queue instead,
as in ESimCSE (Wu et al., 2022) and MoCo: the trainable weights' exponential moving average, updated
after every optimizer step, embeds each batch's second views without gradients and with dropout off
(keys free of dropout noise, SimCSE++'s argument for negatives), so the queue's negatives come from
a slowly moving encoder rather than from one that changed under them. One more forward pass a step,
without backward. The average is swapped into the trainable weights for that pass and swapped back,
so no second model is held; it travels in checkpoints. On Gemma-3-270M with Wiki1M (`make run`'s
recipe) a queue of 96 at decay 0.9 lost 0.1 dev and 0.9 test at one seed
(experiments/wikipedia_only.md, "ESimCSE's momentum encoder").

With `projection_head`, the loss compares the two views after SimCSE's MLP (Gao et al., 2021: a
dense layer and tanh over the pooled embedding, freshly initialised, trained with the adapter and
discarded after training, SimCSE's `--mlp_only_train` of its unsupervised BERT runs): the saved
encoder pools without it. On Gemma-3-270M with Wiki1M (`make run`'s recipe) it lost 0.4 dev at one
seed (experiments/wikipedia_only.md, "Four more levers on `make run`'s recipe").

With `off_dropout_negatives`, SimCSE++'s loss (Xu et al., 2023, `llm2vec.losses.off_dropout_loss`):
each sentence also goes through the encoder with every dropout off (a third forward pass, with
gradients), and the negatives are those dropout-free embeddings against each other, so dropout noise
enters the positive pairs only. It replaces the in-batch loss, so it takes no `queue_size`,
`both_ways` or `margin`. The dropout-free pass runs the model in eval mode: no gradient
checkpointing there.
On Gemma-3-270M with Wiki1M (`make run`'s recipe) it lost 0.1 dev at one seed, for 1.5x the minutes
(experiments/wikipedia_only.md, "SimCSE++'s two changes").

With `dimension_loss_weight` (SimCSE++'s 0.1), that times SimCSE++'s dimension-wise contrastive loss
of the two views (`llm2vec.losses.dimension_contrastive_loss`) is added to the loss, at no extra
forward pass. On the same recipe, weight 0.1 tied it (-0.03 dev at one seed; ibid.).

With `decoupled`, DCL's loss: the positive out of the partition (`llm2vec.losses.ContrastiveLoss`).
On Gemma-3-270M with Wiki1M (`make run`'s recipe) it lost 1.8 dev at one seed
(experiments/wikipedia_only.md, "Two combinations, SSCL, DCL and the learning rate's decay").

With `margin` (radians), ArcCSE's angular margin on the positives
(`llm2vec.losses.ContrastiveLoss`). On the same recipe, margins of 0.1 and 0.2 lost 0.13 and 0.25
dev at one seed (experiments/wikipedia_only.md, "LoRA targets").

With `replaced_token_weight` (DiffCSE's 0.005), that times DiffCSE's conditional replaced-token
detection loss (`llm2vec.replaced_tokens`) is added: `replaced_token_ratio` of each sentence's text
tokens are masked (with the `mask_token_type` its MNTP run masked with) and refilled by the model
SimCSE started from (adapter off, dropout off, no gradients); the encoder then reads the edited
sentence after the first view's embedding and tells which tokens were replaced. Two more forward
passes a step (one with gradients); it needs a LoRA adapter (the generator is the model without it),
tied input and output embeddings, and no gradient caching. On Gemma-3-270M with Wiki1M (`make run`'s
recipe, read at layer 13) weight 0.005 gained 0.23 dev and 0.16 test (inconclusive) over three seeds
for 3.8x the SimCSE minutes: `experiment=gemma3_wiki_diffcse` (experiments/wikipedia_only.md,
"DiffCSE's replaced-token detection"). `replaced_token_lr` gives the discriminator's own layers (the
condition map and head) a learning rate of their own; in 30-step probes neither 1e-3 nor 1e-2
brought its loss below the base rate's (ibid.).

With `layer_negatives` (a layer number), SSCL's loss (Chen et al., ACL 2023, "Alleviating
Over-smoothing for Unsupervised Sentence Representation"): both views' states at that intermediate
layer, pooled as the embedding is (through the final norm), join every first view's negatives, each
sentence's own among them, so the trained embedding must move away from what an earlier layer
already says of the same sentence; the loss is the mean of SimCSE's and that one's, as in SSCL's
code (its default: the penultimate layer). The same forward pass, no extra compute but the scores.
On Gemma-3-270M with Wiki1M (`make run`'s recipe, read at layer 13) layer 17 of 18 lost 0.38 dev at
one seed (experiments/wikipedia_only.md, "Two combinations, SSCL, DCL and the learning rate's
decay").
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from llm2vec.augmentation import repeat_words
from llm2vec.encoder import LLM2Vec
from llm2vec.losses import dimension_contrastive_loss, off_dropout_loss
from llm2vec.masking import mask_token_id
from llm2vec.pooling import check_pooling_layers
from llm2vec.replaced_tokens import ReplacedTokenDetection
from llm2vec.stages.base import add_hidden_dropout, gather_from_all_processes, set_attention_dropout
from llm2vec.stages.contrastive import ContrastiveStage


class SimCSE(ContrastiveStage):
    def __init__(
        self,
        encoder: LLM2Vec,
        lora: dict | None,
        optimizer: Callable,
        scheduler: Callable | None = None,
        temperature: float = 0.05,
        attention_dropout: float = 0.3,
        gradient_checkpointing: bool = False,
        compile_layers: bool = False,
        mini_batch_size: int | None = None,
        instruction: str | None = None,
        word_repetition: float = 0.0,
        queue_size: int = 0,
        both_ways: bool = False,
        projection_head: bool = False,
        off_dropout_negatives: bool = False,
        dimension_loss_weight: float = 0.0,
        momentum: float = 0.0,
        hidden_dropout: float = 0.0,
        margin: float = 0.0,
        replaced_token_weight: float = 0.0,
        replaced_token_ratio: float = 0.3,
        replaced_token_lr: float | None = None,
        mask_token_type: str = "blank",
        layer_negatives: int | None = None,
        decoupled: bool = False,
    ):
        if instruction is not None and not instruction.strip():
            raise ValueError("instruction must be a non-empty text, or null (no instruction)")
        if not 0.0 <= word_repetition <= 1.0:
            raise ValueError(f"word_repetition {word_repetition!r} must be a rate between 0 and 1 (0: off)")
        if queue_size < 0:
            raise ValueError(f"queue_size {queue_size!r} must be a number of earlier sentences (0: off)")
        if off_dropout_negatives and (queue_size or both_ways or margin or decoupled):
            raise ValueError("off_dropout_negatives replaces the in-batch loss: it takes no queue_size, both_ways, "
                             "margin or decoupled")
        if dimension_loss_weight < 0:
            raise ValueError(f"dimension_loss_weight {dimension_loss_weight!r} must be a weight >= 0 (0: off)")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum {momentum!r} must be a decay in [0, 1) (0: off)")
        if momentum and not queue_size:
            raise ValueError("momentum fills the queue of negatives: set queue_size too")
        if replaced_token_weight < 0:
            raise ValueError(f"replaced_token_weight {replaced_token_weight!r} must be a weight >= 0 (0: off)")
        if replaced_token_weight and (lora is None or mini_batch_size is not None):
            raise ValueError("replaced_token_weight needs a LoRA adapter (its generator is the model without "
                             "it) and no gradient caching (mini_batch_size)")
        if replaced_token_lr is not None and replaced_token_lr <= 0:
            raise ValueError(f"replaced_token_lr {replaced_token_lr!r} must be a learning rate > 0 (null: the optimizer's)")
        if replaced_token_lr is not None and not replaced_token_weight:
            raise ValueError("replaced_token_lr needs replaced_token_weight > 0 (it trains that loss's own layers)")
        if layer_negatives is not None and off_dropout_negatives:
            raise ValueError("off_dropout_negatives replaces the in-batch loss: it takes no layer_negatives")
        negative_layers = None if layer_negatives is None else layer_set(layer_negatives, encoder)
        super().__init__(encoder, lora, optimizer, scheduler, temperature, gradient_checkpointing, compile_layers,
                         mini_batch_size, both_ways, margin, decoupled)
        set_attention_dropout(encoder.model, attention_dropout)
        add_hidden_dropout(encoder.model, hidden_dropout)
        self.instruction = instruction
        self.word_repetition = word_repetition
        self.queue_size = queue_size
        self.queue: torch.Tensor | None = None  # recent second views, detached, the newest last
        # Outside the encoder, so encoder.save() leaves it behind; checkpoints keep it (trainable).
        self.projection = projection_mlp(encoder.model.config.hidden_size) if projection_head else None
        self.off_dropout_negatives = off_dropout_negatives
        self.dimension_loss_weight = dimension_loss_weight
        self.momentum = momentum
        self.momentum_weights: list[torch.Tensor] | None = None  # the average of trainable_weights()
        self.momentum_keys: torch.Tensor | None = None  # this batch's queue entries (momentum encoder)
        self.replaced_token_weight = replaced_token_weight
        # Outside the encoder like the projection head: trained, checkpointed, not saved with the encoder.
        self.replaced_tokens = replaced_token_detection(encoder, replaced_token_ratio, mask_token_type) \
            if replaced_token_weight else None
        self.replaced_token_lr = replaced_token_lr
        self.layer_negatives = negative_layers  # SSCL's layer as a set of pooled layers

    def training_step(self, batch: list[str], batch_idx: int) -> torch.Tensor:
        if self.momentum:
            self.momentum_keys = self.momentum_embeddings(batch)
        if self.replaced_tokens is None:
            return super().training_step(batch, batch_idx)
        embeddings = self.embed_batch(batch)
        detection = self.replaced_token_loss(batch, embeddings[0])
        loss = self.batch_loss(*embeddings) + self.replaced_token_weight * detection
        self.log("train/replaced_token_loss", detection, batch_size=len(batch), sync_dist=True)
        self.log_step(loss, batch_size=len(batch))
        return loss

    def parameter_groups(self) -> list[nn.Parameter] | list[dict]:
        if self.replaced_token_lr is None:  # set only beside replaced_token_weight (__init__ refuses it alone)
            return super().parameter_groups()
        # Only the detection loss trains the discriminator's own layers, and Adam's steps do not scale
        # with a loss's weight: at the encoder's lr they barely leave their start in a short run.
        own = list(self.replaced_tokens.parameters())
        rest = [p for p in self.trainable_weights() if all(p is not q for q in own)]
        return [{"params": rest}, {"params": own, "lr": self.replaced_token_lr}]

    def replaced_token_loss(self, sentences: list[str], sentence_embeddings: torch.Tensor) -> torch.Tensor:
        """DiffCSE's loss: the sentences edited by the model without the adapter, then told apart by
        the encoder given each sentence's embedding."""
        model = self.encoder.model
        features = {name: tensor.to(self.device) for name, tensor in self.encoder.tokenize(sentences).items()}
        positions = (features["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)  # as the encoder counts them

        def generator_states(masked_ids: torch.Tensor) -> torch.Tensor:
            with model.disable_adapter(), dropout_off(model):
                return model(input_ids=masked_ids, attention_mask=features["attention_mask"], position_ids=positions,
                             use_cache=False).last_hidden_state

        edited, replaced = self.replaced_tokens.edit(features, generator_states, model.get_input_embeddings().weight)
        return self.replaced_tokens.loss(model, features, edited, replaced, sentence_embeddings)

    @torch.no_grad()
    def momentum_embeddings(self, sentences: list[str]) -> torch.Tensor:
        """The second views as the momentum encoder embeds them: averaged weights, dropout off."""
        weights = self.trainable_weights()
        if self.momentum_weights is None:  # the first step: the momentum encoder starts as the encoder
            self.momentum_weights = [p.detach().clone() for p in weights]
        self.momentum_weights = [w.to(p.device) for w, p in zip(self.momentum_weights, weights)]
        views = self.second_views(sentences)
        chunk = self.mini_batch_size or len(views)  # gradient caching's memory bound holds here too
        with weights_swapped(weights, self.momentum_weights), dropout_off(self.encoder.model):
            keys = [self.project(self.embed(views[i : i + chunk])) for i in range(0, len(views), chunk)]
        return torch.cat(keys)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.momentum and self.momentum_weights is not None:
            with torch.no_grad():
                for average, weight in zip(self.momentum_weights, self.trainable_weights()):
                    average.lerp_(weight, 1.0 - self.momentum)

    def embed_batch(self, sentences: list[str]) -> tuple[torch.Tensor, ...]:
        # Both views in one forward pass: dropout masks differ between the two copies of a sentence.
        first_views = sentences if self.instruction is None else [[self.instruction, s] for s in sentences]
        views = first_views + self.second_views(sentences)
        if self.layer_negatives is not None:
            pooled, layer = self.encoder.pool_layer_sets(self.features(views),
                                                         [self.encoder.pooling_layers, self.layer_negatives])
            return *self.project(pooled).chunk(2), self.project(layer)
        first, second = self.project(self.embed(views)).chunk(2)
        if not self.off_dropout_negatives:
            return first, second
        with dropout_off(self.encoder.model):
            plain = self.project(self.embed(sentences))
        return first, second, plain

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return embeddings
        return self.projection(embeddings.to(self.projection[0].weight.dtype))

    def second_views(self, sentences: list[str]) -> list[str]:
        if not self.word_repetition:
            return sentences
        seed = f"{torch.initial_seed()}:{self.global_step}"
        return [repeat_words(s, self.word_repetition, random.Random(f"{seed}:{s}")) for s in sentences]

    def batch_loss(self, first: torch.Tensor, second: torch.Tensor, third: torch.Tensor | None = None) -> torch.Tensor:
        # Called once per training step (with gradient caching too, on the whole batch). `third`: the
        # dropout-free embeddings (off_dropout_negatives) or both views at layer_negatives' layer.
        loss = self.sentence_loss(first, second, third)
        if self.dimension_loss_weight:
            loss = loss + self.dimension_loss_weight * dimension_contrastive_loss(first, second)
        return loss

    def sentence_loss(self, first: torch.Tensor, second: torch.Tensor, third: torch.Tensor | None) -> torch.Tensor:
        if self.off_dropout_negatives:
            return off_dropout_loss(first, second, third, self.loss.temperature)
        loss = self.loss(first, second, memory=self.queue)
        if self.layer_negatives is not None:  # SSCL: the mean of SimCSE's loss and the one with the layer's states
            loss = (loss + self.loss(first, second, negatives=third, memory=self.queue)) / 2
        if self.queue_size:
            recent = (self.momentum_keys if self.momentum else second.detach()).float()
            if self.queue is not None:
                recent = torch.cat([self.queue.to(recent.device), recent])
            self.queue = recent[-self.queue_size :]
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.queue_size:  # every process keeps its own queue
            checkpoint["simcse_queue"] = gather_from_all_processes(None if self.queue is None else self.queue.cpu())
        if self.momentum_weights is not None:  # one copy: every process holds the same weights
            checkpoint["simcse_momentum_weights"] = [w.cpu() for w in self.momentum_weights]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        queues = checkpoint.get("simcse_queue", [])
        self.queue = queues[self.global_rank] if self.queue_size and self.global_rank < len(queues) else None
        self.momentum_weights = checkpoint.get("simcse_momentum_weights") if self.momentum else None

    def batch_size(self, sentences: list[str]) -> int:
        return len(sentences)


def layer_set(layer: int, encoder: LLM2Vec) -> list[int]:
    """`layer_negatives` as a set of layers to pool; one layer, not the encoder's pooled ones."""
    layers = encoder.model.config.num_hidden_layers
    if isinstance(layer, int) and not isinstance(layer, bool) and -layers - 1 <= layer <= layers:
        pooled = check_pooling_layers(layer, layers)
        if pooled != encoder.pooling_layers:
            return pooled
    raise ValueError(f"layer_negatives {layer!r} must be one layer, 0 to {layers} (-1 counts from the end), "
                     f"other than the pooled ones ({encoder.pooling_layers}); null: off")


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode (attention and LoRA dropout off; gradients still flow), then each
    back in the mode it had."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def weights_swapped(weights: list[nn.Parameter], values: list[torch.Tensor]) -> Iterator[None]:
    """`values` copied into `weights` (in place, so compiled layers and optimizers keep their
    tensors), then the weights' own values copied back."""
    with torch.no_grad():
        saved = [w.detach().clone() for w in weights]
        for weight, value in zip(weights, values):
            weight.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, value in zip(weights, saved):
                weight.copy_(value)


def replaced_token_detection(encoder: LLM2Vec, mask_ratio: float, mask_token_type: str) -> ReplacedTokenDetection:
    config = encoder.model.config
    if not getattr(config, "tie_word_embeddings", False):
        raise ValueError("replaced_token_weight reads the generator through its input embeddings: "
                         f"{type(encoder.model).__name__} does not tie them to its LM head")
    vocabulary = encoder.model.get_input_embeddings().num_embeddings
    mask_id = mask_token_id(encoder.tokenizer, mask_token_type, vocabulary)
    if mask_id >= vocabulary:
        raise ValueError("replaced_token_weight: mask_token_type 'mask' is a token MNTP added and dropped; "
                         "choose blank or eos")
    return ReplacedTokenDetection(config.hidden_size, mask_id, vocabulary, mask_ratio,
                                  tuple(encoder.tokenizer.all_special_ids))


def projection_mlp(hidden_size: int) -> nn.Sequential:
    """SimCSE's MLPLayer: dense + tanh, initialised as BERT initialises a new layer (normal, std 0.02)."""
    dense = nn.Linear(hidden_size, hidden_size)
    nn.init.normal_(dense.weight, std=0.02)
    nn.init.zeros_(dense.bias)
    return nn.Sequential(dense, nn.Tanh())

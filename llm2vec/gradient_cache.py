"""Gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): the contrastive loss and gradient of a large batch in the memory of a mini-batch.

Gradient accumulation cannot do this: its negatives stay within each micro-batch. Here the loss
sees the whole batch, but only one mini-batch's activations are ever alive:

1. embed every mini-batch without a graph, recording the random state before each;
2. compute the loss on the cached embeddings, and its gradient with respect to them;
3. re-embed each mini-batch with a graph under its recorded random state (so dropout draws the
   same masks, and the embeddings are the cached ones) and backpropagate the cached gradient.

The chain rule makes the sum of the mini-batches' parameter gradients the full batch's gradient.
The cost is one extra forward pass per step.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

Embed = Callable[[Any], Sequence[Tensor]]  # a mini-batch -> its embeddings (one or several tensors)


class RandomState:
    """The CPU generator's state and, on a GPU, the device's: what dropout draws from (eager and
    compiled kernels alike; inductor takes its seeds from these generators)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def split_batch(batch: list | dict, size: int) -> list:
    """Mini-batches of at most `size` examples of a batch: a list of examples, or a dict of such
    lists (a None value, e.g. absent hard negatives, stays None in every mini-batch)."""
    if isinstance(batch, dict):
        count = len(next(v for v in batch.values() if v is not None))
        return [{k: None if v is None else v[i : i + size] for k, v in batch.items()} for i in range(0, count, size)]
    return [batch[i : i + size] for i in range(0, len(batch), size)]


def cached_loss(
    embed: Embed, mini_batches: Sequence, loss_of: Callable[..., Tensor], parameters: Sequence[Tensor]
) -> Tensor:
    """The loss of the whole batch whose backward gives the parameters the whole batch's gradient,
    computed one mini-batch at a time.

    embed: a mini-batch -> its embeddings, a tuple of tensors (e.g. SimCSE's two views);
    loss_of: the batch's loss from each tuple position concatenated over the mini-batches;
    parameters: the trainable parameters.

    The returned tensor's value is the loss. Its graph holds the last mini-batch only; the earlier
    mini-batches' gradients enter it as constants (`parameter * gradient`), so a single backward
    (Lightning's, with its loss scaling, DDP synchronisation, accumulation and clipping) sees the
    whole gradient at once.
    """
    device = parameters[0].device
    states, cached = [], []
    with torch.no_grad():
        for mini_batch in mini_batches:
            states.append(RandomState(device))
            cached.append([embedding.detach().requires_grad_() for embedding in embed(mini_batch)])
    after = RandomState(device)

    loss = loss_of(*(torch.cat(position) for position in zip(*cached)))
    leaves = [leaf for embeddings in cached for leaf in embeddings]
    # Across processes the loss gathers embeddings with gradients: these are the local ones' gradients
    # of the loss summed over every process, as a plain backward would give them.
    gradients = iter(torch.autograd.grad(loss, leaves, allow_unused=True))
    cached_gradients = [[next(gradients) for _ in embeddings] for embeddings in cached]

    # Parameter gradients of every mini-batch but the last, outside .grad: Lightning zeroes the
    # gradients between training_step and backward, and DDP must not synchronise each one.
    earlier = [torch.zeros_like(p) for p in parameters]
    for mini_batch, state, embedding_gradients in zip(mini_batches[:-1], states, cached_gradients):
        state.restore()
        surrogate = _dot(embed(mini_batch), embedding_gradients)
        with torch.autocast(device.type, enabled=False):  # backward as Lightning runs it: outside autocast
            grads = torch.autograd.grad(surrogate, parameters, allow_unused=True)
        for total, grad in zip(earlier, grads):
            if grad is not None:
                total += grad
    states[-1].restore()
    last = _dot(embed(mini_batches[-1]), cached_gradients[-1])
    after.restore()
    carrier = last + sum((p * total).sum() for p, total in zip(parameters, earlier))  # d/dp = the earlier sum
    return loss.detach() + (carrier - carrier.detach())


def _dot(embeddings: Sequence[Tensor], gradients: Sequence[Tensor | None]) -> Tensor:
    """A scalar whose gradient with respect to each embedding is its cached gradient (None: an
    embedding the loss did not use, such as absent hard negatives)."""
    return sum((e * g).sum() for e, g in zip(embeddings, gradients) if g is not None)

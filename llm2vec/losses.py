"""Training objectives: masked next-token prediction (MNTP) and the contrastive loss (SimCSE, supervised)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from llm2vec.masking import IGNORE_INDEX


def masked_next_token_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
    """Cross-entropy of the masked tokens, each predicted from the position before it.

    hidden: (batch, seq, dim) backbone outputs; labels: (batch, seq), the token id at masked
    positions and -100 elsewhere. The LM head runs on the predicting positions only (~mask_ratio of
    the tokens), not on the whole sequence.
    """
    predicts = labels[:, 1:] != IGNORE_INDEX  # position i-1 predicts the masked token i
    if not predicts.any():  # nothing masked: a zero that keeps the graph (every rank must backward)
        return hidden.sum() * 0.0
    logits = lm_head(hidden[:, :-1][predicts])
    return F.cross_entropy(logits.float(), labels[:, 1:][predicts])


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process (rank order), keeping gradients; itself when not distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(tensor))
    return tensor


def distributed_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class ContrastiveLoss(nn.Module):
    """InfoNCE over cosine similarities with in-batch negatives (and optional hard negatives).

    Query i's positive is `positives[i]`; every other positive and every hard negative of the
    *global* batch is a negative. Documents are gathered across processes with gradients; queries
    stay local, so each process computes its own queries' loss and the usual gradient averaging
    gives the gradient of the global mean. Every process must have the same batch size (drop the
    last incomplete batch). `temperature` is the inverse of the official library's `loss_scale`.

    `memory`: more negatives that carry no gradient and are not gathered, such as the documents of
    earlier batches (SimCSE's `queue_size`); under DDP each process keeps and passes its own.

    `both_ways`: GTE's improved contrastive loss (Li et al., 2023, arXiv 2308.03281). Pair i's
    partition also holds the other queries against query i, and every other query and document
    against document i: three times the in-batch negatives, all with gradients, at no extra
    forward pass. Hard negatives and memory stay on the query side. In unsupervised SimCSE on
    Gemma-3-270M (Wiki1M, temperature 0.1) it lost 0.3 dev at one seed
    (experiments/wikipedia_only.md, "GTE's two-way loss").

    `margin` (radians): ArcCSE's additive angular margin (Zhang et al., ACL 2022, "ArcCon"; ArcFace's
    margin): each positive's cosine cos(a) is scored as cos(a + margin), so a positive must beat the
    negatives by an angle, and a loss that in-batch negatives have made easy keeps teaching.

    `decoupled`: the decoupled contrastive loss (Yeh et al., ECCV 2022, "DCL"): the positive leaves the
    partition, -s(i, i)/t + logsumexp over the negatives alone, so a pair already scored well no
    longer scales down its negatives' gradient, which InfoNCE's does most in small batches. It can
    be negative. In unsupervised SimCSE on Gemma-3-270M (Wiki1M, batches of 32) it lost 1.8 dev at
    one seed (experiments/wikipedia_only.md, "Two combinations, SSCL, DCL and the learning rate's decay").
    """

    def __init__(self, temperature: float = 0.05, both_ways: bool = False, margin: float = 0.0,
                 decoupled: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature {temperature!r} must be positive")
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"margin {margin!r} must be an angle in radians in [0, pi/2) (0: off)")
        self.temperature = temperature
        self.both_ways = both_ways
        self.margin = margin
        self.decoupled = decoupled

    def forward(
        self,
        queries: torch.Tensor,
        positives: torch.Tensor,
        negatives: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # Unit vectors, each normalised once: the scores are cosine similarities.
        queries, positives = unit(queries), unit(positives)
        all_positives = gather_with_grad(positives)
        documents = [all_positives]
        if negatives is not None:
            documents.append(unit(gather_with_grad(negatives)))
        if memory is not None:
            documents.append(unit(memory.detach().to(queries.device)))
        scores = queries @ torch.cat(documents).T
        targets = torch.arange(len(queries), device=queries.device) + distributed_rank() * len(queries)
        if self.margin:
            scores = with_angular_margin(scores, targets, self.margin)
        if self.both_ways:
            other_side = other_side_scores(queries, positives, all_positives, targets)
            scores = torch.cat([scores, other_side], dim=1)
        if self.decoupled:
            return decoupled_loss(scores / self.temperature, targets)
        return F.cross_entropy(scores / self.temperature, targets)


def decoupled_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """DCL: the mean over rows of -logits[target] + logsumexp of the row's other logits, in float32
    (as autocast runs cross_entropy)."""
    logits = logits.float()
    rows = torch.arange(len(logits), device=logits.device)
    negatives = logits.index_put((rows, targets), torch.tensor(float("-inf"), device=logits.device))
    return (torch.logsumexp(negatives, dim=1) - logits[rows, targets]).mean()


def with_angular_margin(scores: torch.Tensor, targets: torch.Tensor, margin: float) -> torch.Tensor:
    """Cosines with each row's target cos(a) replaced by cos(a + margin), the angle capped at pi (where
    cos stops falling); a new tensor. Cosines are clamped inside (-1, 1), where acos has a gradient."""
    rows = torch.arange(len(scores), device=scores.device)
    angles = torch.acos(scores[rows, targets].clamp(-1 + 1e-6, 1 - 1e-6))
    return scores.index_put((rows, targets), torch.cos((angles + margin).clamp(max=math.pi)))


def other_side_scores(queries: torch.Tensor, positives: torch.Tensor, all_positives: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
    """GTE's added candidates of each local pair i (unit vectors in, cosines out): query i against the
    other queries, document i against every other query and the other documents (the global batch's).
    Each pair itself is masked out: a text is not its own negative, and the positive pair is scored once."""
    all_queries = gather_with_grad(queries)
    own = F.one_hot(targets, len(all_queries)).bool()
    scores = (queries @ all_queries.T, positives @ all_queries.T, positives @ all_positives.T)
    return torch.cat([m.masked_fill(own, float("-inf")) for m in scores], dim=1)


def unit(embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeddings.float(), dim=-1)


def off_dropout_loss(first: torch.Tensor, second: torch.Tensor, plain: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCSE++'s loss (Xu et al., 2023, arXiv 2305.13192, "off-dropout sampling"): the positive pair
    is sentence i's two dropout views, its negatives are i against every other sentence j with
    dropout off on both sides (`plain`), so the dropout noise enters the positives only.

    Per sentence: -cos(first_i, second_i)/t + logsumexp over {cos(first_i, second_i)} and
    {cos(plain_i, plain_j) : j != i} divided by t. Across processes the plain embeddings are gathered
    (with gradients): every sentence of the global batch is a negative, as in ContrastiveLoss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature {temperature!r} must be positive")
    first, second, plain = unit(first), unit(second), unit(plain)
    positive = (first * second).sum(dim=-1, keepdim=True)
    all_plain = gather_with_grad(plain)
    own = torch.arange(len(plain), device=plain.device) + distributed_rank() * len(plain)
    negatives = (plain @ all_plain.T).masked_fill(F.one_hot(own, len(all_plain)).bool(), float("-inf"))
    scores = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(scores, torch.zeros_like(own))  # the positive is column 0


DIMENSION_TEMPERATURE = 10.0  # SimCSE++'s: the correlations (in [-1, 1]) divided by 10


def dimension_contrastive_loss(first: torch.Tensor, second: torch.Tensor,
                               temperature: float = DIMENSION_TEMPERATURE) -> torch.Tensor:
    """SimCSE++'s dimension-wise contrastive loss (Xu et al., 2023, arXiv 2305.13192, "DCL"): each
    embedding dimension is an instance. Dimensions are standardised over the batch (batch norm
    without affine weights or running statistics), scored by their correlation across the two views,
    and dimension k of the first view must pick dimension k of the second among all: a push towards
    decorrelated dimensions, against the rank collapse in-batch contrast allows. Over the local batch
    (under DDP each process its own)."""
    first = F.batch_norm(first.float(), None, None, training=True)
    second = F.batch_norm(second.float(), None, None, training=True)
    correlations = first.T @ second / len(first)
    targets = torch.arange(correlations.shape[0], device=correlations.device)
    return F.cross_entropy(correlations / temperature, targets)

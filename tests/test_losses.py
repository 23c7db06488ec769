"""The contrastive loss against hand-computed values, and its cross-process gather (2 CPU processes)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm2vec.losses import ContrastiveLoss, dimension_contrastive_loss, gather_with_grad, off_dropout_loss, unit


def cross_entropy(scores: list[float], target: int) -> float:
    return -scores[target] + math.log(sum(math.exp(s) for s in scores))


def test_in_batch_negatives_hand_computed():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positives = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cosines: q0.p0 = 1, q0.p1 = 1/sqrt2, q1.p0 = 0, q1.p1 = 1/sqrt2; temperature 0.5 doubles them
    r = 1 / math.sqrt(2)
    expected = (cross_entropy([2, 2 * r], 0) + cross_entropy([0, 2 * r], 1)) / 2
    assert ContrastiveLoss(temperature=0.5)(queries, positives).item() == pytest.approx(expected, rel=1e-6)


def test_hard_negatives_join_the_candidates_hand_computed():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    r = 1 / math.sqrt(2)
    # candidates per query: p0, p1, n0, n1 (cosines / 0.05)
    row0 = [1 / 0.05, r / 0.05, 0.0, -1 / 0.05]
    row1 = [0.0, r / 0.05, 1 / 0.05, 0.0]
    expected = (cross_entropy(row0, 0) + cross_entropy(row1, 1)) / 2
    loss = ContrastiveLoss(temperature=0.05)(queries, positives, negatives)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_memory_joins_the_candidates_hand_computed_and_takes_no_gradient():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    memory = torch.tensor([[0.0, 3.0], [-2.0, 0.0], [1.0, 1.0]], requires_grad=True)
    r = 1 / math.sqrt(2)
    # candidates per query: p0, p1, then the memory's three (cosines / 0.1)
    row0 = [1 / 0.1, r / 0.1, 0.0, -1 / 0.1, r / 0.1]
    row1 = [0.0, r / 0.1, 1 / 0.1, 0.0, r / 0.1]
    expected = (cross_entropy(row0, 0) + cross_entropy(row1, 1)) / 2
    loss = ContrastiveLoss(temperature=0.1)(queries, positives, memory=memory)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert queries.grad is not None and memory.grad is None


def test_gather_is_the_identity_without_distributed():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature 0 must be positive"):
        ContrastiveLoss(temperature=0)


def test_margin_scores_each_positive_at_its_angle_plus_the_margin_hand_computed():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positives = torch.tensor([[math.sqrt(3), 1.0], [1.0, 1.0]])
    # angles: q0.p0 = pi/6, q0.p1 = pi/4, q1.p0 = pi/3, q1.p1 = pi/4; the margin pi/12 scores the
    # positives (q0.p0, q1.p1) at pi/4 and pi/3, the negatives as they are
    r, m = 1 / math.sqrt(2), math.pi / 12
    row0 = [math.cos(math.pi / 6 + m), r]
    row1 = [0.5, math.cos(math.pi / 4 + m)]
    expected = (cross_entropy([s / 0.5 for s in row0], 0) + cross_entropy([s / 0.5 for s in row1], 1)) / 2
    loss = ContrastiveLoss(temperature=0.5, margin=m)(queries, positives)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() > ContrastiveLoss(temperature=0.5)(queries, positives).item()


def test_margin_keeps_a_finite_gradient_when_the_views_are_identical():
    # The two views' cosine is 1, where acos's derivative is infinite: the clamp keeps it finite.
    queries = torch.randn(3, 4, requires_grad=True)
    ContrastiveLoss(temperature=0.1, margin=0.2)(queries, queries.detach().clone()).backward()
    assert torch.isfinite(queries.grad).all()


@pytest.mark.parametrize("margin", [-0.1, math.pi / 2])
def test_margin_must_be_an_angle_below_a_right_angle(margin):
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=margin)


def test_decoupled_leaves_each_positive_out_of_its_partition_hand_computed():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positives = torch.tensor([[math.sqrt(3), 1.0], [1.0, 1.0]])
    # cosines: q0.p0 = cos(pi/6), q0.p1 = cos(pi/4), q1.p0 = cos(pi/3), q1.p1 = cos(pi/4)
    r, t = 1 / math.sqrt(2), 0.5
    row0 = -math.cos(math.pi / 6) / t + r / t  # logsumexp of one negative is that negative
    row1 = -r / t + 0.5 / t
    loss = ContrastiveLoss(temperature=t, decoupled=True)(queries, positives)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    assert loss.item() < 0  # no positive in the partition: the loss goes below zero
    infonce = ContrastiveLoss(temperature=t)(queries, positives)
    assert infonce.item() > 0 and ContrastiveLoss().decoupled is False  # off by default
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 scores, as in training on a CPU
        low = ContrastiveLoss(temperature=t, decoupled=True)(queries, positives)
    assert low.dtype == torch.float32 and low.item() == pytest.approx(loss.item(), abs=0.05)


def test_decoupled_keeps_hard_negatives_and_memory_in_the_partition():
    queries, positives, hard, memory = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    q, documents = unit(queries), unit(torch.cat([positives, hard, memory]))
    logits = q @ documents.T / 0.1
    own = logits[torch.arange(3), torch.arange(3)]
    others = logits.masked_fill(torch.eye(3, 11, dtype=torch.bool), float("-inf"))
    expected = (torch.logsumexp(others, dim=1) - own).mean()
    loss = ContrastiveLoss(temperature=0.1, decoupled=True)(queries, positives, hard, memory=memory)
    torch.testing.assert_close(loss, expected)


def _worker(rank: int, world_size: int, port: int, queries, positives, negatives, out: str,
            both_ways: bool = False, off_dropout: bool = False) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        local = slice(2 * rank, 2 * rank + 2)
        q = queries[local].clone().requires_grad_()
        p = positives[local].clone().requires_grad_()
        n = negatives[local].clone().requires_grad_()
        if off_dropout:  # the third tensor is the dropout-free embeddings
            loss = off_dropout_loss(q, p, n, temperature=0.1)
        else:
            loss = ContrastiveLoss(temperature=0.1, both_ways=both_ways)(q, p, n)
        loss.backward()
        torch.save({"loss": loss.detach(), "q": q.grad, "p": p.grad, "n": n.grad}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_see_the_global_batch_and_get_its_gradients(tmp_path):
    torch.manual_seed(0)
    queries, positives, negatives = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    port = 29500 + os.getpid() % 1000
    out = str(tmp_path / "grads")
    mp.spawn(_worker, args=(2, port, queries, positives, negatives, out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{rank}") for rank in range(2)]

    # One process, the global batch: each rank's loss is that of its own queries against all 8 candidates.
    q, p, n = (t.clone().requires_grad_() for t in (queries, positives, negatives))
    scores = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(torch.cat([p, n]), dim=-1).T
    per_query = torch.nn.functional.cross_entropy(scores / 0.1, torch.arange(4), reduction="none")
    for rank in range(2):
        assert ranks[rank]["loss"].item() == pytest.approx(per_query[2 * rank : 2 * rank + 2].mean().item(), rel=1e-5)
    # Gradients: all_gather's backward sums every rank's contribution to a rank's documents.
    (per_query[:2].mean() + per_query[2:].mean()).backward()
    assert torch.allclose(torch.cat([r["q"] for r in ranks]), q.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["p"] for r in ranks]), p.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["n"] for r in ranks]), n.grad, atol=1e-6)


def gte_loss(queries: torch.Tensor, positives: torch.Tensor, temperature: float,
             extra: torch.Tensor | None = None) -> float:
    """GTE's improved contrastive loss written out pair by pair (Li et al., 2023); `extra`: more
    candidates of every query (hard negatives, memory), after the positives."""
    q, d = torch.nn.functional.normalize(queries, dim=-1), torch.nn.functional.normalize(positives, dim=-1)
    extra = torch.nn.functional.normalize(extra, dim=-1) if extra is not None else torch.empty(0, q.shape[1])
    total = 0.0
    for i in range(len(q)):
        scores = [float(q[i] @ d[j]) for j in range(len(q))]  # the positive first among them, at j = i
        scores += [float(q[i] @ e) for e in extra]
        scores += [float(q[i] @ q[j]) for j in range(len(q)) if j != i]
        scores += [float(q[j] @ d[i]) for j in range(len(q)) if j != i]
        scores += [float(d[j] @ d[i]) for j in range(len(q)) if j != i]
        total += cross_entropy([s / temperature for s in scores], i)
    return total / len(q)


def test_both_ways_is_gtes_improved_loss_written_out():
    torch.manual_seed(0)
    queries, positives = torch.randn(3, 4), torch.randn(3, 4)
    loss = ContrastiveLoss(temperature=0.1, both_ways=True)(queries, positives)
    assert loss.item() == pytest.approx(gte_loss(queries, positives, 0.1), rel=1e-5)
    assert loss.item() > ContrastiveLoss(temperature=0.1)(queries, positives).item()  # more negatives


def test_both_ways_hand_computed_on_two_pairs():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    r = 1 / math.sqrt(2)
    # pair 0: q0.p0, q0.p1 | q0.q1 | q1.p0 | p1.p0 ; pair 1: q1.p0, q1.p1 | q0.q1 | q0.p1 | p0.p1
    row0 = [1, r, 0, 0, r]
    row1 = [0, r, 0, r, r]
    expected = (cross_entropy([s / 0.5 for s in row0], 0) + cross_entropy([s / 0.5 for s in row1], 1)) / 2
    loss = ContrastiveLoss(temperature=0.5, both_ways=True)(queries, positives)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_both_ways_keeps_hard_negatives_and_memory_on_the_query_side():
    torch.manual_seed(1)
    queries, positives, negatives, memory = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 4)
    loss = ContrastiveLoss(temperature=0.1, both_ways=True)(queries, positives, negatives, memory=memory)
    assert loss.item() == pytest.approx(gte_loss(queries, positives, 0.1, torch.cat([negatives, memory])), rel=1e-5)


def test_both_ways_over_two_processes_is_the_global_batchs_loss_and_gradients(tmp_path):
    torch.manual_seed(0)
    queries, positives, negatives = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    port = 29500 + (os.getpid() + 500) % 1000
    out = str(tmp_path / "grads")
    mp.spawn(_worker, args=(2, port, queries, positives, negatives, out, True), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{rank}") for rank in range(2)]

    # Every pair's loss reads the global batch, so the ranks' mean loss is the one-process loss, and the
    # summed rank losses (what DDP's gradient averaging differentiates, times 2) give the gradients.
    q, p, n = (t.clone().requires_grad_() for t in (queries, positives, negatives))
    loss = ContrastiveLoss(temperature=0.1, both_ways=True)(q, p, n)
    assert (ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 == pytest.approx(loss.item(), rel=1e-5)
    (2 * loss).backward()
    for name, grad in (("q", q.grad), ("p", p.grad), ("n", n.grad)):
        assert torch.allclose(torch.cat([r[name] for r in ranks]), grad, atol=1e-6)


def test_off_dropout_loss_hand_computed():
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    second = torch.tensor([[1.0, 1.0], [0.0, 2.0], [1.0, 1.0]])
    plain = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    r = 1 / math.sqrt(2)
    # positives: first_i . second_i = r, 1, 1; negatives: plain_i . plain_j (j != i)
    rows = [[r, 0.0, -1.0], [1.0, 0.0, 0.0], [1.0, -1.0, 0.0]]
    expected = sum(cross_entropy([s / 0.5 for s in row], 0) for row in rows) / 3
    assert off_dropout_loss(first, second, plain, temperature=0.5).item() == pytest.approx(expected, rel=1e-5)


def test_off_dropout_loss_sends_gradients_to_all_three_and_refuses_a_bad_temperature():
    torch.manual_seed(0)
    first, second, plain = (torch.randn(4, 8, requires_grad=True) for _ in range(3))
    off_dropout_loss(first, second, plain, temperature=0.05).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (first, second, plain))
    with pytest.raises(ValueError, match="temperature"):
        off_dropout_loss(first, second, plain, temperature=0.0)


def test_off_dropout_loss_over_two_processes_is_the_global_batchs_loss_and_gradients(tmp_path):
    torch.manual_seed(0)
    first, second, plain = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    port = 29500 + (os.getpid() + 250) % 1000
    out = str(tmp_path / "grads")
    mp.spawn(_worker, args=(2, port, first, second, plain, out, False, True), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{rank}") for rank in range(2)]
    f, s, p = (t.clone().requires_grad_() for t in (first, second, plain))
    loss = off_dropout_loss(f, s, p, temperature=0.1)
    assert (ranks[0]["loss"] + ranks[1]["loss"]).item() / 2 == pytest.approx(loss.item(), rel=1e-5)
    (2 * loss).backward()
    for name, grad in (("q", f.grad), ("p", s.grad), ("n", p.grad)):
        assert torch.allclose(torch.cat([r[name] for r in ranks]), grad, atol=1e-6)


def test_dimension_loss_is_a_cross_entropy_over_the_dimensions_correlations():
    torch.manual_seed(0)
    first, second = torch.randn(16, 5), torch.randn(16, 5)
    # written out with numpy: the (biased) correlation of dimension k of the first view with each
    # dimension of the second, divided by 10; dimension k must pick dimension k
    a, b = first.double().numpy(), second.double().numpy()
    a = (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)
    b = (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5)
    scores = a.T @ b / 16 / 10
    expected = np.mean([cross_entropy(list(row), k) for k, row in enumerate(scores)])
    assert dimension_contrastive_loss(first, second).item() == pytest.approx(expected, rel=1e-5)


def test_dimension_loss_ignores_each_dimensions_scale_and_rewards_matching_dimensions():
    torch.manual_seed(0)
    first = torch.randn(32, 6)
    scaled = first * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0, 2.0]) + 5.0
    same = dimension_contrastive_loss(first, first)
    assert dimension_contrastive_loss(scaled, scaled).item() == pytest.approx(same.item(), rel=1e-4)
    assert same < dimension_contrastive_loss(first, first[:, [1, 0, 3, 2, 5, 4]])  # dimensions swapped

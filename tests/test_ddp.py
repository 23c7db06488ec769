"""Contrastive training on 2 CPU processes (DDP, gloo) equals one process on the whole batch:
negatives are gathered across processes with gradients, so the loss and the adapter gradients
match the single-process values (fp32 tolerance)."""

import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from peft import LoraConfig, get_peft_model
from torch.nn.parallel import DistributedDataParallel

from llm2vec import LLM2Vec
from llm2vec.losses import ContrastiveLoss

QUERIES = [f"query {i} about topic {i % 3}" for i in range(8)]
POSITIVES = [f"a passage on topic {i % 3} for query {i}" + " words" * (i % 4) for i in range(8)]
NEGATIVES = [f"unrelated text number {i}" for i in range(8)]
LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
WORKERS_DEADLINE_S = 240  # a hung process group fails the test instead of the whole suite


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_encoder() -> LLM2Vec:
    encoder = LLM2Vec.from_pretrained("tiny-random-llama", pooling_mode="mean")
    torch.manual_seed(0)
    encoder.model = get_peft_model(encoder.model, LoraConfig(**LORA, init_lora_weights=False))
    return encoder.train()


def contrastive_step(model, encoder, queries, positives, negatives):
    def embed(texts):
        return model(encoder.tokenize(texts))

    loss = ContrastiveLoss(temperature=0.05)(embed(queries), embed(positives), embed(negatives))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in encoder.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def ddp_worker(rank: int, world: int, port: int, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    torch.set_num_threads(1)
    encoder = build_encoder()
    model = DistributedDataParallel(encoder)
    half = len(QUERIES) // world
    part = slice(rank * half, (rank + 1) * half)
    loss, grads = contrastive_step(model, encoder, QUERIES[part], POSITIVES[part], NEGATIVES[part])
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss)
    if rank == 0:
        results["loss"] = torch.stack(losses).mean()
        results["grads"] = grads  # DDP has averaged them across processes
    # Rank 0 hosts the store: the barrier keeps it up until rank 1 is done with it (CI hung once with
    # rank 1 waiting on a store rank 0 had closed; run_workers' deadline fails the test should it hang).
    dist.barrier()
    dist.destroy_process_group()


def run_workers(world: int, results) -> None:
    """ddp_worker on `world` processes, failing (not hanging) if they outlive the deadline."""
    context = mp.spawn(ddp_worker, args=(world, free_port(), results), nprocs=world, join=False)
    start = time.monotonic()
    while not context.join(timeout=5):
        if time.monotonic() - start > WORKERS_DEADLINE_S:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the DDP workers were still running after {WORKERS_DEADLINE_S} s")


def test_ddp_loss_and_gradients_equal_single_process():
    encoder = build_encoder()
    single_loss, single_grads = contrastive_step(encoder, encoder, QUERIES, POSITIVES, NEGATIVES)

    with mp.Manager() as manager:
        results = manager.dict()
        run_workers(2, results)
        ddp_loss, ddp_grads = results["loss"], dict(results["grads"])

    assert torch.isfinite(single_loss) and single_loss > 0
    torch.testing.assert_close(ddp_loss, single_loss, rtol=1e-5, atol=1e-6)
    assert ddp_grads.keys() == single_grads.keys() and len(single_grads) > 0
    for name, grad in single_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(ddp_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_local_only_negatives_would_differ():
    """The check above has teeth: without the cross-process gather (each half alone) the loss differs."""
    encoder = build_encoder()
    whole, _ = contrastive_step(encoder, encoder, QUERIES, POSITIVES, NEGATIVES)
    halves = []
    for part in (slice(0, 4), slice(4, 8)):
        encoder.zero_grad()
        loss, _ = contrastive_step(encoder, encoder, QUERIES[part], POSITIVES[part], NEGATIVES[part])
        halves.append(loss)
    assert abs(float(torch.stack(halves).mean() - whole)) > 1e-3

"""Several devices or processes: FSDP2 sharding for any decoder, and sharded encoding.

Encoding on several devices works on torch.distributed's process group (torchrun, SLURM, or
inside a Lightning DDP run), not on a spawn pool inside the caller's process: each process holds
one model copy, encodes its shard, and the embeddings are gathered back in input order.

    torchrun --nproc-per-node 8 -m llm2vec.distributed --model <run dir> --input texts.txt --output emb.npy

When one process fails (an exception, or killed), torchrun stops the others and exits non-zero; its
summary names the failed rank with its traceback (`@record`). A process that hangs instead fails the
others' final all-gather after --timeout-minutes.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as plain FSDP2 data parallelism: every process of every node
    holds one shard, no tensor parallelism. (Its "auto" sizes give a node's processes to tensor
    parallelism, which would feed them all the same batches.) The stages shard in configure_model
    (`shard_decoder_layers`); trainer=fsdp (GPUs) and trainer=fsdp_cpu use it."""

    def __init__(self, **kwargs):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.world_size  # known once the trainer set the devices and nodes
        super().setup_environment()


def shard_decoder_layers(model: nn.Module, mesh) -> int:
    """FSDP2 (`fully_shard`, CPU and GPU): one unit per decoder layer, then one for the rest of `model`
    (embeddings, norm, heads). Frozen and trainable (LoRA) weights are sharded alike. Returns the
    number of decoder layers sharded."""
    from torch.distributed.fsdp import fully_shard

    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise ValueError(f"shard_decoder_layers: no decoder layers found in {type(model).__name__}")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return len(layers)


def gather_trainable_parameters(model: nn.Module) -> int:
    """Replace every sharded trainable parameter (a DTensor under FSDP2) by its full tensor, so that
    saving writes the whole adapter. A collective: every process calls it, once training is over
    (the gathered parameters are no longer FSDP's). Returns the number of parameters gathered."""
    from torch.distributed.tensor import DTensor

    sharded = [(name, p) for name, p in model.named_parameters() if p.requires_grad and isinstance(p, DTensor)]
    for name, parameter in sharded:  # the same order on every process: named_parameters is deterministic
        owner, _, attribute = name.rpartition(".")
        full = nn.Parameter(parameter.full_tensor().detach().clone(), requires_grad=True)
        setattr(model.get_submodule(owner), attribute, full)
    return len(sharded)


def encode_sharded(encoder, sentences: list, **encode_kwargs) -> np.ndarray:
    """`encoder.encode` split across the processes of the default process group; every process
    returns all embeddings in input order. Without a process group it is plain `encode`."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return encoder.encode(sentences, **encode_kwargs)
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = sentences[rank::world]  # round robin: shard sizes differ by at most one
    per_rank = -(-len(sentences) // world)
    dim = encoder.model.config.hidden_size
    local = torch.zeros(per_rank, dim)
    if shard:
        encode_kwargs.update(convert_to_tensor=True)
        local[: len(shard)] = encoder.encode(shard, **encode_kwargs).cpu()
    device = _collective_device()
    gathered = [torch.empty(per_rank, dim, device=device) for _ in range(world)]
    dist.all_gather(gathered, local.to(device))
    stacked = torch.stack(gathered, dim=1).reshape(per_rank * world, dim)  # row i = sentence i
    return stacked[: len(sentences)].cpu().numpy()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@record  # under torchrun: the failed rank's traceback goes into torchrun's failure summary
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Encode a text file (one text per line) on several processes.")
    parser.add_argument("--model", required=True, help="shipped model name, local dir, hub id or saved encoder")
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path, help=".npy file written by rank 0")
    parser.add_argument("--pooling-mode", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--timeout-minutes", type=float, default=30.0,
                        help="how long a process waits for the others (in the final all-gather) before failing")
    args = parser.parse_args(argv)

    from llm2vec import LLM2Vec, atomic

    if not args.input.is_file():
        raise SystemExit(f"input file {str(args.input)!r} does not exist")
    texts = [line.rstrip("\n") for line in args.input.open(encoding="utf-8") if line.strip()]
    if "RANK" in os.environ and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=args.timeout_minutes))
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    kwargs = {"dtype": args.dtype} if args.dtype else {}
    encoder = LLM2Vec.from_pretrained(args.model, pooling_mode=args.pooling_mode, **kwargs)
    if torch.cuda.is_available():
        encoder.to(torch.device("cuda", torch.cuda.current_device()))
    embeddings = encode_sharded(encoder, texts, batch_size=args.batch_size)
    if not dist.is_initialized() or dist.get_rank() == 0:
        with atomic.replacing(args.output) as temp, open(temp, "wb") as handle:  # all or nothing
            np.save(handle, embeddings)
        print(f"wrote {embeddings.shape} embeddings to {args.output}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""Gradient caching's cost: SimCSE peak memory and step time per sentence at growing batch sizes
with a fixed mini-batch, against plain (uncached) steps. SmolLM2-135M with the CPU recipe
(experiment=smollm2_cpu: bf16 weights, bf16 autocast, eager attention, no LoRA dropout; attention
dropout 0.3), LoRA r16 on every projection, AdamW.

    python benchmarks/grad_cache.py [--model smollm2-135m] [--steps 3] [--cached 32,128,512]
        [--mini-batch 32] [--plain 32,128] [--compile]

Each configuration runs in a fresh process, so its peak RSS is its own; the peak is that of the
timed steps (Linux's high-water mark, reset after loading and the warm-up step: loading the GGUF
weights, dequantised in float32, peaks higher than a step). A batch of N sentences is
the same 32 (--mini-batch) STS-B train sentences (the CPU recipe's data) N/32 times: every
mini-batch then has the shape of the plain batch of 32, so time per sentence and memory compare
like for like (the loss value does not matter here). The first plain batch is the reference of the
ratio columns. A step is forward, backward and the optimizer step, timed after a warm-up step.
Data: $LLM2VEC_DATA, else ../shared/data (as conf/paths/default.yaml).
"""

from __future__ import annotations

import argparse
import functools
import os
import gc
import time
from pathlib import Path

import torch

from llm2vec.data import read_sentences
from llm2vec.encoder import LLM2Vec
from llm2vec.stages import SimCSE
from llm2vec.stages.base import compile_decoder_layers, skip_adapter_input_casts
from train import run_in_fresh_process  # benchmarks/train.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLM2VEC_DATA", ROOT.parent / "shared" / "data"))  # as conf/paths/default.yaml
STSB_TRAIN = DATA / "sts" / "STSB-train.tsv"
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def measure(model: str, batch_size: int, mini_batch_size: int | None, distinct: int, steps: int,
            compile_layers: bool, queue) -> None:
    torch.manual_seed(0)
    encoder = LLM2Vec.from_pretrained(model, dtype=torch.bfloat16, max_length=64, attn_implementation="eager")
    module = SimCSE(encoder, LORA, functools.partial(torch.optim.AdamW, lr=1e-4), mini_batch_size=mini_batch_size)
    if batch_size % distinct:
        raise ValueError(f"batch size {batch_size} must be a multiple of the mini-batch size {distinct}")
    batch = read_sentences(STSB_TRAIN)[:distinct] * (batch_size // distinct)
    module.log_step = lambda *args, **kwargs: None  # no trainer attached
    module.train()
    skip_adapter_input_casts(module)  # what the stage does under bf16-mixed
    if compile_layers:
        compile_decoder_layers(module.encoder.model)
    optimizer = module.configure_optimizers()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up (and the compile)
    # Loading the GGUF weights (dequantised in float32) peaks higher than a training step: measure the
    # steps' own peak by resetting the kernel's high-water mark once the model is loaded.
    gc.collect()
    reset_peak_rss()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    queue.put({"seconds": seconds, "peak_gb": rss_gb("VmHWM")})


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_gb(field: str) -> float:
    """A memory field of this process (VmHWM: the peak resident set since the last reset), in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def sizes(text: str) -> list[int]:
    return [int(size) for size in text.split(",") if size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cached", default="32,128,512", help="batch sizes trained with gradient caching")
    parser.add_argument("--mini-batch", type=int, default=32, help="the cached runs' mini_batch_size")
    parser.add_argument("--plain", default="32,128",
                        help="batch sizes trained without caching (the first: the ratios' reference)")
    parser.add_argument("--compile", action="store_true", help="compile the decoder layers (compile_layers=true)")
    args = parser.parse_args()
    configs = [(size, None) for size in sizes(args.plain)] + [(size, args.mini_batch) for size in sizes(args.cached)]
    print(f"SimCSE, {args.model}, bf16-mixed, eager attention, {'compiled' if args.compile else 'eager'} layers, "
          f"{torch.get_num_threads()} threads, {args.steps} steps each")
    print("| batch | mini-batch | s/step | ms/sentence | x plain per sentence | peak RSS in steps | x plain peak |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    reference = None
    for batch_size, mini_batch_size in configs:
        r = run_in_fresh_process(measure, args.model, batch_size, mini_batch_size, args.mini_batch, args.steps, args.compile)
        per_sentence = r["seconds"] / batch_size
        reference = reference or (per_sentence, r["peak_gb"])  # the first plain batch
        print(f"| {batch_size} | {mini_batch_size or 'none (plain)'} | {r['seconds']:.2f} | {1000 * per_sentence:.1f} "
              f"| {per_sentence / reference[0]:.2f} | {r['peak_gb']:.2f} GB | {r['peak_gb'] / reference[1]:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()

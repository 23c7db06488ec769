"""Training speed on this machine: MNTP tokens/s and SimCSE sentences/s (SmolLM2-135M, LoRA r16),
with peak memory and the fraction of the machine's matmul throughput (a big matmul timed in the same
run) they reach. Variants:

- fp32: float32 weights, no autocast;
- bf16: bfloat16 weights + bf16 autocast (conf/trainer/cpu.yaml's bf16-mixed), sdpa, LoRA dropout 0.05;
- bf16 cpu-recipe: the same with eager attention and no LoRA dropout (experiment/smollm2_cpu);
- bf16 cpu-recipe padded (SimCSE only): the same, texts padded to the longest instead of packed;
- bf16 cpu-recipe compiled: the cpu-recipe with its decoder layers compiled (`compile_layers=true`),
  timed after the compiling step (its time is in the "first step" column).

    python benchmarks/train.py [--model smollm2-135m] [--steps 5] [--stages simcse] [--variants fp32,bf16]

Each measurement runs in a fresh process, so its peak memory is its own. A step is what the
Lightning stage does per batch: forward, backward and the optimizer step. MNTP: 8 blocks of 128
tokens; SimCSE: 32 sentences (at most 64 tokens) in two dropout views, the first 32 of WikiText-2
(mixed lengths: about half of a padded batch is padding) and 32 of STS-B train (short, similar).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import resource
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from llm2vec.data import TextBlocks, read_sentences
from llm2vec.encoder import LLM2Vec
from llm2vec.stages import MNTP, SimCSE
from llm2vec.stages.base import compile_decoder_layers, skip_adapter_input_casts

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SENTENCES = {"wiki": DATA / "wiki" / "wikitext2_sentences.txt", "stsb-train": DATA / "sts" / "STSB-train.tsv"}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = {
    "fp32": dict(dtype=torch.float32, attn_implementation="sdpa", lora_dropout=0.05),
    "bf16": dict(dtype=torch.bfloat16, attn_implementation="sdpa", lora_dropout=0.05),
    "bf16 cpu-recipe": dict(dtype=torch.bfloat16, attn_implementation="eager", lora_dropout=0.0),
    "bf16 cpu-recipe padded": dict(dtype=torch.bfloat16, attn_implementation="eager", lora_dropout=0.0, pack=False),
    "bf16 cpu-recipe compiled": dict(dtype=torch.bfloat16, attn_implementation="eager", lora_dropout=0.0,
                                     compile=True),
}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_flops_per_second(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def lora(variant: dict) -> dict:
    return dict(r=16, lora_alpha=32, lora_dropout=variant["lora_dropout"], target_modules=TARGETS)


def mntp_setup(model: str, variant: dict, batch_size: int, block_size: int):
    module = MNTP(model, lora(variant), functools.partial(torch.optim.AdamW, lr=1e-4), dtype=variant["dtype"],
                  attn_implementation=variant["attn_implementation"])
    data = TextBlocks(module.tokenizer, [str(DATA / "wiki" / "wikitext2_paragraphs.txt")], block_size=block_size,
                      max_texts=400)
    data.setup()
    batch = data.collate(list(range(batch_size)))
    return module, batch, batch["input_ids"].numel()


def simcse_setup(model: str, variant: dict, batch_size: int, max_length: int, text: str):
    encoder = LLM2Vec.from_pretrained(model, dtype=variant["dtype"], max_length=max_length,
                                      attn_implementation=variant["attn_implementation"])
    module = SimCSE(encoder, lora(variant), functools.partial(torch.optim.AdamW, lr=1e-4))
    module.pack_sequences = variant.get("pack", True)
    sentences = read_sentences(SENTENCES[text])[:batch_size]
    return module, sentences, len(sentences)


def measure(kind: str, model: str, variant_name: str, steps: int, queue) -> None:
    torch.manual_seed(0)
    variant = VARIANTS[variant_name]
    if kind == "mntp":
        module, batch, items = mntp_setup(model, variant, batch_size=8, block_size=128)
    else:
        text = kind.split(":")[1]
        module, batch, items = simcse_setup(model, variant, batch_size=32, max_length=64, text=text)
    module.log_step = lambda *args, **kwargs: None  # no trainer attached
    module.train()
    mixed = variant["dtype"] == torch.bfloat16
    if mixed:  # what the stage does under bf16-mixed
        skip_adapter_input_casts(module)
    optimizer = module.configure_optimizers()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up (eager: the counter sees every op)
    if variant.get("compile"):
        compile_decoder_layers(module.encoder.model)
    start = time.perf_counter()
    step()
    first_step = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    queue.put({"seconds": seconds, "items_per_s": items / seconds, "flops": counter.get_total_flops(),
               "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               "first_step": first_step})


def run_in_fresh_process(target, *args) -> dict:
    """`target(*args, queue)` in a new process (its own peak memory); the dict it puts on the queue."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--stages", default="mntp,simcse:wiki,simcse:stsb-train", help="comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    peak = {name: matmul_flops_per_second(dtype) for name, dtype in PRECISIONS.items()}
    print(f"matmul 2048^3: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s "
          f"(x{peak['bf16'] / peak['fp32']:.1f}), {torch.get_num_threads()} threads")
    print(f"{'stage':<19}{'variant':<26}{'s/step':>8}{'throughput':>22}{'GFLOP/s':>9}{'of matmul':>11}"
          f"{'peak RSS':>10}{'first step':>12}")
    for kind in args.stages.split(","):
        unit = "tokens/s" if kind == "mntp" else "sentences/s"
        for name in args.variants.split(","):
            variant = VARIANTS[name]
            if kind == "mntp" and "pack" in variant:
                continue  # MNTP blocks have no padding
            r = run_in_fresh_process(measure, kind, args.model, name, args.steps)
            # FLOPs counted are those the model ran (packed: without the padding's)
            achieved = r["flops"] / r["seconds"]
            of_peak = achieved / peak["bf16" if variant["dtype"] == torch.bfloat16 else "fp32"]
            print(f"{kind:<19}{name:<26}{r['seconds']:8.2f}{r['items_per_s']:10.0f} {unit:<11}"
                  f"{achieved / 1e9:9.0f}{of_peak:10.0%}{r['peak_gb']:8.2f} GB{r['first_step']:10.1f} s", flush=True)


if __name__ == "__main__":
    main()

"""Encoding speed: sentences/s and tokens/s embedding the STS-B test sentences, per dtype, each also
as a fraction of this machine's matmul throughput measured in the same process, plus STS-B test
Spearman so a faster dtype cannot hide a worse encoder.

    python benchmarks/encode.py              # SmolLM2-135M: fp32, bf16 weights, bf16 autocast; 2,758 sentences
    python benchmarks/encode.py --limit 512 --dtypes bfloat16

Dtypes: `float32`; `bfloat16` (bf16 weights, everything in bf16); `bfloat16-autocast` (fp32
weights under torch.autocast: bf16 matmuls, the residual stream and norms stay fp32).

The CPU may be shared: the matmul calibration runs right before and after each timed encode, in
this process, so `of matmul` compares like with like; the load average is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from llm2vec import LLM2Vec
from llm2vec.evaluation.sts import cosine_scores, read_sts_tsv

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sts" / "STSB-test.tsv"
# dtype name -> (weights dtype, autocast dtype or None)
DTYPES = {
    "float32": (torch.float32, None),
    "bfloat16": (torch.bfloat16, None),
    "bfloat16-autocast": (torch.float32, torch.bfloat16),
}


def matmul_flops_per_second(dtype: torch.dtype, size: int = 2048, seconds: float = 1.0) -> float:
    """Best-of FLOP/s of square `size` matmuls in `dtype` (best: the least disturbed by other load)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # first call sets up the kernel
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def flops_per_token(encoder: LLM2Vec, mean_length: float) -> float:
    """Forward FLOPs per token: 2 per weight of the decoder layers (the embedding is a lookup) plus
    the attention scores and weighted sum over the text, 4 * length * hidden per layer."""
    config = encoder.model.config
    embedding = encoder.model.get_input_embeddings().weight.numel()
    weights = sum(p.numel() for p in encoder.model.parameters()) - embedding
    return 2 * weights + 4 * mean_length * config.hidden_size * config.num_hidden_layers


def run(model: str, dtype: str, sentences: list[str], pairs, **encode_kwargs) -> dict:
    weights_dtype, autocast_dtype = DTYPES[dtype]
    compute_dtype = autocast_dtype or weights_dtype
    encoder = LLM2Vec.from_pretrained(model, merge_peft=True, dtype=weights_dtype)  # trained encoders: adapters merged
    tokens = int(encoder.tokenize(sentences)["attention_mask"].sum())

    def encode(texts):
        autocast = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with autocast:
            return encoder.encode(texts, show_progress_bar=False, **encode_kwargs)

    encode(sentences[:256])  # warm-up
    matmul_before = matmul_flops_per_second(compute_dtype)
    start = time.perf_counter()
    vectors = encode(sentences)
    seconds = time.perf_counter() - start
    matmul_after = matmul_flops_per_second(compute_dtype)
    matmul = (matmul_before + matmul_after) / 2
    achieved = tokens * flops_per_token(encoder, tokens / len(sentences)) / seconds
    n = len(pairs.sentences1)
    spearman = spearmanr(cosine_scores(vectors[:n], vectors[n:]), pairs.scores).statistic if len(vectors) == 2 * n else None
    return {
        "dtype": dtype,
        "sentences": len(sentences),
        "tokens": tokens,
        "seconds": seconds,
        "sentences_per_s": len(sentences) / seconds,
        "tokens_per_s": tokens / seconds,
        "model_gflops_per_s": achieved / 1e9,
        "matmul_gflops_per_s_before": matmul_before / 1e9,
        "matmul_gflops_per_s_after": matmul_after / 1e9,
        "fraction_of_matmul": achieved / matmul,
        "spearman": None if spearman is None else 100 * float(spearman),
    }


def compare_batching(model: str, sentences: list[str], rounds: int = 2) -> dict[str, dict]:
    """bf16 sentences/s of three ways to batch, interleaved in one process (best of `rounds`), and
    the share of padding among the tokens each way feeds the model: the former `encode` (sorted
    by characters, 64 texts a batch), sorted by tokens, and sorted by tokens with a token budget."""
    encoder = LLM2Vec.from_pretrained(model, dtype="bfloat16").eval()
    by_characters = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))

    def characters_64():
        with torch.inference_mode():
            for start in range(0, len(sentences), 64):
                encoder(encoder.tokenize([sentences[i] for i in by_characters[start : start + 64]]))

    ways = {
        "characters, 64 texts (before)": characters_64,
        "tokens, 64 texts": lambda: encoder.encode(sentences, batch_size=64, show_progress_bar=False),
        "tokens, <= 2048 tokens": lambda: encoder.encode(
            sentences, batch_size=256, max_batch_tokens=2048, show_progress_bar=False),
    }
    fed = {"tokens": 0}
    encoder.model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.update(tokens=fed["tokens"] + kwargs["input_ids"].numel()), with_kwargs=True)
    real = int(encoder.tokenize(sentences)["attention_mask"].sum())
    results = {name: {"sentences_per_s": 0.0} for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            fed["tokens"] = 0
            start = time.perf_counter()
            way()
            speed = len(sentences) / (time.perf_counter() - start)
            results[name] = {"sentences_per_s": max(speed, results[name]["sentences_per_s"]),
                             "padding": 1 - real / fed["tokens"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="STS TSV: sentence1, sentence2, score")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-batch-tokens", type=int, default=2048, help="0: batches of --batch-size texts")
    parser.add_argument("--limit", type=int, default=None, help="encode only the first N sentences (no Spearman)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--compare-batching", action="store_true", help="also time three ways to batch (bf16)")
    args = parser.parse_args()

    pairs = read_sts_tsv(args.data)
    sentences = pairs.sentences1 + pairs.sentences2
    if args.limit:
        sentences = sentences[: args.limit]
    encode_kwargs = {"batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens or None}
    print(f"{args.model}, {len(sentences)} sentences, {encode_kwargs}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    results = [run(args.model, dtype, sentences, pairs, **encode_kwargs) for dtype in args.dtypes]
    print(f"{'dtype':<17} {'sent/s':>7} {'tok/s':>7} {'model GFLOP/s':>13} {'matmul GFLOP/s':>15} "
          f"{'of matmul':>9} {'spearman':>8}")
    for r in results:
        matmul = f"{r['matmul_gflops_per_s_before']:.0f}/{r['matmul_gflops_per_s_after']:.0f}"
        spearman = "-" if r["spearman"] is None else f"{r['spearman']:.2f}"
        print(f"{r['dtype']:<17} {r['sentences_per_s']:7.1f} {r['tokens_per_s']:7.0f} {r['model_gflops_per_s']:13.0f} "
              f"{matmul:>15} {r['fraction_of_matmul']:9.1%} {spearman:>8}")
    if args.compare_batching:
        batching = compare_batching(args.model, sentences)
        print(f"\n{'bf16, batched by':<30} {'sent/s':>7} {'padding':>8}")
        for name, r in batching.items():
            print(f"{name:<30} {r['sentences_per_s']:7.1f} {r['padding']:8.1%}")
        results.append({"batching": batching})
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

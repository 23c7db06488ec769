"""Encoding speed: sentences/s and tokens/s embedding the STS-B test sentences, per dtype, each also
as a fraction of this machine's matmul throughput measured in the same process, plus STS-B test
Spearman so a faster dtype cannot hide a worse encoder.

    python benchmarks/encode.py              # SmolLM2-135M: fp32, bf16 weights, bf16 autocast; 2,758 sentences
    python benchmarks/encode.py --limit 512 --dtypes bfloat16
    python benchmarks/encode.py --llama-cpp f16 q8_0   # also the GGUF export run by llama.cpp (LlamaCppEncoder)

Dtypes: `float32`; `bfloat16` (bf16 weights, everything in bf16); `bfloat16-autocast` (fp32
weights under torch.autocast: bf16 matmuls, the residual stream and norms stay fp32).

llama.cpp rows (`--llama-cpp TYPE...`): the encoder exported to GGUF (`llm2vec.gguf_export`) and run
by `llm2vec.llama_cpp_encoder.LlamaCppEncoder` with as many threads as torch uses; `of matmul`
compares with torch's int8 matmul (`torch._int_mm`) for q8_0 and the bf16 matmul for f16/bf16.
Every row also gives the mean and min cosine to the float32 torch embeddings (float32 runs first).

The CPU may be shared: the matmul calibration runs right before and after each timed encode, in
this process, so `of matmul` compares like with like; the load average is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from llm2vec import LLM2Vec
from llm2vec.evaluation.sts import cosine_scores, read_sts_tsv
from llm2vec.gguf_export import to_gguf

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


def int8_ops_per_second(size: int = 2048, seconds: float = 1.0) -> float:
    """Best-of int8 multiply-adds (x2) per second of square `size` int8 matmuls into int32."""
    a = torch.randint(-128, 128, (size, size), dtype=torch.int8)
    b = torch.randint(-128, 128, (size, size), dtype=torch.int8)
    torch._int_mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch._int_mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def flops_per_token(encoder: LLM2Vec, mean_length: float) -> float:
    """Forward FLOPs per token: 2 per weight of the decoder layers (the embedding is a lookup) plus
    the attention scores and weighted sum over the text, 4 * length * hidden per layer."""
    config = encoder.model.config
    embedding = encoder.model.get_input_embeddings().weight.numel()
    weights = sum(p.numel() for p in encoder.model.parameters()) - embedding
    return 2 * weights + 4 * mean_length * config.hidden_size * config.num_hidden_layers


def run(model: str, dtype: str, sentences: list[str], pairs, **encode_kwargs) -> tuple[dict, np.ndarray]:
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
    model_flops = flops_per_token(encoder, tokens / len(sentences))
    return result_row(dtype, len(sentences), tokens, seconds, model_flops, (matmul_before, matmul_after),
                      vectors, pairs), vectors


def result_row(label: str, count: int, tokens: int, seconds: float, model_flops: float,
               matmul: tuple[float, float], vectors: np.ndarray, pairs) -> dict:
    """One row of the table: speed, the fraction of the machine's matmul throughput (measured before
    and after the timed encode), and the STS-B Spearman of the vectors."""
    achieved = tokens * model_flops / seconds
    return {
        "dtype": label,
        "sentences": count,
        "tokens": tokens,
        "seconds": seconds,
        "sentences_per_s": count / seconds,
        "tokens_per_s": tokens / seconds,
        "model_gflops_per_s": achieved / 1e9,
        "matmul_gflops_per_s_before": matmul[0] / 1e9,
        "matmul_gflops_per_s_after": matmul[1] / 1e9,
        "fraction_of_matmul": achieved / ((matmul[0] + matmul[1]) / 2),
        "spearman": sts_spearman(vectors, pairs),
    }


def run_llama_cpp(model: str, type: str, sentences: list[str], pairs, max_batch_tokens: int,
                  flash_attn: bool = True) -> tuple[dict, np.ndarray]:
    """The same as `run` for the GGUF export of `model` run by llama.cpp."""
    from llm2vec.llama_cpp_encoder import LlamaCppEncoder  # needs llama-cpp-python

    encoder = LLM2Vec.from_pretrained(model, merge_peft=True, dtype=torch.float32)
    tokens = int(encoder.tokenize(sentences)["attention_mask"].sum())
    model_flops = flops_per_token(encoder, tokens / len(sentences))
    peak = int8_ops_per_second if type == "q8_0" else lambda: matmul_flops_per_second(torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        runtime = LlamaCppEncoder(to_gguf(encoder, Path(tmp) / f"{type}.gguf", type=type),
                                  max_batch_tokens=max_batch_tokens, n_threads=torch.get_num_threads(),
                                  flash_attn=flash_attn)
        del encoder
        runtime.encode(sentences[:256])  # warm-up
        matmul_before = peak()
        start = time.perf_counter()
        vectors = runtime.encode(sentences)
        seconds = time.perf_counter() - start
        matmul_after = peak()
        runtime.close()
    return result_row(f"llama.cpp {type}", len(sentences), tokens, seconds, model_flops,
                      (matmul_before, matmul_after), vectors, pairs), vectors


def plain_llama_cpp_parity(model: str, sentences: list[str], pairs, instruction: str) -> list[dict]:
    """What a llama-server / Ollama user gets: llama.cpp's own pooling (the file's pooling type, over
    every token) of the f16 export, the instruction sent as a prefix of the text, compared with
    LLM2Vec's embeddings (text tokens pooled, the instruction attended to but not pooled)."""
    import llama_cpp

    encoder = LLM2Vec.from_pretrained(model, merge_peft=True, dtype=torch.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = to_gguf(encoder, Path(tmp) / "f16.gguf", type="f16")
        plain = llama_cpp.Llama(str(path), embedding=True, n_ctx=2048, n_batch=2048, n_ubatch=2048,
                                n_threads=torch.get_num_threads(), verbose=False)
        for prefix in ("", instruction):
            ours = encoder.encode([[prefix, s] for s in sentences] if prefix else sentences, show_progress_bar=False)
            theirs = np.array(plain.embed([f"{prefix} {s}" if prefix else s for s in sentences]), dtype=np.float32)
            row = add_parity({"input": "instruction + text" if prefix else "text"}, theirs, ours)
            row.update(spearman_llama_cpp=sts_spearman(theirs, pairs), spearman_llm2vec=sts_spearman(ours, pairs))
            rows.append(row)
        plain.close()
    return rows


def sts_spearman(vectors: np.ndarray, pairs) -> float | None:
    n = len(pairs.sentences1)
    if len(vectors) != 2 * n:
        return None
    return 100 * float(spearmanr(cosine_scores(vectors[:n], vectors[n:]), pairs.scores).statistic)


def add_parity(result: dict, vectors: np.ndarray, reference: np.ndarray | None) -> dict:
    """Mean and min cosine of each embedding to the float32 torch one."""
    if reference is not None:
        cosine = (vectors * reference).sum(1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1))
        result.update(cosine_mean=float(cosine.mean()), cosine_min=float(cosine.min()))
    return result


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
    parser.add_argument("--llama-cpp", nargs="*", default=[], choices=["f16", "bf16", "q8_0"],
                        help="also the GGUF export of these types run by llama.cpp")
    parser.add_argument("--llama-batch-tokens", type=int, default=1024, help="tokens a llama.cpp batch holds")
    parser.add_argument("--llama-no-flash-attn", action="store_true", help="llama.cpp without flash attention")
    parser.add_argument("--plain-llama-cpp", action="store_true",
                        help="also compare llama.cpp's own pooling (what llama-server gives) with LLM2Vec's")
    args = parser.parse_args()

    pairs = read_sts_tsv(args.data)
    sentences = pairs.sentences1 + pairs.sentences2
    if args.limit:
        sentences = sentences[: args.limit]
    encode_kwargs = {"batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens or None}
    print(f"{args.model}, {len(sentences)} sentences, {encode_kwargs}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    results, reference = [], None
    for dtype in args.dtypes:
        result, vectors = run(args.model, dtype, sentences, pairs, **encode_kwargs)
        reference = vectors if dtype == "float32" else reference
        results.append(add_parity(result, vectors, reference))
    for type in args.llama_cpp:
        result, vectors = run_llama_cpp(args.model, type, sentences, pairs, args.llama_batch_tokens,
                                        flash_attn=not args.llama_no_flash_attn)
        results.append(add_parity(result, vectors, reference))
    print(f"{'dtype':<17} {'sent/s':>7} {'tok/s':>7} {'model GFLOP/s':>13} {'matmul GFLOP/s':>15} "
          f"{'of matmul':>9} {'spearman':>8} {'cos mean':>8} {'cos min':>8}")
    for r in results:
        matmul = f"{r['matmul_gflops_per_s_before']:.0f}/{r['matmul_gflops_per_s_after']:.0f}"
        spearman = "-" if r["spearman"] is None else f"{r['spearman']:.2f}"
        parity = f"{r['cosine_mean']:8.5f} {r['cosine_min']:8.5f}" if "cosine_mean" in r else f"{'-':>8} {'-':>8}"
        print(f"{r['dtype']:<17} {r['sentences_per_s']:7.1f} {r['tokens_per_s']:7.0f} {r['model_gflops_per_s']:13.0f} "
              f"{matmul:>15} {r['fraction_of_matmul']:9.1%} {spearman:>8} {parity}")
    if args.plain_llama_cpp:
        plain = plain_llama_cpp_parity(args.model, sentences, pairs, "Retrieve semantically similar text:")
        print(f"\n{'llama.cpp pooling, input':<26} {'cos mean':>8} {'cos min':>8} {'spearman llama.cpp':>18} {'LLM2Vec':>8}")
        for r in plain:
            spearmans = [("-" if r[k] is None else f"{r[k]:.2f}") for k in ("spearman_llama_cpp", "spearman_llm2vec")]
            print(f"{r['input']:<26} {r['cosine_mean']:8.5f} {r['cosine_min']:8.5f} {spearmans[0]:>18} {spearmans[1]:>8}")
        results.append({"plain_llama_cpp": plain})
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

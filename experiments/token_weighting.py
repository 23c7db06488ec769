"""Frequency-weighted mean pooling of a trained encoder: SIF weights a / (a + p(token)) (Arora et al.,
2017, "A Simple but Tough-to-Beat Baseline for Sentence Embeddings") and IDF weights, with token
frequencies counted on Wikipedia only (Wiki1M and WikiText sentences). Prints STS-B Spearman x100 of
plain mean pooling and of each weighting; the encoder itself is unchanged.

    python experiments/token_weighting.py <run dir or saved encoder> --splits dev [--pooling-layers 13]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from llm2vec import LLM2Vec
from llm2vec.evaluation.sts import cosine_scores, load_sts
from llm2vec.pooling import mean_pool

DATA = Path(os.environ.get("LLM2VEC_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))
WIKI_FILES = ("wiki1m_first_11914.txt", "wikitext2_sentences.txt")


def token_counts(tokenizer, texts: list[str]) -> np.ndarray:
    """How often each token id occurs in `texts` (no special tokens), as an array over the vocabulary."""
    ids = np.concatenate([np.asarray(row, dtype=np.int64)
                          for row in tokenizer(texts, add_special_tokens=False)["input_ids"]])
    return np.bincount(ids, minlength=len(tokenizer)).astype(np.float64)


def weightings(counts: np.ndarray) -> dict[str, np.ndarray]:
    """name -> a weight per token id; "mean" weighs every token 1."""
    total = counts.sum()
    frequency = counts / total
    ways = {"mean": np.ones_like(counts)}
    for a in (1e-2, 1e-3, 1e-4):
        ways[f"sif_a{a:g}"] = a / (a + frequency)
    ways["idf"] = np.log((total + 1) / (counts + 1))
    return ways


def embed(encoder: LLM2Vec, texts: list[str], ways: dict[str, np.ndarray],
          batch_size: int = 64) -> dict[str, np.ndarray]:
    """name -> embeddings of `texts`, each weighting's mean pooling with every text token weighted by
    its token's weight. One forward pass a batch serves them all: a hook catches the token states the
    encoder pools (its pooled layers, through the final norm) and each weighting pools them."""
    tables = {name: torch.from_numpy(weights) for name, weights in ways.items()}
    caught = {}
    hook = encoder.pooling.register_forward_hook(lambda module, args, output: caught.update(states=args[0]))
    chunks = {name: [] for name in tables}
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                features = encoder.tokenize(texts[start : start + batch_size])
                encoder(features)
                for name, table in tables.items():
                    token_weights = features["embed_mask"] * table[features["input_ids"]]
                    chunks[name].append(mean_pool(caught["states"], token_weights).float().numpy())
    finally:
        hook.remove()
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoder")
    parser.add_argument("--splits", nargs="+", default=["dev"], choices=["dev", "test"])
    parser.add_argument("--pooling-layers", nargs="+", type=int, help="the layers to pool (default: the saved encoder's)")
    args = parser.parse_args()
    encoder = LLM2Vec.from_pretrained(args.encoder, pooling_layers=args.pooling_layers).eval()
    if encoder.pooling.mode != "mean":
        raise SystemExit(f"{args.encoder} pools with {encoder.pooling.mode!r}: the weightings reweigh mean pooling")
    wiki = [line.strip() for name in WIKI_FILES
            for line in (DATA / "wiki" / name).open(encoding="utf-8") if line.strip()]
    ways = weightings(token_counts(encoder.tokenizer, wiki))
    for split in args.splits:
        pairs = load_sts(DATA / "sts" / f"STSB-{split}.tsv", split=split)
        unique = sorted(set(pairs.sentences1) | set(pairs.sentences2))  # each sentence encoded once, as predict_sts does
        index = {sentence: i for i, sentence in enumerate(unique)}
        first, second = [index[s] for s in pairs.sentences1], [index[s] for s in pairs.sentences2]
        for name, vectors in embed(encoder, unique, ways).items():
            cosine = cosine_scores(vectors[first], vectors[second])
            print(f"STSB-{split}\t{name}\t{100 * spearmanr(cosine, pairs.scores).correlation:.2f}", flush=True)


if __name__ == "__main__":
    main()

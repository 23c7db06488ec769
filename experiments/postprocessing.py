"""Unsupervised post-processing of an encoder's embeddings, fitted on Wiki1M sentences only: centering,
removing the top principal directions (Mu & Viswanath, 2018, "All-but-the-Top") and whitening (Su et
al., 2021, "Whitening Sentence Representations"). Prints STS-B Spearman x100 of each.

    python experiments/postprocessing.py <run dir or saved encoder> --splits dev
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from llm2vec import LLM2Vec
from llm2vec.evaluation.sts import load_sts

DATA = Path(os.environ.get("LLM2VEC_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))


def transforms(fit: np.ndarray) -> dict:
    """name -> function of an (n, hidden) array, each fitted on the rows of `fit`."""
    mean = fit.mean(axis=0)
    _, singular, directions = np.linalg.svd(fit - mean, full_matrices=False)

    def drop(k):
        return lambda x: (x - mean) - (x - mean) @ directions[:k].T @ directions[:k]

    def whiten(k):
        return lambda x: (x - mean) @ directions[:k].T / singular[:k]

    return {"raw": lambda x: x, "center": lambda x: x - mean, "drop1": drop(1), "drop2": drop(2),
            "drop5": drop(5), "whiten256": whiten(256), "whiten_all": whiten(len(singular))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoder")
    parser.add_argument("--splits", nargs="+", default=["dev"], choices=["dev", "test"])
    parser.add_argument("--fit-sentences", type=int, default=2000)
    args = parser.parse_args()
    encoder = LLM2Vec.from_pretrained(args.encoder).eval()
    wiki = [line.strip() for line in (DATA / "wiki" / "wiki1m_first_11914.txt").open(encoding="utf-8") if line.strip()]
    random.Random(0).shuffle(wiki)

    def embed(texts: list[str]) -> np.ndarray:
        return encoder.encode(texts, batch_size=64, show_progress_bar=False).astype(np.float64)

    ways = transforms(embed(wiki[: args.fit_sentences]))
    for split in args.splits:
        pairs = load_sts(DATA / "sts" / f"STSB-{split}.tsv", split=split)
        first, second = embed(pairs.sentences1), embed(pairs.sentences2)
        for name, transform in ways.items():
            a, b = transform(first), transform(second)
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            print(f"STSB-{split}\t{name}\t{100 * spearmanr(cosine, pairs.scores).correlation:.2f}")


if __name__ == "__main__":
    main()

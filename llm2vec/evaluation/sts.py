"""Semantic textual similarity: Spearman and Pearson (x100) of cosine similarity against gold scores.

A task is read from a local TSV (`sentence1<TAB>sentence2<TAB>score[...]`, as in ../shared/data/sts)
or, online, from a hub dataset with `sentence1`, `sentence2`, `score` columns (e.g.
`mteb/stsbenchmark-sts`). Scores keep their scale: both correlations ignore it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr


@dataclass
class STSPairs:
    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray


def read_sts_tsv(path: str | Path, name: str | None = None) -> STSPairs:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STS file {str(path)!r} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or not {"sentence1", "sentence2", "score"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a TSV with columns sentence1, sentence2, score")
    return STSPairs(
        name or path.stem,
        [r["sentence1"] for r in rows],
        [r["sentence2"] for r in rows],
        np.array([float(r["score"]) for r in rows]),
    )


def load_hub_sts(dataset: str, split: str = "test", name: str | None = None) -> STSPairs:
    from datasets import load_dataset

    data = load_dataset(dataset, split=split)
    return STSPairs(name or dataset, list(data["sentence1"]), list(data["sentence2"]), np.array(data["score"], float))


def load_sts(source: str | Path, split: str = "test", name: str | None = None) -> STSPairs:
    """A local TSV path, or a hub dataset id when no such file exists."""
    if Path(source).suffix in (".tsv", ".csv") or Path(source).exists():
        return read_sts_tsv(source, name)
    return load_hub_sts(str(source), split, name)


def cosine_scores(embeddings1: np.ndarray, embeddings2: np.ndarray) -> np.ndarray:
    a = embeddings1 / np.linalg.norm(embeddings1, axis=1, keepdims=True).clip(min=1e-12)
    b = embeddings2 / np.linalg.norm(embeddings2, axis=1, keepdims=True).clip(min=1e-12)
    return (a * b).sum(axis=1)


def evaluate_sts(encoder, pairs: STSPairs, instruction: str | None = None, batch_size: int = 64,
                 show_progress_bar: bool | None = None) -> dict[str, float]:
    """Encode each distinct sentence once; return spearman and pearson x100 of cosine vs gold."""
    unique = sorted(set(pairs.sentences1) | set(pairs.sentences2))
    inputs = [[instruction, s] for s in unique] if instruction else unique
    vectors = encoder.encode(inputs, batch_size=batch_size, show_progress_bar=show_progress_bar)
    index = {s: i for i, s in enumerate(unique)}
    e1 = vectors[[index[s] for s in pairs.sentences1]]
    e2 = vectors[[index[s] for s in pairs.sentences2]]
    predicted = cosine_scores(e1, e2)
    return {
        "spearman": 100 * float(spearmanr(predicted, pairs.scores).statistic),
        "pearson": 100 * float(pearsonr(predicted, pairs.scores).statistic),
        "pairs": len(pairs.scores),
    }


def evaluate_sts_tasks(encoder, tasks: list[dict], instruction: str | None = None, batch_size: int = 64,
                       show_progress_bar: bool | None = None) -> dict[str, dict]:
    """Each task is a dict with `name`, and `path` (a local TSV) and/or `hub` + `split` (used when
    the path is missing). Returns {task name: scores}."""
    results = {}
    for task in tasks:
        path = task.get("path")
        if path and Path(path).is_file():
            pairs = read_sts_tsv(path, task["name"])
        elif task.get("hub"):
            pairs = load_hub_sts(task["hub"], task.get("split", "test"), task["name"])
        else:
            raise FileNotFoundError(f"STS task {task['name']!r}: {path!r} does not exist and no hub dataset is named")
        results[task["name"]] = evaluate_sts(encoder, pairs, instruction, batch_size, show_progress_bar)
    return results


def format_table(results: dict[str, dict]) -> str:
    lines = [f"{'task':<16} {'spearman':>9} {'pearson':>9} {'pairs':>6}"]
    for name, scores in results.items():
        lines.append(f"{name:<16} {scores['spearman']:9.2f} {scores['pearson']:9.2f} {scores['pairs']:6d}")
    return "\n".join(lines)

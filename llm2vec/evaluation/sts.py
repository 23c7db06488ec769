"""Semantic textual similarity: Spearman and Pearson (x100) of cosine similarity against gold scores.

A task is a dict (one entry of `conf/eval/*.yaml`'s `tasks`):

    name: STS12                     # the row in the table and the key in the JSON
    path: .../sts/STS12-test.tsv    # a local TSV: sentence1<TAB>sentence2<TAB>score[...] (as ../shared/data/sts)
    hub: mteb/sts12-sts             # used when `path` is missing: a hub dataset with the same columns
    split: test                     # the hub split
    score_range: [0, 5]             # the gold scale, mapped to [0, 1] so every task has one scale
    instruction: "..."              # optional: overrides the suite's instruction for this task

A task with neither a local file nor a reachable hub dataset is skipped, and the reason is reported.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from llm2vec import atomic
from llm2vec.evaluation.hub import HubUnavailable, load_hub_dataset
from llm2vec.text_files import read_tsv

logger = logging.getLogger(__name__)

DEFAULT_SCORE_RANGE = (0.0, 5.0)
TASK_KEYS = {"name", "path", "hub", "split", "score_range", "instruction"}


@dataclass
class STSPairs:
    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray


class TaskUnavailable(RuntimeError):
    """A task's data can be had neither from its local file nor from the hub."""


def read_sts_tsv(path: str | Path, name: str | None = None) -> STSPairs:
    """A UTF-8 TSV with columns sentence1, sentence2 and score (others ignored); a score that is not a
    finite number, or one gold score for every pair, is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STS file {str(path)!r} does not exist")
    rows = read_tsv(path, ("sentence1", "sentence2", "score"))
    scores = []
    for line, row in rows:
        try:
            score = float(row["score"])
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise ValueError(f"{path}:{line}: score {row['score']!r:.40} is not a finite number")
        scores.append(score)
    if len(rows) > 1 and len(set(scores)) == 1:  # Spearman and Pearson are undefined (NaN)
        raise ValueError(f"{path}: every pair has the score {scores[0]}: correlations need varying scores")
    return STSPairs(
        name or path.stem,
        [r["sentence1"] for _, r in rows],
        [r["sentence2"] for _, r in rows],
        np.array(scores),
    )


def load_hub_sts(dataset: str, split: str = "test", name: str | None = None) -> STSPairs:
    """A hub dataset with `sentence1`, `sentence2`, `score` columns; `HubUnavailable` when offline."""
    data = load_hub_dataset(dataset, split=split)
    return STSPairs(name or dataset, list(data["sentence1"]), list(data["sentence2"]), np.array(data["score"], float))


def load_sts(source: str | Path, split: str = "test", name: str | None = None) -> STSPairs:
    """A local TSV path, or a hub dataset id when no such file exists."""
    if Path(source).suffix in (".tsv", ".csv") or Path(source).exists():
        return read_sts_tsv(source, name)
    return load_hub_sts(str(source), split, name)


def normalize_scores(scores: np.ndarray, score_range) -> np.ndarray:
    low, high = (float(x) for x in score_range)
    if not high > low:
        raise ValueError(f"score_range {list(score_range)} must be [low, high] with low < high")
    return (scores - low) / (high - low)


def load_task(task: dict) -> STSPairs:
    """The pairs of one task, gold scores mapped to [0, 1]; `TaskUnavailable` says why there are none."""
    unknown = set(task) - TASK_KEYS
    if "name" not in task or unknown:
        raise ValueError(f"STS task {task!r}: needs `name`; allowed keys are {', '.join(sorted(TASK_KEYS))}")
    path, hub = task.get("path"), task.get("hub")
    if path and Path(path).is_file():
        pairs = read_sts_tsv(path, task["name"])
    elif hub:
        try:
            pairs = load_hub_sts(hub, task.get("split", "test"), task["name"])
        except HubUnavailable as error:
            local = f"no local file {path}; " if path else ""
            raise TaskUnavailable(f"{local}hub dataset {hub} unavailable ({error})") from error
    elif path:
        raise TaskUnavailable(f"no local file {path} and no hub dataset named")
    else:
        raise ValueError(f"STS task {task['name']!r} names neither a `path` nor a `hub` dataset")
    pairs.scores = normalize_scores(pairs.scores, task.get("score_range", DEFAULT_SCORE_RANGE))
    return pairs


def cosine_scores(embeddings1: np.ndarray, embeddings2: np.ndarray) -> np.ndarray:
    a = embeddings1 / np.linalg.norm(embeddings1, axis=1, keepdims=True).clip(min=1e-12)
    b = embeddings2 / np.linalg.norm(embeddings2, axis=1, keepdims=True).clip(min=1e-12)
    return (a * b).sum(axis=1)


def predict_sts(encoder, pairs: STSPairs, instruction: str | None = None, batch_size: int = 64,
                show_progress_bar: bool | None = None, max_batch_tokens: int | None = None) -> np.ndarray:
    """The cosine similarity of each pair; each distinct sentence is encoded once."""
    unique = sorted(set(pairs.sentences1) | set(pairs.sentences2))
    inputs = [[instruction, s] for s in unique] if instruction else unique
    vectors = encoder.encode(inputs, batch_size=batch_size, show_progress_bar=show_progress_bar,
                             max_batch_tokens=max_batch_tokens)
    index = {s: i for i, s in enumerate(unique)}
    e1 = vectors[[index[s] for s in pairs.sentences1]]
    e2 = vectors[[index[s] for s in pairs.sentences2]]
    return cosine_scores(e1, e2)


def sts_scores(predicted: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    return {
        "spearman": 100 * float(spearmanr(predicted, gold).statistic),
        "pearson": 100 * float(pearsonr(predicted, gold).statistic),
        "pairs": len(gold),
    }


def evaluate_sts(encoder, pairs: STSPairs, instruction: str | None = None, batch_size: int = 64,
                 show_progress_bar: bool | None = None, max_batch_tokens: int | None = None) -> dict[str, float]:
    """Spearman and Pearson x100 of cosine similarity vs gold."""
    predicted = predict_sts(encoder, pairs, instruction, batch_size, show_progress_bar, max_batch_tokens)
    return sts_scores(predicted, pairs.scores)


def run_sts_suite(encoder, tasks: list[dict], instruction: str | None = None, batch_size: int = 64,
                  show_progress_bar: bool | None = None, max_batch_tokens: int | None = None,
                  predictions_file: str | Path | None = None) -> tuple[dict[str, dict], dict[str, str]]:
    """Evaluate every available task. Returns ({task: scores}, {skipped task: why}).

    `predictions_file`: also write {task: {"predicted": [cosine per pair], "gold": [score per pair]}}
    there (JSON), which `llm2vec.compare` resamples for its paired bootstrap between runs."""
    results, skipped, predictions = {}, {}, {}
    for task in tasks:
        try:
            pairs = load_task(task)
        except TaskUnavailable as error:
            skipped[task["name"]] = str(error)
            logger.warning("skipped STS task %s: %s", task["name"], error)
            continue
        task_instruction = task.get("instruction", instruction)
        predicted = predict_sts(encoder, pairs, task_instruction, batch_size, show_progress_bar, max_batch_tokens)
        results[task["name"]] = {**sts_scores(predicted, pairs.scores), "instruction": task_instruction}
        predictions[task["name"]] = {"predicted": [round(float(p), 7) for p in predicted],
                                     "gold": [float(g) for g in pairs.scores]}
    if predictions_file is not None:
        atomic.write_text(predictions_file, json.dumps(predictions) + "\n")
    return results, skipped


def evaluate_sts_tasks(encoder, tasks: list[dict], instruction: str | None = None, batch_size: int = 64,
                       show_progress_bar: bool | None = None, max_batch_tokens: int | None = None) -> dict[str, dict]:
    """{task name: scores} for the tasks that could be loaded; the others are logged as skipped."""
    return run_sts_suite(encoder, tasks, instruction, batch_size, show_progress_bar, max_batch_tokens)[0]


def average_scores(results: dict[str, dict]) -> dict[str, float] | None:
    if not results:
        return None
    return {key: float(np.mean([r[key] for r in results.values()])) for key in ("spearman", "pearson")}


def format_table(results: dict[str, dict], skipped: dict[str, str] | None = None) -> str:
    lines = [f"{'task':<16} {'spearman':>9} {'pearson':>9} {'pairs':>6}"]
    for name, scores in results.items():
        lines.append(f"{name:<16} {scores['spearman']:9.2f} {scores['pearson']:9.2f} {scores['pairs']:6d}")
    if len(results) > 1:
        mean = average_scores(results)
        lines.append(f"{'average':<16} {mean['spearman']:9.2f} {mean['pearson']:9.2f}")
    for name, reason in (skipped or {}).items():
        lines.append(f"{name:<16} skipped: {reason}")
    return "\n".join(lines)

"""experiments/seed_ensemble.py: the mean of the members' saved cosines is the concatenation's cosine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import load_experiment


def load_script():
    return load_experiment("seed_ensemble")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (unit(a) * unit(b)).sum(axis=1)


def write_run(run_dir: Path, predicted: np.ndarray, gold: np.ndarray) -> Path:
    run_dir.mkdir()
    predictions = {"STSB-test": {"predicted": predicted.tolist(), "gold": gold.tolist()}}
    (run_dir / "sts_predictions.json").write_text(json.dumps(predictions))
    return run_dir


def test_the_ensemble_scores_as_the_concatenated_unit_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, size=60)
    meaning = rng.normal(size=(60, 8))
    members = []  # each member: noisy embeddings of both sides of every pair
    for seed in range(3):
        left = meaning + rng.normal(scale=0.5, size=meaning.shape) + gold[:, None] * 0.2
        right = meaning + rng.normal(scale=2.0, size=meaning.shape)
        members.append((left, right))
    runs = [write_run(tmp_path / f"seed{i}", cosines(l, r), gold) for i, (l, r) in enumerate(members)]
    concatenated = cosines(np.hstack([unit(l) for l, _ in members]), np.hstack([unit(r) for _, r in members]))
    scores = load_script().score_ensemble(runs, "STSB-test")
    assert scores["ensemble"] == pytest.approx(100 * spearmanr(concatenated, gold).statistic, abs=1e-9)
    assert scores["members"] == pytest.approx([100 * spearmanr(cosines(l, r), gold).statistic for l, r in members])
    difference, low, high = scores["difference"]
    assert difference == pytest.approx(scores["ensemble"] - np.mean(scores["members"]))
    assert low <= difference <= high


def test_members_must_have_saved_the_same_pairs(tmp_path):
    script = load_script()
    gold = np.arange(5.0)
    first = write_run(tmp_path / "a", gold, gold)
    with pytest.raises(ValueError, match="at least 2"):
        script.score_ensemble([first], "STSB-test")
    with pytest.raises(FileNotFoundError, match="stage=eval"):
        script.score_ensemble([first, tmp_path], "STSB-test")
    other = write_run(tmp_path / "b", gold, gold[::-1].copy())
    with pytest.raises(ValueError, match="pairs differ"):
        script.score_ensemble([first, other], "STSB-test")

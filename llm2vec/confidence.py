"""Confidence intervals for run comparisons: a Student t interval over seeds, and a paired bootstrap
over the test pairs of an STS task for the difference between two encoders."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000


@dataclass
class SeedStats:
    """A score over seeds: mean, standard deviation (n - 1), n and the t interval of the mean
    (low = high = nan with one seed: one run says nothing about seed-to-seed variation)."""

    mean: float
    std: float
    n: int
    low: float
    high: float


def seed_stats(values: Sequence[float], level: float = LEVEL) -> SeedStats:
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(values) == 0:
        return SeedStats(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(values.mean())
    if len(values) == 1:
        return SeedStats(mean, math.nan, 1, math.nan, math.nan)
    std = float(values.std(ddof=1))
    if std == 0:
        return SeedStats(mean, 0.0, len(values), mean, mean)
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=std / math.sqrt(len(values)))
    return SeedStats(mean, std, len(values), float(low), float(high))


def bootstrap_spearman(predictions: Sequence[np.ndarray], gold: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(samples, runs): Spearman x100 of each run's predictions against gold on each resample of the
    pairs (`indices`: samples x pairs), the same resamples for every run, so differences are paired."""
    gold_ranks = _centred(stats.rankdata(gold[indices], axis=1))
    scores = []
    for predicted in predictions:
        ranks = _centred(stats.rankdata(np.asarray(predicted)[indices], axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):  # a resample of one repeated pair: nan, dropped later
            norm = np.sqrt((ranks**2).sum(axis=1) * (gold_ranks**2).sum(axis=1))
            scores.append(100 * (ranks * gold_ranks).sum(axis=1) / norm)
    return np.stack(scores, axis=1)


def _centred(ranks: np.ndarray) -> np.ndarray:
    return ranks - ranks.mean(axis=1, keepdims=True)


def paired_bootstrap_differences(groups: dict[str, list[np.ndarray]], gold: np.ndarray, reference: str,
                                 samples: int = BOOTSTRAP_SAMPLES, level: float = LEVEL,
                                 seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """For each group of runs (one prediction array per seed, all on the same pairs with `gold`):
    its mean-over-seeds Spearman minus the `reference` group's, and the bootstrap interval of that
    difference, as {group: (difference, low, high)}.

    Each bootstrap sample draws the test pairs with replacement (the same draw for both groups: the
    comparison is paired) and, for each group, its seeds with replacement; the sample's difference is
    the mean Spearman over the drawn seeds minus the reference's. The interval so covers both the
    test set's sampling and the seed-to-seed variation; with one seed per group it is the plain
    paired bootstrap over pairs. A group's seed draws depend on its own predictions only, so its
    interval stays the same whichever other groups share the call."""
    gold = np.asarray(gold, dtype=float)
    rng = np.random.default_rng(seed)
    indices = rng.integers(len(gold), size=(samples, len(gold)))
    names = list(groups)
    flat = [p for name in names for p in groups[name]]
    for predicted in flat:
        if len(predicted) != len(gold):
            raise ValueError(f"predictions for {len(predicted)} pairs against {len(gold)} gold scores")
    per_run = bootstrap_spearman(flat, gold, indices)
    resampled, column = {}, 0
    for name in names:
        runs = per_run[:, column : column + len(groups[name])]
        column += len(groups[name])
        drawn = _seed_rng(groups[name], seed).integers(runs.shape[1], size=runs.shape)  # with replacement
        resampled[name] = np.take_along_axis(runs, drawn, axis=1).mean(axis=1)
    observed = {name: np.mean([_spearman(p, gold) for p in groups[name]]) for name in names}
    tail = 100 * (1 - level) / 2
    differences = {}
    for name in names:
        low, high = np.nanpercentile(resampled[name] - resampled[reference], [tail, 100 - tail])
        differences[name] = (float(observed[name] - observed[reference]), float(low), float(high))
    return differences


def _seed_rng(predictions: Sequence[np.ndarray], seed: int) -> np.random.Generator:
    """A generator keyed by the group's predictions: drawing each group's seeds from one shared stream
    made a row's interval move whenever a row was added before it."""
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(p, dtype=float).tobytes() for p in predictions))
    return np.random.default_rng([seed, int.from_bytes(digest.digest()[:8], "little")])


def _spearman(predicted: np.ndarray, gold: np.ndarray) -> float:
    return 100 * float(stats.spearmanr(predicted, gold).statistic)

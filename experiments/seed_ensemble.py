"""The concatenation ensemble of several trained encoders (e.g. the seeds of one recipe), scored on
STS from the predictions their evaluations saved: no encoding needed.

The ensemble embeds a text as the concatenation of each member's unit-length embedding. Its cosine
is then the mean of the members' cosines, so its STS prediction for a pair is the mean of the
members' saved predictions (`sts_predictions.json`, written by `stage=eval`). It costs the members'
inference together (and their training): an upper bound of what seeds buy, not a recipe.

    python experiments/seed_ensemble.py <run dir> <run dir> ... [--tasks STSB-dev STSB-test]

Prints per task each member's Spearman x100, their mean, the ensemble's, and the ensemble's
difference to the members' mean with a 95% paired bootstrap interval over the pairs (and the
members, drawn with replacement: `llm2vec.confidence.paired_bootstrap_differences`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from llm2vec.compare import read_predictions
from llm2vec.confidence import paired_bootstrap_differences
from llm2vec.evaluation.sts import sts_scores


def ensemble_predictions(run_dirs: Sequence[str | Path], task: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(each member's predictions, gold) of one task; every member must have scored the same pairs."""
    members, gold = [], None
    for run_dir in run_dirs:
        loaded = read_predictions(run_dir, task)
        if loaded is None:
            raise FileNotFoundError(f"{run_dir}: no saved {task} predictions (sts_predictions.json); "
                                    f"run `python run.py stage=eval stage.init_from={run_dir}` first")
        if gold is not None and not np.array_equal(loaded[1], gold):
            raise ValueError(f"{run_dir}: its {task} pairs differ from the first member's")
        members.append(loaded[0])
        gold = loaded[1]
    return members, gold


def score_ensemble(run_dirs: Sequence[str | Path], task: str) -> dict:
    if len(run_dirs) < 2:
        raise ValueError("an ensemble needs at least 2 run dirs")
    members, gold = ensemble_predictions(run_dirs, task)
    ensemble = np.mean(members, axis=0)
    difference = paired_bootstrap_differences({"ensemble": [ensemble], "members": members}, gold, "members")
    return {"members": [sts_scores(m, gold)["spearman"] for m in members],
            "ensemble": sts_scores(ensemble, gold)["spearman"], "difference": difference["ensemble"]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run dirs (or saved encoders) with sts_predictions.json")
    parser.add_argument("--tasks", nargs="+", default=["STSB-dev", "STSB-test"])
    args = parser.parse_args(argv)
    for task in args.tasks:
        scores = score_ensemble(args.runs, task)
        members = " / ".join(f"{s:.2f}" for s in scores["members"])
        diff, low, high = scores["difference"]
        print(f"{task}: members {members} (mean {np.mean(scores['members']):.2f}), ensemble "
              f"{scores['ensemble']:.2f}, ensemble - mean {diff:+.2f} [{low:.2f}, {high:.2f}]")


if __name__ == "__main__":
    main()

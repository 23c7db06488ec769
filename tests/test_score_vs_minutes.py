"""experiments/score_vs_minutes.py: minutes summed over a seed's training runs, scores over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from scipy import stats

from conftest import load_experiment

script = load_experiment("score_vs_minutes")


def write_seed(setting: Path, seed: int, seconds: float | None = None, scores: tuple | None = None) -> None:
    run = setting / f"seed{seed}"
    run.mkdir(parents=True)
    if seconds is not None:
        (run / "train.json").write_text(json.dumps({"steps": 10, "seconds": seconds}))
    if scores is not None:
        dev, test = scores
        (run / "metrics.json").write_text(json.dumps({"STSB-dev": {"spearman": dev, "pairs": 1500},
                                                      "STSB-test": {"spearman": test, "pairs": 1379}}))


@pytest.fixture
def runs(tmp_path):
    for seed, (mntp, simcse, dev, test) in enumerate([(480, 360, 82.0, 75.0), (540, 300, 82.2, 76.0),
                                                      (600, 420, 81.8, 77.0)], 1):
        write_seed(tmp_path / "mntp", seed, seconds=mntp)
        write_seed(tmp_path / "simcse", seed, seconds=simcse)
        write_seed(tmp_path / "eval", seed, scores=(dev, test))
    write_seed(tmp_path / "soup_eval", 1, scores=(82.5, 76.5))
    return tmp_path


def test_a_seed_costs_the_sum_of_its_training_runs_and_scores_are_means_over_seeds(runs):
    row = script.read_recipe({"model": "m", "label": "r", "scores": "eval", "training": ["mntp", "simcse"]}, runs)
    assert row["seeds"] == ["seed1", "seed2", "seed3"]
    assert row["minutes"] == pytest.approx([14.0, 14.0, 17.0])
    test = row["scores"]["STSB-test"]
    low, high = stats.t.interval(0.95, 2, loc=76.0, scale=1.0 / 3**0.5)
    assert (test.mean, test.low, test.high) == pytest.approx((76.0, low, high))
    assert row["scores"]["STSB-dev"].mean == pytest.approx(82.0)


def test_a_pooled_recipe_costs_the_training_of_the_seeds_it_was_made_from(runs):
    row = script.read_recipe({"model": "m", "label": "soup", "scores": "soup_eval",
                              "training": ["mntp", "simcse"], "pooled": [1, 3]}, runs)
    assert row["minutes"] == pytest.approx([(480 + 600 + 360 + 420) / 60])  # not seed 2's runs
    assert row["scores"]["STSB-test"].n == 1
    assert "(one encoder)" in script.markdown([row])


def test_a_scored_seed_without_its_training_run_is_refused(runs):
    write_seed(runs / "eval", 4, scores=(80.0, 70.0))
    with pytest.raises(FileNotFoundError, match="seed4 was scored but not trained under .*simcse"):
        script.read_recipe({"model": "m", "label": "r", "scores": "eval", "training": ["mntp", "simcse"]}, runs)
    with pytest.raises(FileNotFoundError, match="seed7 was scored but not trained"):
        script.read_recipe({"model": "m", "label": "soup", "scores": "soup_eval", "training": ["mntp"],
                            "pooled": [1, 7]}, runs)


def test_a_missing_setting_or_train_json_is_named(runs):
    with pytest.raises(FileNotFoundError, match="nowhere: no such setting dir"):
        script.read_recipe({"model": "m", "label": "r", "scores": "nowhere", "training": []}, runs)
    write_seed(runs / "untimed", 1)
    with pytest.raises(FileNotFoundError, match="no train.json"):
        script.read_recipe({"model": "m", "label": "r", "scores": "soup_eval", "training": ["untimed"]}, runs)


def test_an_evaluation_without_sts_b_is_named(runs):
    (runs / "eval" / "seed2" / "metrics.json").write_text(json.dumps({"SICK-R": {"spearman": 70.0}}))
    with pytest.raises(ValueError, match="seed2: no STSB-dev, STSB-test in metrics.json"):
        script.read_recipe({"model": "m", "label": "r", "scores": "eval", "training": ["mntp", "simcse"]}, runs)


def test_main_writes_the_table_and_the_plot(runs, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"title": "t", "lines": {"target": 77.0}, "recipes": [
        {"model": "m", "label": "recipe", "scores": "eval", "training": ["mntp", "simcse"]},
        {"model": "m2", "label": "soup", "scores": "soup_eval", "training": ["mntp"], "pooled": [1, 2, 3]}]}))
    out = tmp_path / "out"
    script.main([str(spec), "--runs", str(runs), "--out", str(out)])
    table = (out / "results.md").read_text()
    assert "| m | recipe | 3 | 14.0-17.0 | 82.00 | 76.00 [" in table
    assert "| m2 | soup | 1 | 27.0 | 82.50 | 76.50 (one encoder) |" in table
    assert (out / "score_vs_minutes.png").stat().st_size > 1000

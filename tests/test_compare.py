"""The run comparison: table rows match the runs, files exist and parse, plots are real PNGs."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import spearmanr

from llm2vec.compare import compare, find_runs
from llm2vec.confidence import bootstrap_spearman, paired_bootstrap_differences, seed_stats

ROOT = Path(__file__).resolve().parents[1]


def fake_run(root: Path, overrides: list[str], test_score: float, losses: list[float],
             predicted: np.ndarray | None = None, gold: np.ndarray | None = None) -> Path:
    run = root / str(len(list(root.iterdir())) if root.exists() else 0)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / "metrics.json").write_text(json.dumps({"STSB-test": {"spearman": test_score, "pearson": 1.0, "pairs": 9}}))
    if predicted is not None:
        predictions = {"STSB-test": {"predicted": predicted.tolist(), "gold": gold.tolist()}}
        (run / "sts_predictions.json").write_text(json.dumps(predictions))
    (run / "csv").mkdir()
    with (run / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "train/loss"])
        writer.writerows([[0, step, loss] for step, loss in enumerate(losses)])
    return run


def test_table_plots_and_html_from_a_sweep(tmp_path):
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    scores = {}
    for ratio in ("0.1", "0.4", "0.8"):
        for pooling in ("mean", "weighted_mean"):
            score = float(ratio) * 10 + (1 if pooling == "mean" else 0)
            fake_run(sweep, ["model=tiny_llama", f"model.mask_ratio={ratio}", f"pooling={pooling}"], score,
                     [3.0, 2.0, 1.5])
            scores[(ratio, pooling)] = score
    written = compare([sweep], tmp_path / "out")

    rows = list(csv.reader(written["csv"].open()))
    header, body = rows[0], rows[1:]
    assert header[:2] == ["model.mask_ratio", "pooling"]  # what varies; `model` is the same for all
    assert "STSB-test.spearman" in header and "STSB-test.pairs" not in header
    assert len(body) == 6
    column, steps = header.index("STSB-test.spearman"), header.index("train.steps")
    for cells in body:
        assert float(cells[column]) == pytest.approx(scores[(cells[0], cells[1])])
        assert float(cells[steps]) == 3  # from the training curve
    markdown = written["markdown"].read_text()
    assert "All runs: model=tiny_llama" in markdown
    assert sum(line.startswith("|") for line in markdown.splitlines()) == 2 + 6
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["bars_pooling.png", "score_vs_model_mask_ratio.png", "training_curves.png"]
    for png in (tmp_path / "out").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = written["html"].read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page and "weighted_mean" in page


def test_one_setting_over_seeds_plots_only_its_training_curves(tmp_path):
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    for seed, score in ((1, 60.0), (2, 50.0), (3, 52.0)):
        fake_run(sweep, ["model.mask_ratio=0.8", "data.batch_size=32", f"seed={seed}"], score, [3.0, 2.0])
    written = compare([sweep], tmp_path / "out")
    header, *body = list(csv.reader(written["csv"].open()))
    assert len(body) == 1 and "model.mask_ratio" in header  # the one row names its settings
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == ["training_curves.png"]


def test_settings_that_come_with_a_plotted_number_get_no_bars(tmp_path):
    """MNTP 0 / 250 steps, each with its own variant and masking (blank for MNTP 0): one curve over
    the steps, no bars of the masking ratio (one bar would be unlabelled); a key the number does not
    decide (pooling) still gets its bars."""
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    for pooling in ("mean", "eos_token"):
        for seed in (1, 2):
            fake_run(sweep, ["+mntp_steps=0", "variant=bi_simcse", f"pooling={pooling}", f"seed={seed}"],
                     57.0 + seed, [2.0, 1.0])
            fake_run(sweep, ["+mntp_steps=250", "variant=bi_mntp_simcse", "model.mask_ratio=0.2",
                             f"pooling={pooling}", f"seed={seed}"], 61.0 + seed, [2.0, 1.0])
    compare([sweep], tmp_path / "out")
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["bars_pooling.png", "score_vs_mntp_steps.png", "training_curves.png"]


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        find_runs([tmp_path])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_runs([tmp_path / "missing"])


def test_two_job_sweep_through_run_py(tmp_path):
    """A real 2-job Hydra sweep on the tiny model, then the comparison of its runs."""
    sts = tmp_path / "sts.tsv"
    pairs = [("a cat sits", "a cat is sitting", 4.5), ("a dog runs", "the stock fell", 0.2),
             ("men play chess", "two men play a game", 3.4), ("it rains", "weather is wet", 2.9)]
    sts.write_text("sentence1\tsentence2\tscore\n" + "".join(f"{a}\t{b}\t{s}\n" for a, b, s in pairs))
    sweep = tmp_path / "sweep"
    command = [sys.executable, "run.py", "-m", "model=tiny_llama", "pooling=mean,weighted_mean", "seed=1,2",
               f"hydra.sweep.dir={sweep}", f"eval.tasks=[{{name: tiny, path: {sts}}}]"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((sweep / "0" / "sts_predictions.json").read_text())["tiny"]
    assert len(saved["predicted"]) == len(saved["gold"]) == 4
    written = compare([sweep], tmp_path / "out")
    rows = list(csv.reader(written["csv"].open()))
    header = rows[0]
    assert [r[header.index("pooling")] for r in rows[1:]] == ["mean", "weighted_mean"]  # seeds 1, 2 in one row
    for cells in rows[1:]:
        assert cells[header.index("n")] == "2"
        assert -100 <= float(cells[header.index("tiny.spearman")]) <= 100
        # An untrained encoder does not depend on the seed: std 0, and the interval is the point.
        assert float(cells[header.index("± std")]) == 0
    assert "seeds 1, 2" in written["markdown"].read_text()


def test_t_interval_over_seeds_by_hand():
    stats = seed_stats([70.0, 72.0, 74.0])
    # mean 72, sample std 2, t(0.975, 2 degrees of freedom) = 4.3027 (a t table): 72 -+ 4.3027 * 2 / sqrt(3)
    assert (stats.mean, stats.std, stats.n) == (72.0, 2.0, 3)
    assert stats.low == pytest.approx(72 - 4.3027 * 2 / 3**0.5, abs=1e-3)
    assert stats.high == pytest.approx(76.9683, abs=1e-3)
    one = seed_stats([5.0])
    assert one.n == 1 and np.isnan(one.std) and np.isnan(one.low)


def noisy(gold: np.ndarray, noise: float, seed: int) -> np.ndarray:
    return gold + np.random.default_rng(seed).normal(0, noise, len(gold))


GOLD = np.random.default_rng(0).uniform(0, 5, 400)


def test_bootstrap_spearman_matches_scipy_and_its_known_answers():
    good = noisy(GOLD, 1.0, seed=1)
    unresampled = bootstrap_spearman([good], GOLD, np.arange(len(GOLD))[None])[0, 0]
    assert unresampled == pytest.approx(100 * spearmanr(good, GOLD).statistic)
    # Identical encoders: the same resamples give the same Spearman, the difference is 0 in every one.
    same = paired_bootstrap_differences({"a": [good], "b": [good.copy()]}, GOLD, reference="a")
    assert same["b"] == (0.0, 0.0, 0.0)
    # A clearly better encoder: its interval excludes 0 and holds the observed difference.
    versus = paired_bootstrap_differences({"good": [good], "bad": [noisy(GOLD, 4.0, seed=2)]}, GOLD, "good")
    difference, low, high = versus["bad"]
    assert high < 0 and low < difference < high
    assert versus["good"] == (0.0, 0.0, 0.0)
    # Two equally good encoders with independent noise: the interval holds 0.
    tie = paired_bootstrap_differences({"x": [good], "y": [noisy(GOLD, 1.0, seed=3)]}, GOLD, "x")
    assert tie["y"][1] < 0 < tie["y"][2]
    # Seeds resampled too: seed-to-seed spread widens the interval.
    seeds = [noisy(GOLD, 1.0, seed=s) for s in (4, 5, 6)]
    spread = [noisy(GOLD, noise, seed=s) for s, noise in ((7, 0.3), (8, 1.0), (9, 3.0))]
    narrow = paired_bootstrap_differences({"x": seeds, "y": [noisy(GOLD, 1.0, seed=s) for s in (10, 11, 12)]}, GOLD, "x")
    wide = paired_bootstrap_differences({"x": seeds, "y": spread}, GOLD, "x")
    assert wide["y"][2] - wide["y"][1] > 2 * (narrow["y"][2] - narrow["y"][1])


def test_a_groups_bootstrap_interval_does_not_depend_on_the_other_groups():
    """Adding a row to a table, or listing its rows in another order, leaves every other row's
    interval against the reference as it was."""
    seeds = {name: [noisy(GOLD, noise, seed=10 * index + s) for s in range(3)]
             for index, (name, noise) in enumerate((("ref", 1.0), ("a", 1.5), ("b", 2.0)))}
    alone = paired_bootstrap_differences({"ref": seeds["ref"], "b": seeds["b"]}, GOLD, "ref", samples=300)
    with_a = paired_bootstrap_differences(seeds, GOLD, "ref", samples=300)
    reordered = paired_bootstrap_differences({"b": seeds["b"], "a": seeds["a"], "ref": seeds["ref"]}, GOLD, "ref",
                                             samples=300)
    assert with_a["b"] == alone["b"] == reordered["b"]
    assert with_a["a"] == reordered["a"]
    assert with_a["b"][1] < with_a["b"][0] < with_a["b"][2]  # a real interval, not a point


def test_seed_groups_intervals_and_the_paired_bootstrap(tmp_path):
    """Three variants x three seeds: one row each, the t interval by hand, and each row's difference
    to the best with a bootstrap interval over the saved test-pair predictions."""
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    scores = {"good": [70.0, 72.0, 74.0], "twin": [70.0, 72.0, 74.0], "bad": [40.0, 41.0, 45.0]}
    noise = {"good": 1.0, "twin": 1.0, "bad": 4.0}
    for variant, values in scores.items():
        for seed, value in zip((1, 2, 3), values):
            # twin's predictions are good's, seed for seed: identical encoders
            predicted = noisy(GOLD, noise[variant], seed=seed + (100 if variant == "bad" else 0))
            fake_run(sweep, ["model=tiny_llama", f"variant={variant}", f"seed={seed}"], value, [2.0, 1.0],
                     predicted, GOLD)
    written = compare([sweep], tmp_path / "out")
    rows = list(csv.reader(written["csv"].open()))
    header, body = rows[0], {cells[0]: cells for cells in rows[1:]}
    assert header[:3] == ["variant", "n", "STSB-test.spearman"] and set(body) == {"good", "twin", "bad"}
    good, twin, bad = body["good"], body["twin"], body["bad"]
    assert good[header.index("n")] == "3"
    assert float(good[2]) == pytest.approx(72.0) and float(good[header.index("± std")]) == pytest.approx(2.0)
    assert good[header.index("95% CI")] == "[67.03, 76.97]"
    assert float(bad[2]) == pytest.approx(42.0)
    assert good[header.index("≈ best")] == "best" and good[header.index("Δ best")] == ""
    # The twin ties with the best (mean 72 too): its intervals overlap, the difference interval holds 0.
    assert twin[header.index("≈ best")] == "yes"
    low, high = (float(x) for x in twin[header.index("Δ best 95% CI")].strip("[]").split(", "))
    # (seeds resampled independently per row, so not exactly 0: about the seeds' own spread)
    assert float(twin[header.index("Δ best")]) == 0 and low <= 0 <= high and high - low < 6
    # The bad variant: clearly worse, its difference interval excludes 0 and its t interval the best's.
    assert bad[header.index("≈ best")] == "no"
    low, high = (float(x) for x in bad[header.index("Δ best 95% CI")].strip("[]").split(", "))
    assert high < 0
    page = written["html"].read_text()
    assert "class='best'" in page and "class='overlaps'" in page and "paired bootstrap" in page
    assert "seeds 1, 2, 3" in written["markdown"].read_text()
    assert (tmp_path / "out" / "bars_variant.png").is_file()


def test_resumed_and_gradient_cached_runs_join_their_setting(tmp_path):
    """`resume=true` and gradient caching change how a run executes, not what it trains: such a seed
    stays in its setting's row; a real change (the batch size) still makes a row of its own."""
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    fake_run(sweep, ["data.batch_size=64", "seed=1"], 70.0, [1.0])
    fake_run(sweep, ["data.batch_size=64", "seed=2", "resume=true", "stage.module.mini_batch_size=32"], 72.0, [1.0])
    fake_run(sweep, ["data.batch_size=64", "seed=3", "stage.module.mini_batch_size=32"], 74.0, [1.0])
    fake_run(sweep, ["data.batch_size=32", "seed=1"], 60.0, [1.0])
    written = compare([sweep], tmp_path / "out")
    rows = list(csv.reader(written["csv"].open()))
    header, body = rows[0], {cells[0]: cells for cells in rows[1:]}
    assert header[0] == "data.batch_size" and "resume" not in header
    assert "stage.module.mini_batch_size" not in header and set(body) == {"64", "32"}
    assert body["64"][header.index("n")] == "3"
    assert float(body["64"][header.index("STSB-test.spearman")]) == pytest.approx(72.0)

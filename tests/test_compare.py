"""The run comparison: table rows match the runs, files exist and parse, plots are real PNGs."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm2vec.compare import compare, find_runs

ROOT = Path(__file__).resolve().parents[1]


def fake_run(root: Path, overrides: list[str], test_score: float, losses: list[float]) -> Path:
    run = root / str(len(list(root.iterdir())) if root.exists() else 0)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / "metrics.json").write_text(json.dumps({"STSB-test": {"spearman": test_score, "pearson": 1.0, "pairs": 9}}))
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
    command = [sys.executable, "run.py", "-m", "model=tiny_llama", "pooling=mean,weighted_mean",
               f"hydra.sweep.dir={sweep}", f"eval.tasks=[{{name: tiny, path: {sts}}}]"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    written = compare([sweep], tmp_path / "out")
    rows = list(csv.reader(written["csv"].open()))
    assert [r[rows[0].index("pooling")] for r in rows[1:]] == ["mean", "weighted_mean"]
    for cells in rows[1:]:
        assert -100 <= float(cells[rows[0].index("tiny.spearman")]) <= 100

"""The STS suite: local TSVs, normalised scores, per-task instructions, skipping what cannot be had
offline (with the reason), the run_evaluation entry and the eval configs."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from llm2vec import LLM2Vec
from llm2vec.evaluation import hub, run_evaluation
from llm2vec.evaluation.sts import (
    evaluate_sts,
    evaluate_sts_tasks,
    format_table,
    load_task,
    read_sts_tsv,
    run_sts_suite,
)

ROOT = Path(__file__).resolve().parents[1]
STSB_DEV = ROOT.parent / "shared" / "data" / "sts" / "STSB-dev.tsv"
INSTRUCTION = "Retrieve semantically similar text:"


@pytest.fixture(scope="module")
def encoder():
    return LLM2Vec.from_pretrained("tiny-random-llama")


@pytest.fixture
def offline(monkeypatch):
    """The hub is unreachable, whatever the machine's network."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_unreachable_reason", lambda: "no network in this test")


def write_tsv(path: Path, rows: list[tuple[str, str, float]]) -> Path:
    lines = ["sentence1\tsentence2\tscore"] + [f"{a}\t{b}\t{s}" for a, b, s in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def small_tsv(tmp_path) -> Path:
    """The first 60 STS-B dev pairs: real data, small enough for the tiny model in a second."""
    rows = STSB_DEV.read_text().splitlines()[:61]
    path = tmp_path / "small-dev.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_scores_are_mapped_to_one_scale(tmp_path):
    path = write_tsv(tmp_path / "sick.tsv", [("a", "b", 1.0), ("c", "d", 3.0), ("e", "f", 5.0)])
    pairs = load_task({"name": "SICK-R", "path": str(path), "score_range": [1, 5]})
    assert pairs.scores.tolist() == [0.0, 0.5, 1.0]
    default = load_task({"name": "STS", "path": str(path)})  # 0-5 by default
    assert default.scores.tolist() == [0.2, 0.6, 1.0]
    with pytest.raises(ValueError, match="score_range"):
        load_task({"name": "bad", "path": str(path), "score_range": [5, 1]})
    with pytest.raises(ValueError, match="allowed keys"):
        load_task({"name": "typo", "paht": str(path)})


def test_unavailable_tasks_are_skipped_with_the_reason(encoder, small_tsv, tmp_path, offline, capsys):
    tasks = [
        {"name": "STS12", "path": str(tmp_path / "STS12-test.tsv"), "hub": "mteb/sts12-sts"},
        {"name": "local", "path": str(small_tsv)},
        {"name": "nowhere", "path": str(tmp_path / "missing.tsv")},
    ]
    summary = run_evaluation(encoder, {"kind": "sts", "tasks": tasks, "batch_size": 16}, tmp_path / "run")

    assert list(summary["results"]) == ["local"]
    assert summary["results"]["local"]["pairs"] == 60
    assert summary["main_score"] == summary["results"]["local"]["spearman"]
    reasons = summary["skipped"]
    assert set(reasons) == {"STS12", "nowhere"}
    assert "STS12-test.tsv" in reasons["STS12"] and "mteb/sts12-sts" in reasons["STS12"]
    assert "no network in this test" in reasons["STS12"]
    assert "no hub dataset" in reasons["nowhere"]
    printed = capsys.readouterr().out
    assert "STS12            skipped:" in printed and "local" in printed
    assert json.loads((tmp_path / "run" / "sts.json").read_text()) == summary
    # The older entry point still returns the scored tasks only.
    assert list(evaluate_sts_tasks(encoder, tasks, batch_size=16)) == ["local"]


def test_instruction_per_task_overrides_the_suite_one(encoder, small_tsv):
    pairs = read_sts_tsv(small_tsv)
    tasks = [
        {"name": "suite", "path": str(small_tsv)},
        {"name": "own", "path": str(small_tsv), "instruction": "Find a paraphrase:"},
        {"name": "none", "path": str(small_tsv), "instruction": None},
    ]
    results, skipped = run_sts_suite(encoder, tasks, instruction=INSTRUCTION, batch_size=16)
    assert skipped == {}
    assert results["suite"]["instruction"] == INSTRUCTION
    assert results["own"]["instruction"] == "Find a paraphrase:"
    for name, instruction in [("suite", INSTRUCTION), ("own", "Find a paraphrase:"), ("none", None)]:
        direct = evaluate_sts(encoder, pairs, instruction, batch_size=16)
        assert results[name]["spearman"] == pytest.approx(direct["spearman"], abs=1e-6)
    # A bidirectional encoder sees the instruction, so it changes the scores.
    assert results["suite"]["spearman"] != pytest.approx(results["none"]["spearman"], abs=1e-3)
    table = format_table(results)
    assert "average" in table
    mean = np.mean([r["spearman"] for r in results.values()])
    assert f"{mean:9.2f}" in table.splitlines()[-1]


def compose_eval(name: str):
    OmegaConf.register_new_resolver("project_root", lambda: str(ROOT), replace=True)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"eval={name}", "stage=eval"])
    return OmegaConf.to_container(cfg.eval, resolve=True), cfg


def test_sts7_runs_offline_on_the_local_sts_b_and_names_what_it_skipped(encoder, tmp_path, offline):
    config, cfg = compose_eval("sts7")
    assert cfg.stage.name == "eval"
    assert [t["name"] for t in config["tasks"]] == [
        "STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICK-R"]
    assert config["instruction"] == INSTRUCTION
    summary = run_evaluation(encoder, config, tmp_path)
    assert list(summary["results"]) == ["STSBenchmark"]
    assert summary["results"]["STSBenchmark"]["pairs"] == 1379
    assert set(summary["skipped"]) == {"STS12", "STS13", "STS14", "STS15", "STS16", "SICK-R"}
    assert "mteb/sickr-sts" in summary["skipped"]["SICK-R"]


def test_eval_configs_name_their_kind(tmp_path):
    kinds = {name: compose_eval(name)[0]["kind"] for name in ("stsb", "sts7", "mteb", "probes")}
    assert kinds == {"stsb": "sts", "sts7": "sts", "mteb": "mteb", "probes": "probes"}
    with pytest.raises(ValueError, match="unknown eval kind 'glue'"):
        run_evaluation(None, {"kind": "glue"}, tmp_path)

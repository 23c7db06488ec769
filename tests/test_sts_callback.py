"""STSEvalCallback: the learning curve, and keep_best (SimCSE's best-dev model selection)."""

from __future__ import annotations

import contextlib
import csv
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import TINY_DATA
from llm2vec.stages import sts_callback
from llm2vec.stages.sts_callback import STSEvalCallback

TASKS = [{"name": "dev", "path": "dev.tsv"}, {"name": "test", "path": "test.tsv"}]


class Module(nn.Module):
    def __init__(self):
        super().__init__()
        self.trained = nn.Parameter(torch.zeros(3))
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)
        self.encoder = None


def scripted_suite(monkeypatch, scores: list[float]) -> list[list[str]]:
    """run_sts_suite answering `scores` in turn; returns the task names asked at each call."""
    asked = []

    def run_sts_suite(encoder, tasks, *args, **kwargs):
        asked.append([task["name"] for task in tasks])
        return {task["name"]: {"spearman": scores[len(asked) - 1]} for task in tasks}, {}

    monkeypatch.setattr(sts_callback, "run_sts_suite", run_sts_suite)
    return asked


def trainer_at(step: int):
    return SimpleNamespace(global_step=step, is_global_zero=True, loggers=[],
                           precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext))


def train(callback, module, steps: int) -> None:
    """Steps 1..steps, the trainable weight set to the step number at each."""
    callback.on_train_start(trainer_at(0), module)
    for step in range(1, steps + 1):
        module.trained.data.fill_(step)
        module.frozen.data.fill_(-step)  # frozen weights are not the callback's to restore
        callback.on_train_batch_end(trainer_at(step), module, None, None, step - 1)
    callback.on_train_end(trainer_at(steps), module)


def test_keep_best_restores_the_trainable_weights_of_the_best_dev_step(monkeypatch):
    # Evaluated at steps 0, 2, 4 and at the end (5): dev peaks at step 2.
    asked = scripted_suite(monkeypatch, [10.0, 80.0, 70.0, 75.0])
    callback = STSEvalCallback(TASKS, every_n_train_steps=2, keep_best="dev")
    module = Module()
    train(callback, module, steps=5)
    assert asked == [["dev"]] * 4  # the test task is left for the end of the stage
    assert callback.best_step == 2 and callback.best_score == 80.0
    assert module.trained.tolist() == [2.0] * 3
    assert module.frozen.tolist() == [-5.0] * 3


def test_keep_best_keeps_the_last_step_when_it_is_best(monkeypatch):
    scripted_suite(monkeypatch, [10.0, 20.0, 30.0])
    module = Module()
    train(STSEvalCallback(TASKS, every_n_train_steps=2, keep_best="dev"), module, steps=4)
    assert module.trained.tolist() == [4.0] * 3


def test_the_best_weights_survive_a_resume(monkeypatch):
    scripted_suite(monkeypatch, [10.0, 80.0, 70.0, 60.0])
    first = STSEvalCallback(TASKS, every_n_train_steps=2, keep_best="dev")
    module = Module()
    first.on_train_start(trainer_at(0), module)
    for step in (1, 2, 3, 4):
        module.trained.data.fill_(step)
        first.on_train_batch_end(trainer_at(step), module, None, None, step - 1)
    state = first.state_dict()  # the checkpoint at step 4; the process stops
    resumed = STSEvalCallback(TASKS, every_n_train_steps=2, keep_best="dev")
    resumed.load_state_dict(state)
    module.trained.data.fill_(6)
    resumed.on_train_batch_end(trainer_at(6), module, None, None, 5)
    resumed.on_train_end(trainer_at(6), module)
    assert resumed.best_step == 2 and module.trained.tolist() == [2.0] * 3


def test_without_keep_best_every_task_is_evaluated_and_the_weights_stay(monkeypatch):
    asked = scripted_suite(monkeypatch, [10.0, 80.0, 70.0])
    module = Module()
    train(STSEvalCallback(TASKS, every_n_train_steps=2), module, steps=5)
    assert asked == [["dev", "test"]] * 3  # steps 0, 2, 4: no extra evaluation at the end
    assert module.trained.tolist() == [5.0] * 3


def test_keep_best_names_a_task_it_does_not_have():
    with pytest.raises(ValueError, match="keep_best='STSB-dev' is none of the callback's tasks \\(dev, test\\)"):
        STSEvalCallback(TASKS, keep_best="STSB-dev")


def test_keep_best_stops_before_training_when_its_task_cannot_be_read(tmp_path):
    callback = STSEvalCallback([{"name": "dev", "path": str(tmp_path / "missing.tsv")}], keep_best="dev")
    module = Module()
    module.encoder = object()  # never reached: the task fails to load first
    with pytest.raises(ValueError, match="keep_best='dev' cannot be evaluated"):
        callback.on_train_start(trainer_at(0), module)


def curve(run_dir) -> dict[int, float]:
    with next((run_dir / "csv").glob("version_*/metrics.csv")).open() as handle:
        return {int(row["step"]): float(row["curve/STS-tiny/spearman"])
                for row in csv.DictReader(handle) if row.get("curve/STS-tiny/spearman")}


def test_callbacks_sts_best_saves_the_encoder_of_the_best_step(run_app, tmp_path):
    run_dir = tmp_path / "simcse"
    run_app("stage=simcse", TINY_DATA["simcse"], "callbacks=sts_best", "callbacks.sts_best.every_n_train_steps=1",
            "trainer.max_steps=4", "trainer.precision=32-true", "stage.module.scheduler.num_warmup_steps=0", "stage.module.optimizer.lr=0.05",
            run_dir=run_dir)
    scores = curve(run_dir)
    assert sorted(scores) == [0, 1, 2, 3, 4]
    saved = json.loads((run_dir / "metrics.json").read_text())["STS-tiny"]["spearman"]
    # The saved encoder, loaded back and scored by the stage's evaluation, is the best step's.
    assert saved == pytest.approx(max(scores.values()), abs=1e-4)

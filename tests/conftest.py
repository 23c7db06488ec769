"""Shared fixtures: run.py's job composed through Hydra exactly as `python run.py ...` does, on the
tiny random Llama, the small data files in tests/fixtures and a 20-pair STS fixture."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = [
    "model=tiny_llama",
    f"eval.tasks=[{{name:STS-tiny,path:'{FIXTURES / 'sts_tiny.tsv'}'}}]",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
TINY_DATA = {"mntp": "data=tiny_blocks", "simcse": "data=tiny_sentences", "supervised": "data=tiny_pairs"}


def load_module(path: Path, name: str):
    """A Python file that is not part of a package (run.py, an experiments/ script) as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_experiment(name: str):
    """experiments/<name>.py as a module."""
    return load_module(ROOT / "experiments" / f"{name}.py", name)


run_module = load_module(ROOT / "run.py", "llm2vec_run")


def compose_config(overrides: list[str]):
    """The job config of `python run.py <overrides>`, with Hydra's own config registered."""
    cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def run_app(tmp_path, monkeypatch):
    """run_app(*overrides, run_dir=...) runs run.py's job in-process and returns its result."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")

    def run_app(*overrides: str, run_dir: Path | None = None):
        run_dir = run_dir or tmp_path / "run"
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            return run_module.run(compose_config([*TINY, *overrides, f"run_dir={run_dir}"]))

    return run_app

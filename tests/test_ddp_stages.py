"""MNTP, then SimCSE on its artifact, under trainer=ddp_cpu (2 CPU processes, gloo) through
`python run.py`: each run writes its artifacts once (rank 0) and they load afterwards."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import torch

from llm2vec import LLM2Vec

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=tiny_llama", "trainer=ddp_cpu", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", f"eval.tasks=[{{name:STS-tiny,path:'{ROOT / 'tests/fixtures/sts_tiny.tsv'}'}}]"]


def run(tmp_path: Path, name: str, *overrides: str) -> Path:
    run_dir = tmp_path / name
    env = {"WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "run.py", *TINY, *overrides, f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return run_dir


def test_mntp_then_simcse_under_ddp_cpu(tmp_path):
    mntp = run(tmp_path, "mntp", "stage=mntp", "data=tiny_blocks")
    simcse = run(tmp_path, "simcse", "stage=simcse", "data=tiny_sentences", f"stage.init_from={mntp}")
    for run_dir in (mntp, simcse):
        assert (run_dir / "train_ddp_process_1.log").exists()  # a second process really trained
        assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]  # logged once, by rank 0
        assert len(list(run_dir.glob("adapter_model.safetensors"))) == 1
        assert "STS-tiny" in json.loads((run_dir / "metrics.json").read_text())
        with (run_dir / "csv/version_0/metrics.csv").open() as handle:
            steps = {int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")}
        assert steps == {0, 1}
    encoder = LLM2Vec.from_pretrained(str(simcse))
    assert len(encoder.merged_adapters) == 1  # the MNTP adapter, merged under SimCSE's
    vector = encoder.encode(["a sentence"], convert_to_tensor=True)
    assert vector.shape == (1, 64) and torch.isfinite(vector).all()
